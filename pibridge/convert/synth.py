"""`pibridge synth`: a synthetic checkpoint written exactly the way OpenPI writes one, without jax or orbax.

Layouts (OUT is the checkpoint directory; both also get OUT/pibridge_synth.json):
- released: OUT/params/ = PyTreeCheckpointer save of {"params": tree} (+ params/_CHECKPOINT_METADATA and an
  empty params/commit_success.txt, as in the downloaded gs://openpi-assets/checkpoints/<name>/params),
  OUT/assets/<asset_id>/norm_stats.json.
- training: OUT is one CheckpointManager step (openpi training/checkpoints.py:40-86): OUT/params/ holds
  {"params": nnx.State} whose leaf paths end in "value", OUT/train_state/, OUT/assets/<asset_id>/,
  OUT/_CHECKPOINT_METADATA naming the three item handlers. train_state/ is reduced to `step` (int32) and
  the None leaves (`model_def`, `ema_params`); OpenPI's also holds a params copy and the AdamW moments
  (3x the model), which neither restore_params nor pibridge reads.
Arrays are generated (synth_weights), stored as float32 or bfloat16, one chunk at a time (memory stays
about two chunks); the fingerprint (fingerprint.py) is over the stored values.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import ml_dtypes
import numpy as np

from pibridge.configs import load_variant
from pibridge.convert import normstats
from pibridge.convert.atomic import atomic_output_dir
from pibridge.convert.fingerprint import Fingerprint
from pibridge.convert.lora import (DEFAULT_RANKS, EXPERTS, OPENPI_VARIANTS, LoraSetting, frozen_bf16, parse_per_expert,
                                   parse_rslora)
from pibridge.convert.ocdbt import (PYTREE_HANDLER, SHARDING_RELEASED, SHARDING_TRAINING, PyTreeItemWriter,
                                    checkpoint_metadata_json)
from pibridge.convert.synth_weights import FORMULA_VERSION, LeafPlan, generate, plan_leaves
from pibridge.errors import PibridgeError

SYNTH_FILE = "pibridge_synth.json"
SYNTH_FORMAT_VERSION = 1
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
LAYOUTS = ("released", "training")
DEFAULT_NATIVE_DIM = 8
ASSETS_HANDLER = "openpi.training.checkpoints.CallbackHandler"
_SLAB_ELEMENTS = 1 << 25  # C-order slab size for fingerprinting leaves stored in several chunks


@dataclass(frozen=True)
class SynthResult:
    out: Path
    variant: str
    seed: int
    dtype: str
    layout: str
    asset_id: str
    state_dim: int
    action_dim: int
    dims_from: str
    sharp_attention: bool
    outliers: bool
    n_leaves: int
    n_params: int
    stored_bytes: int
    fingerprint: str
    seconds: float
    lora: dict | None = None  # {"experts", "settings": {"<expert>/<kind>": LoraSetting.to_dict()}}: the training config


def synth_command(out: Path, *, variant: str, seed: int, dtype: str, layout: str, asset_id: str,
                  profile: str | None, sharp_attention: bool, outliers: bool, force: bool,
                  lora: LoraRequest | None = None) -> SynthResult:
    """CLI entry: write the checkpoint and print a summary (fingerprint included)."""
    result = write_synthetic_checkpoint(out, variant=variant, seed=seed, dtype=dtype, layout=layout,
                                        asset_id=asset_id, profile=profile, sharp_attention=sharp_attention,
                                        outliers=outliers, force=force, lora=lora)
    _print_summary(result)
    return result


def write_synthetic_checkpoint(out: Path, *, variant: str = "tiny-pi05", seed: int = 0, dtype: str = "float32",
                               layout: str = "released", asset_id: str = "synthetic", profile: str | None = None,
                               sharp_attention: bool = False, outliers: bool = False, force: bool = False,
                               progress: bool | None = None, lora: LoraRequest | None = None) -> SynthResult:
    """Write OUT atomically (temporary sibling, renamed at the end); PibridgeError on bad arguments.
    `lora`: a LoRA fine-tune as OpenPI's training writes it (training layout; frozen llm base leaves bfloat16,
    factors and the rest float32: pibridge.convert.lora.frozen_bf16)."""
    var = load_variant(variant)
    store_dtype = _check_args(dtype, layout, asset_id)
    settings = lora.settings() if lora else None
    if lora and (layout != "training" or dtype != "float32"):
        raise PibridgeError(f"--lora with --layout {layout} --dtype {dtype}",
                            "a LoRA fine-tune in OpenPI's training layout, whose dtypes training decides "
                            "(frozen llm base bfloat16, LoRA factors and the rest float32)",
                            "pass --lora with --layout training and without --dtype")
    state_dim, action_dim, dims_from = _native_dims(profile)
    plans = plan_leaves(var, seed, sharp_attention=sharp_attention, outliers=outliers,
                        lora={k: (v.rank, v.scaling if k[1] == "attn" else 1.0) for k, v in settings.items()}
                        if settings else None)
    if settings:
        experts = tuple(sorted({e for e, _ in settings}))
        dtype_of = lambda path: DTYPES["bfloat16" if frozen_bf16(path, experts) else "float32"]  # noqa: E731
        lora_rec = {"experts": [EXPERTS[e] for e in experts],
                    "settings": {f"{EXPERTS[e]}/{k}": v.to_dict() for (e, k), v in sorted(settings.items())}}
    else:
        dtype_of, lora_rec = (lambda path: store_dtype), None
    show = (not var.tiny) if progress is None else progress
    t0 = time.perf_counter()
    with atomic_output_dir(Path(out), force=force) as tmp:
        fp, nbytes = _write_params(tmp, plans, dtype_of, layout, show)
        if layout == "training":
            _write_train_state(tmp / "train_state")
            (tmp / "_CHECKPOINT_METADATA").write_text(checkpoint_metadata_json(
                {"assets": ASSETS_HANDLER, "params": PYTREE_HANDLER, "train_state": PYTREE_HANDLER}))
        stats = normstats.synthesize(seed, {"state": state_dim, "actions": action_dim})
        stats_dir = tmp / "assets" / asset_id
        stats_dir.mkdir(parents=True)
        (stats_dir / "norm_stats.json").write_text(normstats.serialize(stats))
        result = SynthResult(Path(out), var.name, seed, "mixed" if settings else dtype, layout, asset_id, state_dim, action_dim, dims_from,
                             sharp_attention, outliers, len(plans), sum(p.size for p in plans), nbytes, fp,
                             round(time.perf_counter() - t0, 3), lora_rec)
        (tmp / SYNTH_FILE).write_text(json.dumps(_record(result, profile), indent=2) + "\n")
    return result


@dataclass(frozen=True)
class LoraRequest:
    """What `synth --lora` adapts: experts (0 PaliGemma, 1 action expert) and per-expert rank / alpha / rsLoRA
    (missing: OpenPI's variant, gemma_2b_lora for PaliGemma and gemma_300m_lora for the expert)."""

    experts: tuple[int, ...] = (0, 1)
    rank: dict | None = None
    alpha: dict | None = None
    rslora: dict | None = None

    def settings(self) -> dict[tuple[int, str], LoraSetting]:
        out = {}
        for e in self.experts:
            rank = int((self.rank or {}).get(e, DEFAULT_RANKS[EXPERTS[e]]))
            rs = bool((self.rslora or {}).get(e, False))
            if e in (self.alpha or {}):
                alpha, src = float(self.alpha[e]), "--lora-alpha"
            else:
                name, alpha = OPENPI_VARIANTS.get(rank, (None, float(rank)))
                src = f"OpenPI variant {name}" if name else "alpha = rank (no OpenPI variant has this rank)"
            for kind in ("attn", "ffn"):
                out[(e, kind)] = LoraSetting(rank, alpha, rs, src)
        return out


def lora_request(experts: str | None, rank: str | None, alpha: str | None, rslora: str | None) -> LoraRequest | None:
    """The CLI's --lora / --lora-rank / --lora-alpha / --lora-rslora as a LoraRequest (None without --lora)."""
    if experts is None:
        if rank or alpha or rslora:
            raise PibridgeError("--lora-rank / --lora-alpha / --lora-rslora without --lora", "--lora EXPERTS with them",
                                "add --lora both (or paligemma / action_expert)")
        return None
    chosen = parse_rslora(experts)  # same vocabulary: both | expert names
    return LoraRequest(tuple(sorted(chosen)), parse_per_expert(rank, "--lora-rank", int),
                       parse_per_expert(alpha, "--lora-alpha", float), parse_rslora(rslora))


def _check_args(dtype: str, layout: str, asset_id: str) -> np.dtype:
    if dtype not in DTYPES:
        raise PibridgeError(f"unknown dtype {dtype!r}", f"one of {', '.join(DTYPES)}", "pass --dtype float32 or bfloat16")
    if layout not in LAYOUTS:
        raise PibridgeError(f"unknown layout {layout!r}", f"one of {', '.join(LAYOUTS)}",
                            "pass --layout released or training")
    parts = PurePosixPath(asset_id).parts
    if not asset_id or asset_id.startswith("/") or "\\" in asset_id or any(p in ("..", ".") for p in parts):
        raise PibridgeError(f"bad asset id {asset_id!r}", "a relative name, optionally nested (e.g. droid, "
                            "physical-intelligence/libero)", "pass --asset-id without '..', '.' or a leading '/'")
    return DTYPES[dtype]


def _native_dims(profile: str | None) -> tuple[int, int, str]:
    """(state_dim, action_dim, where they came from) for the norm stats."""
    if profile is None:
        return DEFAULT_NATIVE_DIM, DEFAULT_NATIVE_DIM, "default (no --profile)"
    from pibridge.convert.profile import load_profile

    prof = load_profile(profile)
    state = prof.state_dim if prof.state_dim is not None else DEFAULT_NATIVE_DIM
    action = prof.action_dim if prof.action_dim is not None else DEFAULT_NATIVE_DIM
    unknown = [n for n, v in (("state_dim", prof.state_dim), ("action_dim", prof.action_dim)) if v is None]
    note = f" ({', '.join(unknown)} unknown in the profile: default {DEFAULT_NATIVE_DIM})" if unknown else ""
    return state, action, f"profile {profile}{note}"


def _write_params(tmp: Path, plans: list[LeafPlan], dtype_of: Callable[[tuple], np.dtype], layout: str,
                  show: bool) -> tuple[str, int]:
    training = layout == "training"
    writer = PyTreeItemWriter(tmp / "params", SHARDING_TRAINING if training else SHARDING_RELEASED)
    fp = Fingerprint()
    total = sum(p.size * dtype_of(p.path).itemsize for p in plans)
    with _progress(total, show) as advance:
        for plan in plans:
            keypath = ("params",) + plan.path + (("value",) if training else ())
            _write_leaf(writer, keypath, plan, dtype_of(plan.path), fp, advance)
    writer.finish()
    if not training:
        (tmp / "params" / "_CHECKPOINT_METADATA").write_text(checkpoint_metadata_json(PYTREE_HANDLER))
        (tmp / "params" / "commit_success.txt").write_text("")
    return fp.hexdigest(), total


def _write_leaf(writer: PyTreeItemWriter, keypath: tuple[str, ...], plan: LeafPlan, store_dtype: np.dtype,
                fp: Fingerprint, advance: Callable[[int], None]) -> None:
    fp.begin_leaf(plan.path, store_dtype.name, plan.shape)
    hashed = False

    def fill(box):
        nonlocal hashed
        block = _generate_as(plan, box, store_dtype)
        if tuple(s.stop - s.start for s in box) == plan.shape:  # the only chunk: hash it as written
            fp.update(block)
            hashed = True
        return block

    writer.write_array(keypath, plan.shape, store_dtype, fill, on_chunk=advance)
    if not hashed:  # several chunks: hash again in C order, slab by slab along axis 0
        step = max(1, _SLAB_ELEMENTS // max(1, math.prod(plan.shape[1:])))
        for i in range(0, plan.shape[0], step):
            box = (slice(i, min(i + step, plan.shape[0])),) + tuple(slice(0, d) for d in plan.shape[1:])
            fp.update(_generate_as(plan, box, store_dtype))


def _generate_as(plan: LeafPlan, box: tuple[slice, ...], dtype: np.dtype) -> np.ndarray:
    """generate() cast to the stored dtype, slab by slab along the box's first axis (bounded float32 copy)."""
    dims = tuple(s.stop - s.start for s in box)
    if not dims:
        return generate(plan, box).astype(dtype)
    out = np.empty(dims, dtype)
    step = max(1, _SLAB_ELEMENTS // max(1, math.prod(dims[1:])))
    for i in range(0, dims[0], step):
        sub = (slice(box[0].start + i, box[0].start + min(i + step, dims[0])),) + box[1:]
        out[i:i + step] = generate(plan, sub).astype(dtype, copy=False)
    return out


def _write_train_state(item_dir: Path) -> None:
    """Reduced OpenPI train_state: TrainState fields in dataclass order (training/utils.py:15-23)."""
    writer = PyTreeItemWriter(item_dir, SHARDING_TRAINING)
    writer.write_array(("step",), (), np.dtype(np.int32), lambda box: np.zeros((), np.int32))
    writer.add_none(("model_def",))
    writer.add_none(("ema_params",))
    writer.finish()


class _progress:
    """A rich progress bar over stored bytes (full-size writes), or nothing."""

    def __init__(self, total: int, show: bool):
        self.total, self.show, self._bar = total, show, None

    def __enter__(self) -> Callable[[int], None]:
        if not self.show:
            return lambda n: None
        from rich.progress import (BarColumn, DownloadColumn, Progress, TimeElapsedColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self._bar = Progress("writing params", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
        self._bar.__enter__()
        task = self._bar.add_task("params", total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _record(r: SynthResult, profile: str | None) -> dict:
    rec = {"format": "pibridge-synth", "format_version": SYNTH_FORMAT_VERSION, "formula": FORMULA_VERSION}
    rec.update({k: v for k, v in asdict(r).items() if k not in ("out", "seconds")})
    rec.update(profile=profile, orbax_layout="orbax-checkpoint 0.11.13 (OCDBT + zarr v2)")
    return rec


def _print_summary(r: SynthResult) -> None:
    from rich.console import Console

    c = Console(highlight=False, soft_wrap=True)
    c.print(f"wrote {r.out} ({r.layout} layout, {r.variant}, {r.dtype}, seed {r.seed}) in {r.seconds:.1f} s")
    c.print(f"  {r.n_leaves} leaves, {r.n_params:,} params, {r.stored_bytes / 1e9:.3f} GB stored")
    c.print(f"  norm stats: assets/{r.asset_id}/norm_stats.json (state {r.state_dim}, actions {r.action_dim}; "
            f"{r.dims_from})")
    opts = [n for n, on in (("sharp_attention", r.sharp_attention), ("outliers", r.outliers)) if on]
    c.print(f"  options: {', '.join(opts) or 'none'}")
    if r.lora:
        c.print("  LoRA: " + "; ".join(f"{k} rank {v['rank']} alpha {v['alpha']:g}{' rsLoRA' if v['rslora'] else ''} "
                                      + (f"(scaling {v['scaling']:g})" if k.endswith("attn") else "(unscaled)")
                                      for k, v in r.lora["settings"].items())
                + " (llm base of the adapted experts bfloat16, the rest float32)")
    c.print(f"  fingerprint {r.fingerprint}")
