"""`pibridge parity capture` / `parity obs`: run ONE stack in this process and write its trace (numpy at import).

The stack's capture function is named by the registry (pibridge.parity.stacks.STACKS, "module:function") and
imported only when it runs, so a capture never imports the other framework: the jax capture never loads torch,
the torch capture never loads jax. It takes a pibridge.parity.request.CaptureRequest and returns (stages, meta);
this module checks the request and the stack's environment, adds the common metadata and writes the trace.

Shared inputs: a capture may save the ModelInputs it fed its model (`save_inputs`, safetensors) and another
capture may consume exactly those (`shared_inputs`), so model stages are compared free of preprocessing.
"""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pibridge.errors import PibridgeError
from pibridge.parity.request import PRECISIONS, RESIZES, CaptureRequest, load_model_inputs, resolve_profile
from pibridge.parity.stacks import STACKS, check_env, resolve


@dataclass(frozen=True)
class CaptureResult:
    out: Path
    stack: str
    n_stages: int
    seconds: float
    meta: dict


def _check(req: CaptureRequest) -> None:
    if req.stack not in STACKS:
        raise PibridgeError(f"stack {req.stack!r}", f"one of {', '.join(STACKS)}", f"pass --stack {'|'.join(STACKS)}")
    if req.precision not in PRECISIONS:
        raise PibridgeError(f"precision {req.precision!r}", "float32 or bfloat16 (bf16)", "pass --precision float32|bfloat16")
    if req.resize not in RESIZES:
        raise PibridgeError(f"resize {req.resize!r}", "openpi or lerobot", "pass --resize openpi|lerobot")
    if req.steps < 1:
        raise PibridgeError(f"--steps {req.steps}", "at least 1 Euler step", "pass --steps 10 (OpenPI's default)")
    need = "ckpt" if STACKS[req.stack].reads == "openpi" else "lerobot"
    if getattr(req, need) is None:
        flag = "--openpi CKPT" if need == "ckpt" else "--lerobot OUT"
        raise PibridgeError(f"--stack {req.stack} without {flag.split()[0]}", f"{flag} for the {req.stack} stack",
                            f"pass {flag}")


def _check_inputs_readable(req: CaptureRequest) -> None:
    """Refuse a missing, corrupted or invalid observation (or shared-inputs file) before the stack's framework
    loads: a clear message in a second instead of one after jax / torch start up."""
    from pibridge.parity.observation import load_observation

    load_observation(req.obs)
    if req.shared_inputs is not None:
        load_model_inputs(req.shared_inputs)
    out = _out_dir(req)
    if out is not None and (Path(out) / "pibridge.json").is_file():
        from pibridge.provenance import load_provenance

        check_observation_fits(Path(req.obs), load_provenance(Path(out)), Path(out))


def check_observation_fits(obs_path: Path, rec: dict, out: Path) -> None:
    """The observation's horizon, state dim and filled camera slots against OUT's profile (pibridge.json)."""
    from pibridge.convert.profile import profile_from_dict
    from pibridge.vocab import OPENPI_SLOTS
    from pibridge.parity.observation import load_observation

    obs = load_observation(obs_path)
    prof = profile_from_dict(rec["profile"])
    problems = []
    if obs.noise.shape[1] != prof.action_horizon:
        problems.append(f"noise horizon {obs.noise.shape[1]}, the profile's action_horizon is {prof.action_horizon}")
    if prof.state_dim is not None and obs.state.shape[1] != prof.state_dim:
        problems.append(f"state dim {obs.state.shape[1]}, the profile's state_dim is {prof.state_dim}")
    filled = [s for s in OPENPI_SLOTS if s not in (rec.get("empty_slots") or [])]
    missing = [s for s in filled if s not in obs.slots]
    if missing:
        problems.append(f"no image for slot(s) {', '.join(missing)}, which OUT fills")
    if problems:
        raise PibridgeError(f"observation {obs_path} does not fit OUT's profile {prof.name!r}: " + "; ".join(problems),
                            f"horizon {prof.action_horizon}, state dim {prof.state_dim}, images for {', '.join(filled)}",
                            f"make one that fits: pibridge parity obs {obs_path} --profile {out}")


def _out_dir(req: CaptureRequest) -> Path | None:
    """The converted OUT a capture describes: --lerobot OUT, or for a stack reading the OpenPI checkpoint the
    --profile OUT it was given (if any)."""
    if req.stack in STACKS and STACKS[req.stack].reads == "openpi":
        return Path(req.profile) if req.profile else None
    return req.lerobot


def _defaults(req: CaptureRequest) -> CaptureRequest:
    """Precision in any accepted dtype spelling -> the policy token; the tokenizer defaults to the converted OUT's
    (--lerobot OUT, or for the jax stack --profile OUT), the same rule on every stack."""
    from pibridge.parity.lerobot_preprocess import default_tokenizer_path
    from pibridge.vocab import DTYPE_ALIASES, precision_token

    precision = precision_token(req.precision) if str(req.precision).lower() in DTYPE_ALIASES else req.precision
    tokenizer = req.tokenizer
    out_dir = _out_dir(req)
    if tokenizer is None and out_dir is not None and out_dir.is_dir():
        tokenizer = default_tokenizer_path(out_dir)
    return replace(req, precision=precision, tokenizer=tokenizer)


def capture(req: CaptureRequest) -> CaptureResult:
    """Run one stack on the observation and write the trace to req.out (parent directories are created)."""
    from pibridge.parity.trace import write_trace

    req = _defaults(req)
    _check(req)
    _check_inputs_readable(req)
    spec = STACKS[req.stack]
    check_env(spec)
    t0 = time.perf_counter()
    try:
        recorder, meta = resolve(spec.entry)(req)
    except ModuleNotFoundError as err:
        from pibridge.errors import missing_dependency

        bad = missing_dependency(err, f"the {req.stack} stack", lerobot_env=req.stack == "lerobot")
        if bad is None:
            raise
        raise bad from err
    seconds = time.perf_counter() - t0
    meta = {"stack": req.stack, "precision": req.precision, "steps": req.steps, "fixes_enabled": req.fixes,
            "shared_inputs": None if req.shared_inputs is None else str(req.shared_inputs),
            "python": platform.python_version(), **meta}
    meta.setdefault("timings", {})["capture_s"] = round(seconds, 4)
    meta["timings"]["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(req.out).parent.mkdir(parents=True, exist_ok=True)
    write_trace(Path(req.out), recorder, meta)
    return CaptureResult(Path(req.out), req.stack, len(recorder), seconds, meta)


def capture_command(**kwargs) -> CaptureResult:
    """CLI body of `pibridge parity capture`: capture, then print one summary line."""
    result = capture(CaptureRequest(**kwargs))
    t = result.meta["timings"]
    print(f"wrote {result.out}: {result.stack} stack, {result.n_stages} stages, {result.meta['precision']}, "
          f"{result.seconds:.1f} s (model {t.get('sample_s', 0):.1f} s), peak RSS {t['peak_rss_mb']:.0f} MB")
    return result


def parse_masks(items: list[str] | None) -> dict[int, list[str]]:
    """["1:left_wrist_0_rgb", ...] (--mask SAMPLE:SLOT) -> {1: ["left_wrist_0_rgb"]}."""
    out: dict[int, list[str]] = {}
    for item in items or []:
        sample, _, slot = item.partition(":")
        if not sample.isdigit() or not slot:
            raise PibridgeError(f"--mask {item!r}", "SAMPLE:SLOT, e.g. 1:left_wrist_0_rgb",
                                "pass --mask with a sample index and an OpenPI slot")
        out.setdefault(int(sample), []).append(slot)
    return out


_CAMERA_SIZES = {"base_0_rgb": (480, 640), "left_wrist_0_rgb": (240, 320), "right_wrist_0_rgb": (240, 320)}


def obs_command(out: Path, *, profile: str, batch: int | None = 2, seed: int = 0, horizon: int | None = None,
                state_dim: int | None = None, prompts: list[str] | None = None,
                masked: dict[int, list[str]] | list[str] | None = None, from_client: list[Path] | None = None,
                images: list[str] | None = None):
    """CLI body of `pibridge parity obs`: a deterministic synthetic observation for a profile (its horizon, native
    state dim; its empty slots absent, i.e. masked blank images in every sample), non-square camera images.
    profile: a profile name, a profile file or a converted OUT dir; masked: {sample: [slots]} extra per-sample
    masked cameras. from_client: client dict files, one sample each (pibridge.parity.client_obs), with `images`
    ["CAMERA=FILE"] and the first of `prompts` standing in for a missing prompt."""
    from pibridge.parity.observation import synthetic_observation

    prof = resolve_profile(profile, None)
    if from_client or images:
        return _client_obs_command(out, prof, from_client or [], batch=batch, seed=seed, horizon=horizon,
                                   state_dim=state_dim, prompts=prompts, masked=masked, images=images)
    batch = 2 if batch is None else batch
    if batch < 1:
        raise PibridgeError(f"--batch {batch}", "at least 1", "pass --batch 2")
    if prompts and len(prompts) not in (1, batch):
        raise PibridgeError(f"{len(prompts)} prompts for batch {batch}", f"1 or {batch}",
                            "give one --prompt per sample")
    masked = parse_masks(masked) if isinstance(masked, list) else masked
    sizes = {c.slot: _CAMERA_SIZES[c.slot] for c in prof.require("cameras") if not c.empty}  # empty slots: absent
    masks = {b: sorted((masked or {}).get(b, [])) for b in range(batch)}
    unknown = sorted({s for v in masks.values() for s in v} - set(sizes))
    if unknown or any(b >= batch for b in (masked or {})):
        raise PibridgeError(f"--mask {masked}", f"sample < {batch} and a filled slot of {prof.name}: {list(sizes)}",
                            "mask a camera the profile fills, in an existing sample")
    obs = synthetic_observation(batch=batch, horizon=horizon or prof.action_horizon,
                                state_dim=state_dim or prof.require("state_dim"), seed=seed,
                                prompts=None if not prompts else list(prompts) * (batch // len(prompts)),
                                image_sizes=sizes, masked=masks)
    return _write_observation(out, obs, f"profile {prof.name}, batch {batch}, horizon {obs.noise.shape[1]}, state dim "
                              f"{obs.state.shape[1]}, cameras {{cams}}, empty "
                              f"{[c.slot for c in prof.require('cameras') if c.empty]}, masked {masked or {}}")


def _write_observation(out: Path, obs, summary: str):
    """Save `obs` to `out` and print one line: `summary` (with {cams} filled in) and the fingerprint."""
    from pibridge.parity.observation import save_observation

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_observation(Path(out), obs)
    cams = ", ".join(f"{s} {tuple(i.shape[1:3])}" for s, i in obs.images.items())
    print(f"wrote {out}: {summary.replace('{cams}', cams)}, fingerprint {obs.fingerprint()}")
    return obs


def _client_obs_command(out: Path, prof: Profile, files: list[Path], *, batch, seed, horizon, state_dim, prompts,
                        masked, images):
    from pibridge.parity.client_obs import client_observation, parse_image_args

    if not files:
        raise PibridgeError("--image without --from-client", "a client file giving state and prompt",
                            "pass --from-client FILE (an .npz or msgpack client dict)")
    if masked:
        raise PibridgeError("--mask with --from-client", "the client's own cameras (an absent one is masked)",
                            "leave the camera out of the client dict instead")
    if batch is not None and batch != len(files):
        raise PibridgeError(f"--batch {batch} with {len(files)} --from-client file(s)", "one sample per file",
                            "drop --batch, or give one --from-client per sample")
    if prompts and len(prompts) > 1:
        raise PibridgeError(f"{len(prompts)} --prompt values with --from-client", "one (for clients without a prompt)",
                            "put each sample's prompt in its client dict")
    prof = prof.with_overrides(action_horizon=horizon, state_dim=state_dim)
    obs = client_observation(list(files), prof, seed=seed, prompt=prompts[0] if prompts else None,
                             images=parse_image_args(images))
    return _write_observation(out, obs, f"from {len(files)} client file(s), profile {prof.name}, state dim "
                              f"{obs.state.shape[1]}, cameras {{cams}}, masked {obs.image_mask.tolist()}, "
                              f"prompts {list(obs.prompts)}")
