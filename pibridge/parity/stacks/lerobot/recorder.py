"""The `lerobot` parity stack: a converted OUT run by the real LeRobot package (PI05Policy / PI0Policy), recorded
under the shared stage names. Runs inside a LeRobot venv (tools/lerobot_env.sh), as a subprocess of the harness:

    .venvs/lr-0.6.1/bin/python -m pibridge.parity.lerobot_stack OUT OBS TRACE [--no-fixes] [--model-inputs NPZ]

What is real LeRobot: `from_pretrained` (then pibridge checks that every tensor of OUT/model.safetensors landed in
the state dict: LeRobot only prints a warning), the pre/post-processors loaded from OUT by
`lerobot.policies.factory.make_pre_post_processors` (tokenizer included), `predict_action_chunk(batch, noise=...)`.
Stages are read with forward hooks and by wrapping methods of the loaded instance (never by re-implementing them):
_preprocess_images (inputs), SigLIP modules (img/*), embed_prefix (img/tokens, prefix/*), the prefix forward's
KV cache (llm/kv*), decoder layers of both experts (llm/block*, expert/step*/block*), denoise_step (suffix/time,
velocity/step*), sample_actions (actions, all 32 dims).

Inputs: "pipeline" (default) feeds the observation's raw images, state and prompt through the processors from OUT;
`model_inputs` (an .npz of pibridge.parity.inputs.ModelInputs fields, e.g. from OpenPI's host preprocessing) feeds
the model's inputs directly to predict_action_chunk (images mapped [-1, 1] -> [0, 1], tokens and masks as given).
Differences by design are listed in meta["not_comparable"] {stage: reason}: LeRobot moves absent cameras to the end
of the prefix and has no per-sample camera mask (a camera present in the batch is valid for every sample).
Axis legend: B batch, C cameras, L tokens, T prefix tokens, K kv heads, H head_dim, A horizon.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import inspect
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pibridge.errors import PibridgeError
from pibridge.parity import stages as st
from pibridge.parity.stages import StageRecorder

MODEL_ACTION_DIM = 32
OPENPI_SLOTS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")  # openpi models/model.py IMAGE_KEYS


@dataclass(frozen=True)
class LoadCheck:
    keys: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    wrong_shape: tuple[str, ...]
    wrong_value: tuple[str, ...]
    lerobot_output: str  # what LeRobot printed while loading

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape or self.wrong_value)


@dataclass(frozen=True)
class CaptureResult:
    actions: np.ndarray  # (B, A, 32) model actions
    actions_unnormalized: np.ndarray  # (B, A, action_dim) after LeRobot's whole postprocessor (= actions/robot)
    load: LoadCheck
    fixes: dict
    meta: dict = field(default_factory=dict)


def versions() -> dict[str, str]:
    return {p: md.version(p) for p in ("lerobot", "transformers", "torch")}


def policy_class(model: str):
    if model == "pi05":
        from lerobot.policies.pi05.modeling_pi05 import PI05Policy
        return PI05Policy
    if model == "pi0":
        from lerobot.policies.pi0.modeling_pi0 import PI0Policy
        return PI0Policy
    raise PibridgeError(f"model {model!r} in pibridge.json", "pi0 or pi05", "convert the checkpoint again")


# --- loading, verified --------------------------------------------------------------------------------------------

def load_policy(out_dir: Path, model: str):
    """The real `from_pretrained`, then pibridge's own check of the load (LeRobot only prints a warning)."""
    buf = io.StringIO()
    os.environ["PIBRIDGE_PLUGIN_WRAP"] = "0"  # the plugin (if its startup hook wrapped the class) stands aside:
    with contextlib.redirect_stdout(buf):  # this capture checks the load and applies (or not) the fixes itself
        policy = policy_class(model).from_pretrained(str(out_dir))
    check = verify_load(policy, Path(out_dir) / "model.safetensors", buf.getvalue())
    if not check.ok:
        first = (check.missing + check.unexpected + check.wrong_shape + check.wrong_value)[:4]
        raise PibridgeError(
            f"LeRobot {md.version('lerobot')} did not load {out_dir} completely: {len(check.missing)} missing, "
            f"{len(check.unexpected)} unexpected, {len(check.wrong_shape)} wrong shape, {len(check.wrong_value)} "
            f"not equal to the file (first: {first}); LeRobot printed: {check.lerobot_output.strip()[-300:]!r}",
            "every tensor of model.safetensors in the policy's state dict, equal in value",
            f"convert for this LeRobot release: pibridge convert --lerobot-version {md.version('lerobot')}")
    return policy, check


def verify_load(policy, weights: Path, printed: str) -> LoadCheck:
    """Key sets, shapes and values of the file vs the loaded state dict (streamed: one file tensor at a time)."""
    import torch
    from safetensors import safe_open

    sd = policy.state_dict()
    wrong_shape, wrong_value = [], []
    with safe_open(str(weights), "pt") as f:
        file_keys = set(f.keys())
        for k in sorted(file_keys & sd.keys()):
            t = f.get_tensor(k)
            if tuple(t.shape) != tuple(sd[k].shape):
                wrong_shape.append(k)
            elif not torch.equal(t.to(sd[k].dtype), sd[k].cpu()):
                wrong_value.append(k)
    return LoadCheck(len(file_keys), tuple(sorted(sd.keys() - file_keys)), tuple(sorted(file_keys - sd.keys())),
                     tuple(wrong_shape), tuple(wrong_value), printed)


# --- batches ------------------------------------------------------------------------------------------------------

def pipeline_batch(obs, camera_names: list[str], empty_slots: list[str]) -> dict:
    """Raw observation -> LeRobot frame: observation.images.<name> float (B, 3, H, W) in [0, 1], state, task."""
    import torch

    batch = {}
    names = dict(zip([s for s in OPENPI_SLOTS if s not in empty_slots], camera_names))
    for slot in obs.slots:
        if slot not in names:
            continue
        name = names[slot]
        img = torch.from_numpy(np.ascontiguousarray(obs.images[slot])).permute(0, 3, 1, 2)  # (B,H,W,3)->(B,3,H,W)
        batch[f"observation.images.{name}"] = img.to(torch.float32) / 255.0
    batch["observation.state"] = torch.from_numpy(np.asarray(obs.state, np.float32))
    batch["task"] = list(obs.prompts)
    return batch


def model_inputs_batch(npz: Path, camera_names: list[str], empty_slots: list[str]) -> dict:
    """ModelInputs (OpenPI slot order) -> what predict_action_chunk reads, bypassing the processors. `npz`: an
    .npz of ModelInputs fields, or the .safetensors that `pibridge parity capture --save-inputs` writes."""
    import torch

    if Path(npz).suffix == ".safetensors":
        from dataclasses import asdict

        from pibridge.parity.capture import load_model_inputs

        z = asdict(load_model_inputs(Path(npz)))
    else:
        z = np.load(npz)
    batch, present = {}, [s for s in OPENPI_SLOTS if s not in empty_slots]
    for name, slot in zip(camera_names, present):
        x = torch.from_numpy(z["images"][:, OPENPI_SLOTS.index(slot)]).permute(0, 3, 1, 2)  # (B,H,W,3)->(B,3,H,W)
        batch[f"observation.images.{name}"] = (x + 1.0) / 2.0  # LeRobot maps [0,1] -> [-1,1] itself
    batch["observation.state"] = torch.from_numpy(z["state"])
    batch["observation.language.tokens"] = torch.from_numpy(z["tokens"]).long()
    batch["observation.language.attention_mask"] = torch.from_numpy(z["token_mask"]).bool()
    return batch


def not_comparable(image_mask: np.ndarray, obs_slots: list[str], empty_slots: list[str]) -> dict[str, str]:
    """Stages that differ by design between OpenPI and LeRobot for this observation."""
    reasons, slots = [], list(OPENPI_SLOTS)
    idx = sorted(slots.index(s) for s in empty_slots if s in slots)
    if idx != list(range(len(slots) - len(idx), len(slots))):
        reasons.append("LeRobot moves absent cameras to the end of the prefix (OpenPI keeps slot order)")
    present = [i for i, s in enumerate(obs_slots) if s not in empty_slots]
    if present and not image_mask[:, present].all():
        reasons.append("LeRobot has no per-sample camera mask (a camera in the batch is valid for every sample)")
    if not reasons:
        return {}
    why = "; ".join(reasons)
    downstream = ("input/image", "input/image_mask", "img/*", "prefix/*", "llm/*", "expert/*", "velocity/*",
                  "actions", "actions/unnormalized")
    return {name: why for name in downstream}


# --- recording ----------------------------------------------------------------------------------------------------

def _np(t):
    return t.detach().float().cpu().numpy()


def _first(o):
    return o[0] if isinstance(o, (tuple, list)) else o


def _cache_kv(cache, i: int):
    """(B, K, T, H) keys/values of layer i from a transformers cache (5.x .layers[i].keys; 4.x key_cache)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[i].keys, layers[i].values
    return cache.key_cache[i], cache.value_cache[i]


class LeRobotRecorder:
    """Installs hooks and instance-level method wrappers on a loaded LeRobot policy; `remove()` undoes them."""

    def __init__(self, policy, recorder: StageRecorder):
        self.p, self.rec, self.t = policy, recorder, time.perf_counter()
        self.phase: int | None = None  # None: prefix pass; k: Euler step k
        self.vit: dict[str, list] = {}
        self.times: list = []
        self.hooks, self.wrapped = [], []
        self.valid_cam = None
        self.pending_llm: dict[int, np.ndarray] = {}
        self._install()

    def put(self, name, value, valid=None):
        now = time.perf_counter()
        self.rec.record(name, value, valid, seconds=now - self.t)
        self.t = time.perf_counter()

    def _wrap(self, owner, attr, make):
        original = getattr(owner, attr)
        setattr(owner, attr, make(original))
        self.wrapped.append((owner, attr))

    def _install(self):
        core = self.p.model
        pwe = core.paligemma_with_expert
        vt = pwe.paligemma.model.vision_tower
        sig = getattr(vt, "vision_model", vt)
        self.hooks.append(sig.embeddings.register_forward_hook(lambda m, i, o: self.vit.setdefault("e", []).append(o)))
        for li, layer in enumerate(sig.encoder.layers):
            self.hooks.append(layer.register_forward_hook(
                lambda m, i, o, li=li: self.vit.setdefault(li, []).append(_first(o))))
        self.hooks.append(sig.post_layernorm.register_forward_hook(lambda m, i, o: self.vit.setdefault("o", []).append(o)))
        for li, layer in enumerate(pwe.paligemma.model.language_model.layers):
            self.hooks.append(layer.register_forward_hook(lambda m, i, o, li=li: self._llm(li, _first(o))))
        for li, layer in enumerate(pwe.gemma_expert.model.layers):
            self.hooks.append(layer.register_forward_hook(lambda m, i, o, li=li: self._expert(li, _first(o))))
        self._wrap(self.p, "_preprocess_images", self._on_images)
        self._wrap(core, "embed_prefix", self._on_prefix)
        self._wrap(pwe, "forward", self._on_pwe_forward)
        self._wrap(core, "denoise_step", self._on_denoise)
        self._wrap(core, "sample_actions", self._on_sample)

    def remove(self):
        for h in self.hooks:
            h.remove()
        for owner, attr in self.wrapped:
            delattr(owner, attr)  # instance attribute -> the class method again

    def _on_images(self, original):
        def run(batch):
            import torch

            images, masks = original(batch)
            img = torch.stack(images, 1).permute(0, 1, 3, 4, 2)  # C x (B,3,H,W) -> (B,C,H,W,3)
            mask = torch.stack(masks, 1)  # C x (B,) -> (B, C)
            self.valid_cam = mask
            self.put(st.INPUT_IMAGE, _np(img), _np(mask)[:, :, None, None, None] > 0)
            self.put(st.INPUT_IMAGE_MASK, _np(mask))
            toks, tmask = batch["observation.language.tokens"], batch["observation.language.attention_mask"].bool()
            self.put(st.INPUT_TOKENS, _np(toks), _np(tmask) > 0)
            self.put(st.INPUT_TOKEN_MASK, _np(tmask))
            state = _np(batch["observation.state"]).reshape(toks.shape[0], -1)
            self.put(st.INPUT_STATE, np.pad(state, ((0, 0), (0, MODEL_ACTION_DIM - state.shape[1]))))
            return images, masks
        return run

    def _on_prefix(self, original):
        def run(images, img_masks, tokens, masks):
            embs, pad, att = original(images, img_masks, tokens, masks)
            B, C = pad.shape[0], len(images)
            vit_valid = _np(self.valid_cam).reshape(B * C)[:, None, None] > 0

            def b_major(per_cam):  # C x (B, 256, D) -> (B*C, 256, D), index b*C + c
                import torch
                return _np(torch.stack(per_cam, dim=1).flatten(0, 1))

            self.put(st.IMG_EMBED, b_major(self.vit["e"]), vit_valid)
            for li in sorted(k for k in self.vit if isinstance(k, int)):
                self.put(st.img_block(li), b_major(self.vit[li]), vit_valid)
            self.put(st.IMG_OUT, b_major(self.vit["o"]), vit_valid)
            n_img = embs.shape[1] - tokens.shape[1]
            valid = _np(pad)[:, :, None] > 0
            self.put(st.IMG_TOKENS, _np(embs[:, :n_img]), valid[:, :n_img])
            self.put(st.PREFIX_EMBEDS, _np(embs), valid)
            self.put(st.PREFIX_MASK, _np(pad))
            self.pad = _np(pad) > 0
            return embs, pad, att
        return run

    def _llm(self, i, hidden):
        if self.phase is None:
            self.pending_llm[i] = _np(hidden)

    def _expert(self, i, hidden):
        if self.phase is not None:
            self.put(st.expert_block(self.phase, i), _np(hidden))

    def _on_pwe_forward(self, original):
        def run(*args, **kwargs):
            out = original(*args, **kwargs)
            embeds = kwargs.get("inputs_embeds")
            if self.phase is None and embeds is not None and embeds[1] is None:  # the prefix pass
                cache = out[1]
                for i in sorted(self.pending_llm):
                    k, v = _cache_kv(cache, i)
                    valid = self.pad[:, :, None, None]
                    self.put(st.llm_kv(i, "k"), _np(k.transpose(1, 2)), valid)  # (B,K,T,H) -> (B,T,K,H)
                    self.put(st.llm_kv(i, "v"), _np(v.transpose(1, 2)), valid)
                    self.put(st.llm_block(i), self.pending_llm[i], self.pad[:, :, None])
                self.phase = 0
            return out
        return run

    def _on_denoise(self, original):
        signature = inspect.signature(original)

        def run(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            self.times.append(bound.arguments["timestep"])
            v = original(*args, **kwargs)
            self.put(st.velocity(self.phase), _np(v))
            self.phase += 1
            return v
        return run

    def _on_sample(self, original):
        def run(*args, **kwargs):
            actions = original(*args, **kwargs)
            self.suffix_time()
            self.put(st.ACTIONS, _np(actions))
            return actions
        return run

    def suffix_time(self):
        """sine-cosine embedding of each step's time, by LeRobot's own function and config periods."""
        import torch

        mod = sys.modules[type(self.p.model).__module__]
        core, cfg = self.p.model, self.p.config
        B = self.pad.shape[0]
        emb = [mod.create_sinusoidal_pos_embedding(t.expand(B) if t.dim() <= 1 else t, core.action_in_proj.out_features,
                                                   min_period=cfg.min_period, max_period=cfg.max_period,
                                                   device=torch.device("cpu"))
               for t in self.times]
        self.put(st.SUFFIX_TIME, _np(torch.stack(emb)))


# --- capture ------------------------------------------------------------------------------------------------------

def capture_lerobot(out_dir: Path, observation, trace_path: Path | None = None, *, fixes: bool = True,
                    model_inputs: Path | None = None, num_steps: int | None = None,
                    exact_fp32: bool = False) -> CaptureResult:
    """Load OUT in the installed LeRobot, run one observation, record stages, optionally write a trace."""
    import torch

    from pibridge.parity.observation import Observation, load_observation
    from pibridge.parity.runtime_fixes import apply_runtime_fixes
    from pibridge.parity.trace import write_trace

    from pibridge.parity.progress import Progress

    out_dir = Path(out_dir)
    obs = observation if isinstance(observation, Observation) else load_observation(Path(observation))
    prov = _provenance(out_dir)
    cams, empty, slots = prov["camera_names"], prov["empty_slots"], list(obs.slots)
    torch.manual_seed(0)
    prog = Progress("lerobot", num_steps or 10)  # 10: LeRobot's default num_inference_steps
    prog.phase("load weights (LeRobot from_pretrained)")
    policy, check = load_policy(out_dir, prov["model"])
    ver = versions()
    extra = {"exact_fp32": True} if exact_fp32 else {}  # opt-in record kind "runtime-opt-in" of fixes.json
    done = apply_runtime_fixes(policy, runtime_dtype=policy.config.dtype, lerobot_version=ver["lerobot"],
                               **extra) if fixes else {}
    prog.phase("preprocess (OUT's processors)")
    pre, post = make_processors(policy, out_dir)
    batch = pre(pipeline_batch(obs, cams, empty))
    if model_inputs is not None:
        # the model gets the shared inputs; the preprocessor still ran on the raw frame above, as deployed, so its
        # host steps hold what the postprocessor needs (the relative-actions step caches the state that the
        # absolute-actions step adds back)
        batch = model_inputs_batch(Path(model_inputs), cams, empty)
    noise = torch.from_numpy(np.asarray(obs.noise, np.float32))
    recorder = StageRecorder(on_record=prog.on_record)
    hooks = LeRobotRecorder(policy, recorder)
    try:
        kw = {"num_steps": num_steps} if num_steps else {}
        with torch.no_grad():
            chunk = policy.predict_action_chunk(batch, noise=noise, **kw)
    finally:
        hooks.remove()
    recorder.record(st.ACTIONS_UNNORMALIZED, _np(post[:1](chunk)))  # the unnormalizer step alone
    unnorm = post(chunk)  # every output transform of OUT: the robot's action
    recorder.record(st.ACTIONS_ROBOT, _np(unnorm))
    prog.done()
    actions = recorder[st.ACTIONS].value
    meta = {"stack": "lerobot", "versions": ver, "fixes": done, "fixes_enabled": fixes,
            "precision": "bf16" if policy.config.dtype == "bfloat16" else "float32", "runtime_dtype": policy.config.dtype,
            "inputs": "model_inputs" if model_inputs is not None else "pipeline", "checkpoint": str(out_dir),
            "observation": {"fingerprint": obs.fingerprint(), "batch": obs.batch},
            "load": {"keys": check.keys, "missing": 0, "unexpected": 0},
            "not_comparable": not_comparable(obs.image_mask, slots, empty)}
    if trace_path is not None:
        write_trace(Path(trace_path), recorder, meta)
    return CaptureResult(actions, _np(unnorm), check, done, meta)


def _provenance(out_dir: Path) -> dict:
    """OUT/pibridge.json (read directly: the converter's modules and their dependencies are not needed here)."""
    p = Path(out_dir) / "pibridge.json"
    if not p.is_file():
        raise PibridgeError(f"{out_dir} has no pibridge.json", "a directory written by `pibridge convert`",
                            "convert the checkpoint with pibridge first")
    return json.loads(p.read_text())


def make_processors(policy, out_dir: Path):
    """LeRobot's own factory, as lerobot-eval / lerobot-record load processors of a pretrained policy."""
    from lerobot.policies.factory import make_pre_post_processors

    over = {"device_processor": {"device": "cpu"}}
    return make_pre_post_processors(policy.config, pretrained_path=str(out_dir), preprocessor_overrides=over,
                                    postprocessor_overrides=over)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import runpy

    ap = argparse.ArgumentParser(prog="python -m pibridge.parity.lerobot_stack",
                                 description="Capture a parity trace of OUT run by the installed LeRobot.")
    ap.add_argument("out", type=Path, help="policy directory written by `pibridge convert`")
    ap.add_argument("observation", type=Path, help="observation file (`pibridge parity obs`)")
    ap.add_argument("trace", type=Path, help="trace file to write (.safetensors)")
    ap.add_argument("--no-fixes", action="store_true", help="do not apply pibridge's runtime fixes")
    ap.add_argument("--model-inputs", type=Path,
                    help=".npz of ModelInputs or the .safetensors of `parity capture --save-inputs`: bypass LeRobot's "
                         "preprocessor")
    ap.add_argument("--num-steps", type=int, help="Euler steps (default: the policy config's)")
    ap.add_argument("--exact-fp32", action="store_true", help="also apply the opt-in exact fp32 attention fix")
    ap.add_argument("--preload", type=Path, action="append", default=[],
                    help="python file run before loading (tests: tiny-variant patch of LeRobot's size tables)")
    ap.add_argument("--result-json", type=Path, help="also write a small JSON summary here")
    ap.add_argument("--load-only", action="store_true",
                    help="only load OUT with from_pretrained and check the load (OBS and TRACE are not read)")
    ap.add_argument("--mmap-weights", action="store_true",
                    help="hand LeRobot's loader a zero-copy (memory-mapped) view of model.safetensors instead of the "
                         "in-memory copy safetensors.torch.load_file makes: same keys and bytes, ~1 copy of the "
                         "weights less RAM (LeRobot 0.5.1 needs > 23 GB for a full-size bf16 load without it)")
    a = ap.parse_args(argv)
    if a.mmap_weights:
        _mmap_load_file()
    for f in a.preload:
        runpy.run_path(str(f), run_name="__pibridge_preload__")
    if a.load_only:
        return _load_only(a.out, a.result_json)
    try:
        r = capture_lerobot(a.out, a.observation, a.trace, fixes=not a.no_fixes, model_inputs=a.model_inputs,
                            num_steps=a.num_steps, exact_fp32=a.exact_fp32)
    except PibridgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {"trace": str(a.trace), "fixes": r.fixes, "versions": r.meta["versions"], "load_keys": r.load.keys,
               "not_comparable": sorted(set(r.meta["not_comparable"]))}
    if a.result_json:
        a.result_json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


def _mmap_load_file() -> None:
    """Replace safetensors.torch.load_file, which LeRobot's from_pretrained imports at call time
    (lerobot 0.5.1 / 0.6.1 policies/pi0*/modeling_pi0*.py from_pretrained), with a copy-on-write mapping of the
    file. LeRobot's own key fixing, remapping and load_state_dict run unchanged on the same tensors."""
    import safetensors.torch

    from pibridge.parity.torch_stack.model import mmap_safetensors

    keep = []  # the mappings must outlive the returned tensors

    def load_file(filename, device="cpu"):
        mapped = mmap_safetensors(Path(filename))
        keep.append(mapped)
        return dict(mapped.tensors) if str(device) == "cpu" else {k: v.to(device) for k, v in mapped.tensors.items()}

    safetensors.torch.load_file = load_file


def _load_only(out_dir: Path, result_json: Path | None) -> int:
    """`--load-only`: the real from_pretrained plus pibridge's load check; timings and key counts as JSON."""
    t0 = time.perf_counter()
    try:
        policy, check = load_policy(out_dir, _provenance(out_dir)["model"])
    except PibridgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {"out": str(out_dir), "versions": versions(), "load_keys": check.keys, "missing": len(check.missing),
               "unexpected": len(check.unexpected), "wrong_shape": len(check.wrong_shape),
               "wrong_value": len(check.wrong_value), "state_dict_keys": len(policy.state_dict()),
               "dtype": policy.config.dtype, "load_s": round(time.perf_counter() - t0, 1)}
    if result_json:
        result_json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
