"""`pibridge convert`: an OpenPI checkpoint becomes a LeRobot policy directory.

Edges: the reader (one leaf at a time) and the atomic output directory. Between them the pure core:
detect -> profile -> plan (key table, accounting) -> stream tensors into ONE model.safetensors, then
config.json, processors, normalizer files, optional tokenizer and the provenance file `pibridge.json`
(LeRobot rejects unknown config.json fields, so provenance lives in its own file).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pibridge import __version__
from pibridge.convert.assets import check_fit, choose_asset
from pibridge.convert.atomic import PARTIAL_MARKER, atomic_output_dir, check_output_target, recover_stale
from pibridge.convert.detect import Detection, detect
from pibridge.convert.fingerprint import Fingerprint
from pibridge.convert.folds import FOLD_ID, fold_bf16_param
from pibridge.convert.guard import check_no_overlap, check_replaceable, file_list, is_empty_dir
from pibridge.convert.lora import EXPERTS, merge_rule, parse_per_expert, parse_rslora, resolve_settings
from pibridge.convert.lerobot_config import build_config_json, lerobot_target
from pibridge.convert.lerobot_normstats import build_normalizer_states, write_normalizer_files
from pibridge.convert.lerobot_processors import HostSteps, build_processor_jsons
from pibridge.convert.openpi_torch import OpenPITorchCheckpoint, is_openpi_torch_dir
from pibridge.convert.plan import ConversionPlan, plan_conversion
from pibridge.convert.profile import Profile, load_profile, parse_camera_map, profile_names
from pibridge.convert.reader import OpenPICheckpoint, open_checkpoint
from pibridge.convert.relocate import relocate_command
from pibridge.convert.weights import LeafReader, write_weights
from pibridge.errors import PibridgeError
from pibridge.fixes.table import applicable_fixes, parse_version
from pibridge.hostx import EXCLUDE_TOKEN, action_names
from pibridge.provenance import PROVENANCE_FILE
from pibridge.vocab import OPENPI_SLOTS

LEROBOT_NAME = re.compile(r"[A-Za-z0-9_\-]+")
NORM_MODES = {"zscore": "MEAN_STD", "quantile": "QUANTILES"}


@dataclass(frozen=True)
class ConvertRequest:
    ckpt: Path
    out: Path
    profile: str | None
    overrides: dict[str, Any] = field(default_factory=dict)  # profile field -> flag value (None: not given)
    camera_map: str | None = None
    empty_cameras: tuple[str, ...] = ()
    lerobot_version: str = "0.6.1"
    transformers_version: str | None = None
    weights_dtype: str = "float32"
    runtime_dtype: str = "float32"
    asset_id: str | None = None
    tokenizer: Path | None = None
    fold_norm_eps: bool = False
    fold_bf16_params: bool = False
    openpi_resize: bool = False  # OpenPI's host PIL resize as a plugin step (for clients sending non-224 images)
    allow_tiny: bool = False
    allow_nonfinite: bool = False
    dry_run: bool = False
    force: bool = False
    lora_alpha: str | None = None  # "8" or "paligemma=16,action_expert=32" (lora.parse_per_expert)
    lora_rslora: str | None = None  # experts trained with rsLoRA: "both", "paligemma" or "action_expert"


@dataclass(frozen=True)
class Resolved:
    """Everything decided before any byte is written."""

    ckpt: OpenPICheckpoint
    detection: Detection
    profile: Profile
    camera_names: tuple[str, ...]  # LeRobot names of the non-empty slots, OpenPI slot order
    empty_slots: tuple[str, ...]
    transformers_version: str
    plan: ConversionPlan


def resolve(req: ConvertRequest) -> Resolved:
    if is_openpi_torch_dir(req.ckpt):
        ckpt = OpenPITorchCheckpoint.open(Path(req.ckpt))
        det = ckpt.detection
    else:
        ckpt = open_checkpoint(req.ckpt)
        det = detect(ckpt.leaves)
    check_no_overlap(req.out, _inputs(req, ckpt))
    if det.variant.name not in ("pi0", "pi05") and not req.allow_tiny:
        raise PibridgeError(
            f"the checkpoint has sizes LeRobot cannot build ({det.variant.paligemma.variant} + "
            f"{det.variant.action_expert.variant}, SigLIP width {det.variant.siglip.width})",
            "PaliGemma gemma_2b + action expert gemma_300m + SigLIP So400m/14 (PI05Config / PI0Config accept only these)",
            "convert a full-size checkpoint, or pass --allow-tiny for test models (LeRobot needs a config patch for them)")
    profile = _profile(req, det)
    names, empty = _cameras(profile, req.camera_map, req.empty_cameras)
    if profile.cameras is None:  # a base profile: the cameras come from the flags; record them (OUT's profile is used
        filled = iter(names)     # by parity obs / capture / run and serve, which need the slots)
        profile = profile.with_overrides(cameras={s: None if s in empty else next(filled) for s in OPENPI_SLOTS})
    target = lerobot_target(req.lerobot_version, det.model)
    tv = req.transformers_version or target.transformers_default
    parse_version(tv, "transformers")
    lora = None
    if det.lora is not None:
        lora = resolve_settings(det.lora, parse_per_expert(req.lora_alpha, "--lora-alpha", float),
                                parse_rslora(req.lora_rslora))
    elif req.lora_alpha is not None or req.lora_rslora is not None:
        raise PibridgeError("--lora-alpha / --lora-rslora for a checkpoint without LoRA factors",
                            "a LoRA fine-tune (lora_a / lora_b leaves)", "drop the LoRA flags")
    plan = plan_conversion(ckpt.leaves, transformers_version=tv, weights_dtype=req.weights_dtype, detection=det,
                           lora=lora)
    plan.accounting.require_complete(f"converting {req.ckpt}")
    return Resolved(ckpt, det, profile, names, empty, tv, plan)


def _inputs(req: ConvertRequest, ckpt) -> list[tuple[str, Path]]:
    """Everything convert reads: OUT may neither hold nor lie inside any of it (guard.check_no_overlap)."""
    found = [("checkpoint", Path(req.ckpt)), ("checkpoint", ckpt.root)]
    params = getattr(ckpt, "params_dir", None)
    found += [("checkpoint params", params)] if params is not None else []
    found += [(f"norm stats of asset {a!r}", ckpt.root / "assets" / a / "norm_stats.json") for a in ckpt.asset_ids]
    return found + ([("tokenizer", Path(req.tokenizer))] if req.tokenizer else [])


def _profile(req: ConvertRequest, det: Detection) -> Profile:
    if req.profile is None:
        raise PibridgeError(
            f"no --profile given for this {det.model} checkpoint",
            f"a profile naming the OpenPI config it was trained with: {', '.join(profile_names())}",
            f"pass --profile (e.g. {det.model}_droid), or --profile {det.model}_base for OpenPI's Pi0Config defaults "
            "plus --state-dim / --action-dim / --camera-map")
    profile = load_profile(req.profile).with_overrides(**req.overrides)
    profile.check_model(det.model == "pi05")
    for name in ("state_dim", "action_dim", "delta_action_mask", "adapt_to_pi"):  # the last two: OUT's host steps
        profile.require(name)
    return profile


def _cameras(profile: Profile, camera_map: str | None, empty: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """LeRobot camera names per non-empty slot (slot order) and the empty slots. Fails loudly: a wrong name
    makes LeRobot fill that camera with a masked blank image without a word (lerobot.md 4.1)."""
    mapping: dict[str, str | None] = {}
    if camera_map:
        slots = [item.partition("=")[0].strip() for item in camera_map.split(",") if item.strip()]
        twice = sorted({s for s in slots if slots.count(s) > 1})
        if twice:
            raise PibridgeError(f"slot(s) {', '.join(twice)} given twice in --camera-map", "each OpenPI slot at most once",
                                "give one LeRobot camera name per slot")
        mapping = parse_camera_map(camera_map)
    bad = sorted(set(mapping) - set(OPENPI_SLOTS)) + sorted(set(empty) - set(OPENPI_SLOTS))
    if bad:
        raise PibridgeError(f"unknown OpenPI image slot(s) {', '.join(bad)}", f"slots {', '.join(OPENPI_SLOTS)}",
                            "name OpenPI slots on the left of '=' in --camera-map and in --empty-cameras")
    base = {c.slot: c for c in profile.cameras} if profile.cameras else {}
    names, empties, missing = [], [], []
    for slot in OPENPI_SLOTS:
        profile_empty = base[slot].empty if slot in base else None
        if slot in empty or (slot in mapping and mapping[slot] is None):
            empties.append(slot)
        elif slot in mapping:
            if profile_empty:
                raise PibridgeError(f"--camera-map gives a camera for {slot}, which profile {profile.name!r} keeps empty",
                                    "the slots the policy was trained with", f"drop {slot} from --camera-map")
            names.append(mapping[slot])
        elif profile_empty:
            empties.append(slot)
        else:
            missing.append(slot)
    if missing:
        raise _missing_cameras(missing, mapping, base)
    odd = [n for n in names if not LEROBOT_NAME.fullmatch(n)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if odd or dup:
        raise PibridgeError(f"camera names {odd + dup} are {'invalid' if odd else 'used twice'}",
                            "distinct names of letters, digits, '_' or '-' (the part after observation.images.)",
                            "fix --camera-map")
    if not names:
        raise PibridgeError("every camera slot is empty", "at least one camera", "map a slot with --camera-map")
    return tuple(names), tuple(empties)


def _missing_cameras(missing: list[str], mapping: dict[str, str | None], base: dict) -> PibridgeError:
    """Every unmapped slot in one message, with an example that would pass: the user's own entries plus a
    distinct placeholder name per missing slot."""
    hints = [f"{s} (OpenPI robot key {base[s].source!r})" if s in base and base[s].source else s for s in missing]
    example = ",".join([f"{s}={'empty' if c is None else c}" for s, c in mapping.items()] +
                       [f"{s}={s.replace('_0_rgb', '')}" for s in missing])
    return PibridgeError(f"no LeRobot camera name for slot{'s' if len(missing) > 1 else ''} {', '.join(hints)}",
                         "--camera-map SLOT=NAME for every slot the policy uses, or --empty-cameras SLOT",
                         f"e.g. --camera-map {example} (NAME: your dataset's observation.images.<NAME>), or "
                         f"--empty-cameras {','.join(missing)} for cameras the robot does not have")


def build_side_files(r: Resolved, req: ConvertRequest, tokenizer_name: str | None) -> dict[str, Any]:
    """config.json, processor JSONs and normalizer states: small, computed before the big write."""
    p, model = r.profile, r.detection.model
    asset = choose_asset(r.ckpt, p, req.asset_id)
    stats = asset.stats
    _check_stats(stats, p)
    check_fit(asset, p)
    config = build_config_json(
        req.lerobot_version, model=model, horizon=p.action_horizon, max_token_len=p.max_token_len,
        state_dim=p.state_dim, action_dim=p.action_dim, camera_names=r.camera_names, empty_cameras=len(r.empty_slots),
        runtime_dtype=req.runtime_dtype, paligemma_variant=r.detection.variant.paligemma.variant,
        action_expert_variant=r.detection.variant.action_expert.variant,
        normalization_mapping={"VISUAL": "IDENTITY", "STATE": NORM_MODES[p.norm], "ACTION": NORM_MODES[p.norm]},
        allow_unknown_variants=req.allow_tiny, extra=_relative_fields(p))
    kw = {"tokenizer_name": tokenizer_name} if tokenizer_name else {}
    needed = [f.id for f in applicable_fixes(r.transformers_version, req.lerobot_version, req.runtime_dtype)
              if f.kind == "runtime"]
    host = HostSteps.for_profile(p, openpi_resize=req.openpi_resize, runtime_fixes=tuple(needed))
    pre, post = build_processor_jsons(req.lerobot_version, config, host=host, **kw)
    prompt = "openpi-state" if model == "pi05" else "openpi-pi0"
    if model == "pi05" and not p.discrete_state_input:
        # OpenPI's pi0-format prompt (no state) for pi05_libero-style configs (tokenizer.py:14-48):
        # LeRobot's pi05 chain always builds "Task: ..., State: ...;" so swap in its pi0 newline step.
        pre["steps"] = [{"registry_name": "pi0_new_line_processor", "config": {}}
                        if s.get("registry_name") == "pi05_prepare_state_tokenizer_processor_step" else s
                        for s in pre["steps"]]
        prompt = "openpi-no-state"
    states = build_normalizer_states(stats, state_dim=p.state_dim, action_dim=p.action_dim, fold_eps=req.fold_norm_eps)
    return {"config": config, "pre": pre, "post": post, "states": states, "prompt": prompt, "host": host, "asset": asset}


DELTA_NOTE = ("delta actions: OUT's postprocessor adds the state its preprocessor cached (OpenPI's AbsoluteActions); "
              "lerobot-rollout needs --inference.type=rtc (its sync engine refuses relative-action policies, "
              "rollout/context.py:477-483), and per-tick select_action loops (lerobot-eval) re-anchor each queued "
              "action on the current state, not the chunk's first one")


def _relative_fields(p: Profile) -> dict[str, Any]:
    """OpenPI's delta-action mask as LeRobot's relative / absolute action steps express it: enabled, with
    action names whose "gripper" dims are exactly the absolute ones (pibridge.hostx.action_names)."""
    if not p.delta_action_mask:
        return {}
    return {"use_relative_actions": True, "relative_exclude_joints": [EXCLUDE_TOKEN],
            "action_feature_names": action_names(p.delta_action_mask, p.action_dim, p.robot)}


def _step_index(steps: dict, registry_name: str) -> int:
    return next(i for i, s in enumerate(steps["steps"]) if s.get("registry_name") == registry_name)


def _profile_asset(r: Resolved) -> str | None:
    return r.profile.asset_id if r.profile.asset_id in r.ckpt.asset_ids else None


def _check_stats(stats, p: Profile) -> None:
    for key, s in stats.items():
        for name in ("mean", "std", "q01", "q99"):
            v = getattr(s, name)
            if v is not None and not np.isfinite(np.asarray(v, np.float64)).all():
                raise PibridgeError(f"norm stats {key}.{name} contain NaN or Inf", "finite statistics",
                                    "recompute norm stats (OpenPI scripts/compute_norm_stats.py)")
        if p.norm == "quantile" and (s.q01 is None or s.q99 is None):
            raise PibridgeError(f"norm stats {key} have no q01/q99", "quantiles for a quantile-normalized policy",
                                "recompute norm stats with quantiles")
        if s.q01 is not None and s.q99 is not None and (np.asarray(s.q01) > np.asarray(s.q99)).any():
            raise PibridgeError(f"norm stats {key}: q01 > q99 in some dims", "q01 <= q99", "recompute norm stats")


def convert(req: ConvertRequest, console=None) -> dict[str, Any] | None:
    """Run a conversion (or a dry run). Returns the provenance record (None for a dry run)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    out = Path(req.out)
    recover_stale(out.absolute())
    r = resolve(req)
    if req.dry_run:  # the audit is the command's output: stdout (progress and messages stay on stderr)
        _print_audit(r, Console(soft_wrap=True) if console.stderr else console)
        return None
    if req.fold_bf16_params and req.runtime_dtype != "bfloat16":
        raise PibridgeError("--fold-bf16-params with a float32 runtime", "--runtime-dtype bfloat16",
                            "the fold reproduces OpenPI's bf16 inference; drop it for a float32 policy")
    if req.fold_bf16_params and r.ckpt.layout == "openpi-pytorch":
        raise PibridgeError("--fold-bf16-params on OpenPI-PyTorch input", "an OpenPI JAX checkpoint",
                            "OpenPI's PyTorch converter already rounded its weights; fold from the JAX checkpoint")
    check_output_target(out.absolute(), req.force)
    if req.force and out.exists() and not is_empty_dir(out):
        check_replaceable(out)
    final_tok = (out.absolute() / "tokenizer") if req.tokenizer else None
    side = build_side_files(r, req, str(final_tok) if final_tok else None)
    with atomic_output_dir(out, force=req.force) as tmp:
        fingerprint, weights_hash = _write_weights(r, tmp / "model.safetensors", req.allow_nonfinite,
                                                   req.fold_bf16_params, console)
        _check_synth_fingerprint(r, fingerprint)
        _write_json(tmp / "config.json", side["config"], indent=4)
        _write_json(tmp / "policy_preprocessor.json", side["pre"], indent=2)
        _write_json(tmp / "policy_postprocessor.json", side["post"], indent=2)
        write_normalizer_files(tmp, side["states"], _step_index(side["pre"], "normalizer_processor"),
                               _step_index(side["post"], "unnormalizer_processor"))
        if req.tokenizer:
            _write_tokenizer(Path(req.tokenizer), tmp / "tokenizer")
        record = _provenance(r, req, side, fingerprint, (tmp / "tokenizer" / "tokenizer.json").is_file())
        record["files"] = file_list(tmp, known={"model.safetensors": weights_hash}, skip=[PARTIAL_MARKER])
        _write_json(tmp / PROVENANCE_FILE, record, indent=2)
    if r.profile.delta_action_mask:
        console.print(f"[yellow]note[/] {DELTA_NOTE}", markup=True, highlight=False)
    console.print(f"[green]wrote[/] {out} ({r.plan.total_bytes() / 1e9:.2f} GB of weights, "
                  f"{len(r.plan.tensors)} tensors) for LeRobot {req.lerobot_version} / transformers {r.transformers_version}")
    console.print(f"loads with: {', '.join(record['loads_with'])}", markup=False, highlight=False)
    if req.tokenizer:
        console.print(f"tokenizer: policy_preprocessor.json names {final_tok}; after moving or copying OUT, LeRobot "
                      f"with the pibridge plugin re-points it itself, without the plugin run: "
                      f"{relocate_command(Path('NEW_OUT'))}", markup=False, highlight=False)
    return record


def _check_synth_fingerprint(r: Resolved, fingerprint: str) -> None:
    """A checkpoint written by `pibridge synth` records the fingerprint of its values: a mismatch means data that
    decoded without error but changed on disk (zstd frames carry no content checksum). Real OpenPI checkpoints
    record none, so there nothing can be checked (docs/reliability.md)."""
    recorded = (r.ckpt.synth_record or {}).get("fingerprint")
    if recorded and recorded != fingerprint:
        raise PibridgeError(f"the values read from the checkpoint have fingerprint {fingerprint[:16]}..., not the "
                            f"{recorded[:16]}... `pibridge synth` recorded when it wrote them",
                            "the checkpoint's data unchanged since it was written",
                            "the files were damaged on disk or in a copy: copy or re-create the checkpoint")


def _write_weights(r: Resolved, path: Path, allow_nonfinite: bool, fold_bf16: bool, console) -> tuple[str, str]:
    """Stream the plan into model.safetensors (weights.write_weights, overlapped reads through weights.LeafReader);
    each leaf is fingerprinted and NaN-checked beside the conversion. Returns the source fingerprint and the written
    file's hash (guard.HASH)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    fp = Fingerprint()

    def check(leaf_path, arr) -> None:
        fp.add(leaf_path, arr)
        if not allow_nonfinite and not _all_finite(arr):
            raise PibridgeError(f"leaf {'/'.join(leaf_path)} contains NaN or Inf", "finite weights",
                                "check the training run; pass --allow-nonfinite to convert anyway")

    def fold(t, x):
        return fold_bf16_param(t.role, x) if t.dtype == "float32" and t.source is not None else x

    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar, \
            LeafReader(r.ckpt, r.plan, on_leaf=check) as reader:
        task = bar.add_task("model.safetensors", total=r.plan.total_bytes())
        _, file_hash = write_weights(r.plan, reader.read, path, adjust=fold if fold_bf16 else None,
                                     on_written=lambda n: bar.advance(task, n))
        reader.finish()
    return fp.hexdigest(), file_hash


def _all_finite(arr: np.ndarray) -> bool:
    """NaN / Inf check, 16 M elements at a time (no leaf-sized temporary); bf16 through its bit pattern
    (exponent all ones), which is faster than ml_dtypes' isfinite ufunc."""
    flat, step = arr.reshape(-1), 1 << 24
    if arr.dtype.name == "bfloat16":
        bits = flat.view(np.uint16)
        return not any(((bits[i:i + step] & 0x7F80) == 0x7F80).any() for i in range(0, bits.size, step))
    return all(np.isfinite(flat[i:i + step]).all() for i in range(0, flat.size, step))


def _write_json(path: Path, obj: Any, indent: int) -> None:
    path.write_text(json.dumps(obj, indent=indent) + "\n")


def _write_tokenizer(spm: Path, dest: Path) -> None:
    """The SentencePiece model plus the config transformers' AutoTokenizer needs to build a Gemma tokenizer
    from a local directory (LeRobot's TokenizerProcessorStep calls AutoTokenizer.from_pretrained(name))."""
    from pibridge.tokenizer import load_tokenizer

    load_tokenizer(spm)  # validates: a SentencePiece model with Gemma's special ids
    dest.mkdir()
    shutil.copyfile(spm, dest / "tokenizer.model")
    _write_json(dest / "tokenizer_config.json", {
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "padding_side": "right", "model_max_length": 1000000}, indent=2)
    _write_fast_tokenizer(dest)


def _write_fast_tokenizer(dest: Path) -> None:
    """tokenizer.json (the `tokenizers` serialisation) beside tokenizer.model, so LeRobot loads OUT/tokenizer
    without sentencepiece (lerobot[pi] does not install it; transformers then fails asking for tiktoken). Made
    by the installed transformers' own SentencePiece conversion (same token ids, tests/test_out_travels.py);
    without transformers here, OUT keeps tokenizer.model only and `loads_with` names sentencepiece."""
    try:
        from transformers import AutoTokenizer

        backend = getattr(AutoTokenizer.from_pretrained(str(dest)), "backend_tokenizer", None)
    except Exception:  # noqa: BLE001  no transformers / no SentencePiece converter here: tokenizer.model only
        return
    if backend is not None:
        backend.save(str(dest / "tokenizer.json"))


def _provenance(r: Resolved, req: ConvertRequest, side: dict, fingerprint: str,
                fast_tokenizer: bool = False) -> dict[str, Any]:
    fixes = applicable_fixes(r.transformers_version, req.lerobot_version, req.runtime_dtype)
    return {
        "pibridge_version": __version__,
        "source": {"path": str(Path(req.ckpt).resolve()), "layout": r.ckpt.layout, "fingerprint": fingerprint,
                   "synth": r.ckpt.synth_record, "asset_ids": r.ckpt.asset_ids, "asset": side["asset"].record()},
        "model": r.detection.model, "variant": r.detection.variant.name,
        "profile": r.profile.to_dict(), "camera_names": list(r.camera_names), "empty_slots": list(r.empty_slots),
        "prompt_format": side["prompt"],
        "host_transforms": {"default_prompt": side["host"].default_prompt, "prompt_clean": side["host"].prompt_clean,
                            "adapt_to_pi": side["host"].adapt_to_pi, "openpi_resize": side["host"].openpi_resize,
                            "delta_action_mask": list(r.profile.delta_action_mask or ()),
                            "action_feature_names": side["config"].get("action_feature_names"),
                            "notes": [DELTA_NOTE] if r.profile.delta_action_mask else []},
        "target": {"lerobot_version": req.lerobot_version, "transformers_version": r.transformers_version,
                   "weights_dtype": req.weights_dtype, "runtime_dtype": req.runtime_dtype},
        "folds": list(side["states"].folds) + ([FOLD_ID] if req.fold_bf16_params else []), "fold_inexact_elements": side["states"].inexact,
        "runtime_fixes_needed": [f.id for f in fixes if f.kind == "runtime"],
        "loads_with": _loads_with(req, [f.id for f in fixes if f.kind == "runtime"], fast_tokenizer),
        "layout_fixes": [f.id for f in fixes if f.kind == "layout"],
        "tensors": len(r.plan.tensors), "weights_bytes": r.plan.total_bytes(),
        "lora": _lora_provenance(r.plan),
    }


def _loads_with(req: ConvertRequest, runtime_fixes: list[str], fast: bool) -> list[str]:
    """What must be installed where OUT is loaded: stock LeRobot, plus the plugin when OUT needs what only it
    does (runtime fixes; re-pointing a bundled tokenizer after OUT moves, else relocate)."""
    why = [f"runtime fixes {', '.join(runtime_fixes)}"] if runtime_fixes else []
    why += [f"its tokenizer/ after a move or copy (else {relocate_command(Path('OUT'))})"] if req.tokenizer else []
    need = [f"lerobot[pi]=={req.lerobot_version}"] + ([f"lerobot_policy_pibridge ({'; '.join(why)})"] if why else [])
    return need + (["sentencepiece (OUT/tokenizer has no tokenizer.json)"] if req.tokenizer and not fast else [])


def _lora_provenance(plan: ConversionPlan) -> dict[str, Any] | None:
    if plan.lora_tree is None:
        return None
    return {"merged": True, "experts": list(plan.lora_tree.experts),
            "settings": {f"{EXPERTS[e]}/{k}": v.to_dict() for (e, k), v in sorted(plan.lora.items())},
            "adapters": {"/".join(a.base): merge_rule(a, plan.lora) for a in plan.lora_tree.adapters},
            "factor_leaves": len(plan.lora_tree.factor_leaves()),
            "note": "weights are base + LoRA merged in float32, cast once; the inverse map gives the merged base tree"}


def _print_audit(r: Resolved, console) -> None:
    width = max(len(t.key) for t in r.plan.tensors)
    for t in r.plan.tensors:
        console.print(t.audit_line(width), markup=False, highlight=False, soft_wrap=True)
    a = r.plan.accounting
    if r.plan.lora_tree is not None:
        for (e, k), v in sorted(r.plan.lora.items()):
            console.print(f"LoRA {EXPERTS[e]} {k}: rank {v.rank}, alpha {v.alpha:g}{', rsLoRA' if v.rslora else ''}, "
                          f"scaling {v.scaling:g}{'' if k == 'attn' else ' (not applied: lora.FeedForward)'} "
                          f"({v.source}); {len(r.plan.lora_tree.factor_leaves())} factor leaves merged",
                          markup=False, highlight=False)
    console.print(f"{r.detection.model} ({r.detection.variant.name}), {len(r.plan.tensors)} tensors, "
                  f"{r.plan.total_bytes() / 1e9:.2f} GB, transformers key layout {r.transformers_version}; "
                  f"ignored sources: {len(a.ignored_sources)}, synthesized: {len(a.synthesized)}; "
                  f"cameras {dict(zip([s for s in OPENPI_SLOTS if s not in r.empty_slots], r.camera_names))}, "
                  f"empty {list(r.empty_slots)}", markup=False, highlight=False)
