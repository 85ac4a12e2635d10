"""`pibridge check OUT` (the guard of DESIGN "Fixes") and `pibridge fixes` (the fix table, filtered).

check_runtime(OUT) reads OUT's provenance (the LeRobot / transformers / dtype it was converted for), then
MEASURES the installed runtime on tiny modules built here with the installed transformers classes (no download,
no weights, no stack): whether embed_tokens already scales by sqrt(hidden), whether get_image_features divides,
which SigLIP key layout the vision tower has, whether RoPE inv_freq stays fp32 after a `.to(bfloat16)`. The
findings are derived from the fix table: every record of a guarded kind (runtime, layout) that concerns the
target's dtype and LeRobot embedding semantics is judged by the probe registered under its id (@probe), which
says what is wrong and which runtime fix (pibridge.fixes.runtime) repairs it; the table's version ranges are then
cross-checked against what the probes found.

Exit codes (command_check): 0 when nothing is wrong or only warnings (problems a runtime fix repairs, a
runtime other than the target) -- the policy is usable with `apply_runtime_fixes`; 1 with --strict on any
warning, and always on an error (a problem no runtime fix repairs: OUT's SigLIP keys do not match the
installed release, so LeRobot's loader leaves the vision tower random); 2 on bad input (PibridgeError).
Torch side: never imports jax; imports no stack (pibridge.parity).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pibridge.errors import PibridgeError
from pibridge.fixes.table import (FIXES_JSON, GUARDED_KINDS, VISION_MODEL, Fix, embedding_semantics, load_fixes,
                                  matching_fixes)

APPLY = "after from_pretrained: pibridge.fixes.runtime.apply_runtime_fixes(policy, runtime_dtype=...)"


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warning | error
    topic: str  # versions | text-embedding | image-features | rope-inv-freq | siglip-keys | fix-table
    found: str
    expected: str = ""
    fix: str = ""
    fix_id: str | None = None


@dataclass(frozen=True)
class Probe:
    """What the installed transformers does, measured on tiny modules."""

    transformers: str
    text_embedding_scaled: bool
    image_features_divided: bool
    siglip_flat_keys: bool
    inv_freq_fp32_after_bf16: bool


@dataclass(frozen=True)
class Runtime:
    """What a probe judges: the measurements, the target's LeRobot embedding semantics and dtype, OUT's layout."""

    probe: Probe
    semantics: str  # "0.5" | "0.6" (fixes.json embedding_semantics)
    dtype: str
    out_flat: bool | None  # OUT's SigLIP keys flat (True), nested (False), absent (None)


PROBES: dict[str, Callable[[Runtime, Fix], list[Finding]]] = {}  # fix id -> judge of that record


def probe(fix_id: str):
    """Register the guard's judge for fixes.json record `fix_id` (kind runtime or layout)."""
    def register(fn):
        PROBES[fix_id] = fn
        return fn
    return register


def _tiny_paligemma_config():
    """A PaliGemma config of the installed transformers: Gemma width 36 (sqrt(36) = 6, a factor no rounding can
    hide), 1 layer, head_dim 18, vocab 32; SigLIP of tiny-pi05. Built here so the guard needs no stack."""
    from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

    from pibridge.configs import load_variant

    width, vocab, v = 36, 32, load_variant("tiny-pi05").siglip
    vision = SiglipVisionConfig(hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth,
                                num_attention_heads=v.num_heads, patch_size=v.patch_size, image_size=v.image_size,
                                layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", projection_dim=width,
                                vision_use_head=False)
    text = GemmaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=18, hidden_activation="gelu_pytorch_tanh",
                       hidden_act="gelu_pytorch_tanh", rms_norm_eps=1e-6, max_position_embeddings=8192,
                       attention_bias=False)
    cfg = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=vocab,
                          projection_dim=width)
    cfg.vision_config.projection_dim = width
    return cfg


def probe_runtime() -> Probe:
    """Build a tiny PaliGemma with the installed transformers (random init, CPU) and measure its behaviour."""
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    from pibridge.fixes import shims

    torch.manual_seed(0)
    with torch.no_grad():
        cfg = _tiny_paligemma_config()
        pg = PaliGemmaForConditionalGeneration(cfg).eval()
        emb = pg.model.language_model.embed_tokens
        ids = torch.arange(5)[None]
        scaled = torch.allclose(emb(ids), emb.weight[ids] * math.sqrt(cfg.text_config.hidden_size), rtol=1e-3)
        size = cfg.vision_config.image_size
        pixels = torch.rand(1, 3, size, size)
        direct = pg.model.multi_modal_projector(pg.model.vision_tower(pixels).last_hidden_state)
        divided = not torch.allclose(shims.image_features(pg.model, pixels), direct, rtol=1e-4, atol=1e-6)
        flat = not any(VISION_MODEL in "." + k for k in pg.state_dict())
        rotary = pg.model.language_model.rotary_emb.to(torch.bfloat16)
        fp32 = rotary.inv_freq.dtype == torch.float32
    return Probe(shims.transformers_version(), scaled, divided, flat, fp32)


def installed_lerobot() -> str | None:
    try:
        return metadata.version("lerobot")
    except metadata.PackageNotFoundError:
        return None


def out_vision_layout(out: Path) -> bool | None:
    """True: OUT's SigLIP keys are flat (>= 5.6 layout); False: they carry `vision_model.`; None: no vision keys."""
    from safetensors import safe_open

    path = Path(out) / "model.safetensors"
    if not path.is_file():
        raise PibridgeError(f"{path} not found", "a LeRobot policy directory written by `pibridge convert`",
                            "pass the OUT directory of `pibridge convert`")
    with safe_open(str(path), "np") as f:
        keys = [k for k in f.keys() if ".vision_tower." in k]
    if not keys:
        return None
    return not any(VISION_MODEL in k for k in keys)


def _target(out: Path) -> dict:
    from pibridge.provenance import load_provenance

    t = load_provenance(out).get("target") or {}
    missing = [k for k in ("lerobot_version", "transformers_version", "runtime_dtype") if k not in t]
    if missing:
        raise PibridgeError(f"{out}/pibridge.json has no target {', '.join(missing)}",
                            "the provenance written by `pibridge convert`", "convert the checkpoint again")
    return t


def check_runtime(out_dir: Path, probe: Probe | None = None, lerobot: str | None = None) -> list[Finding]:
    """Findings for OUT on the installed runtime (or on `probe` / `lerobot` when given, for tests)."""
    target = _target(Path(out_dir))
    probe = probe or probe_runtime()
    lerobot = lerobot or installed_lerobot()
    lr = lerobot or target["lerobot_version"]
    findings = _version_findings(target, probe.transformers, lerobot)
    rt = Runtime(probe, embedding_semantics(lr), target["runtime_dtype"], out_vision_layout(Path(out_dir)))
    for fix in guarded(rt):
        findings += judge(fix.id)(rt, fix)
    findings += _table_cross_check(findings, probe.transformers, lr, target["runtime_dtype"])
    return findings


def guarded(rt: Runtime) -> list[Fix]:
    """The records the guard judges for this target: a guarded kind, its dtype, its embedding semantics."""
    return [f for f in load_fixes() if f.kind in GUARDED_KINDS and rt.dtype in f.runtime_dtypes
            and f.semantics in (None, rt.semantics)]


def judge(fix_id: str) -> Callable[[Runtime, Fix], list[Finding]]:
    if fix_id not in PROBES:
        raise PibridgeError(f"fix {fix_id!r} of {FIXES_JSON} has no probe", f"one of {sorted(PROBES)}",
                            "register one with @probe in pibridge/fixes/guard.py")
    return PROBES[fix_id]


def _version_findings(target: dict, tv: str, lerobot: str | None) -> list[Finding]:
    out = []
    if tv != target["transformers_version"]:
        out.append(Finding("warning", "versions", f"installed transformers {tv}, OUT was converted for "
                           f"{target['transformers_version']}", f"transformers {target['transformers_version']}",
                           "the probes below say whether this matters; to target this runtime: pibridge convert "
                           f"--transformers-version {tv}"))
    if lerobot is None:
        out.append(Finding("ok", "versions", f"LeRobot not installed here; judged for its target "
                           f"{target['lerobot_version']}"))
    elif lerobot != target["lerobot_version"]:
        out.append(Finding("warning", "versions", f"installed LeRobot {lerobot}, OUT targets "
                           f"{target['lerobot_version']}", f"LeRobot {target['lerobot_version']}",
                           f"pibridge convert --lerobot-version {lerobot}"))
    return out


def _warn(topic: str, found: str, expected: str, fix: Fix) -> Finding:
    return Finding("warning", topic, found, expected, f"{APPLY} ({fix.function})", fix.id)


@probe("text-embedding-scaled")
def _text_embedding(rt: Runtime, fix: Fix) -> list[Finding]:
    if not rt.probe.text_embedding_scaled:
        return [_warn("text-embedding", "embed_tokens returns unscaled rows (transformers <= 5.3); LeRobot 0.6 does "
                      "not scale them", "rows scaled by sqrt(hidden)", fix)]
    return [Finding("ok", "text-embedding", "embed_tokens scales by sqrt(hidden), as LeRobot 0.6 expects")]


@probe("image-features-undivided")
def _image_features(rt: Runtime, fix: Fix) -> list[Finding]:
    if rt.probe.image_features_divided:
        return [_warn("image-features", "get_image_features divides by sqrt(hidden) (transformers <= 5.3); LeRobot "
                      "0.6 does not multiply back", "undivided image features", fix)]
    return [Finding("ok", "image-features", "get_image_features is undivided, as LeRobot 0.6 expects")]


@probe("double-scaling-lerobot-0.5")
def _double_scaling(rt: Runtime, fix: Fix) -> list[Finding]:
    if rt.probe.text_embedding_scaled or not rt.probe.image_features_divided:
        return [_warn("text-embedding", "LeRobot 0.5 multiplies text and image features by sqrt(hidden) itself and "
                      "this transformers already scales (double scaling)", "transformers <= 5.3 with LeRobot 0.5", fix)]
    return [Finding("ok", "text-embedding", "transformers <= 5.3 semantics, as LeRobot 0.5 expects")]


@probe("rope-inv-freq-fp32")
def _rope_inv_freq(rt: Runtime, fix: Fix) -> list[Finding]:
    if not rt.probe.inv_freq_fp32_after_bf16:
        return [_warn("rope-inv-freq", "RoPE inv_freq is rounded to bf16 by LeRobot's bf16 cast (phase error grows "
                      "with position)", "fp32 inv_freq", fix)]
    return [Finding("ok", "rope-inv-freq", "inv_freq stays fp32 after a bf16 cast")]


@probe("siglip-flat-keys")
def _siglip_keys(rt: Runtime, fix: Fix) -> list[Finding]:
    tv, runtime_flat = rt.probe.transformers, rt.probe.siglip_flat_keys
    if rt.out_flat is None:
        return [Finding("error", "siglip-keys", "OUT/model.safetensors has no vision tower keys", "SigLIP weights",
                        "convert the checkpoint again")]
    name = {True: "flat (no 'vision_model.', transformers >= 5.6)", False: "'vision_tower.vision_model.' (<= 5.5)"}
    if rt.out_flat != runtime_flat:
        return [Finding("error", "siglip-keys", f"OUT's SigLIP keys are {name[rt.out_flat]} but transformers {tv} "
                        f"expects {name[runtime_flat]}: LeRobot's loader would leave the vision tower random",
                        name[runtime_flat], f"pibridge convert CKPT OUT --transformers-version {tv} --force", fix.id)]
    return [Finding("ok", "siglip-keys", f"OUT's SigLIP keys match transformers {tv} ({name[runtime_flat]})")]


def _table_cross_check(findings: list[Finding], tv: str, lerobot: str, dtype: str) -> list[Finding]:
    """The fix table and the probes must agree; a disagreement is a pibridge bug worth a warning."""
    table = {f.id for f in matching_fixes(tv, lerobot, dtype) if f.kind == "runtime"}
    probed = {f.fix_id for f in findings if f.fix_id and f.level == "warning"}
    if table == probed:
        return []
    return [Finding("warning", "fix-table", f"configs/fixes.json lists {sorted(table)} for transformers {tv} / "
                    f"LeRobot {lerobot} / {dtype}, the probes found {sorted(probed)}", "the same set",
                    "trust the probes and report this to pibridge (the fix table needs a new row)")]


def exit_code(findings: list[Finding], strict: bool) -> int:
    if any(f.level == "error" for f in findings):
        return 1
    return 1 if strict and any(f.level == "warning" for f in findings) else 0


def command_check(out: Path, strict: bool = False, as_json: bool = False) -> int:
    """CLI entry: print the findings; returns the exit code (see the module docstring)."""
    findings = check_runtime(out)
    if as_json:
        print(json.dumps([f.__dict__ for f in findings], indent=2))
    else:
        _print_findings(out, findings)
    return exit_code(findings, strict)


def _print_findings(out: Path, findings: list[Finding]) -> None:
    from rich.console import Console

    c = Console(highlight=False, soft_wrap=True)
    style = {"ok": "[green]ok[/]     ", "warning": "[yellow]warning[/]", "error": "[red]error[/]  "}
    for f in findings:
        c.print(f"{style[f.level]} {f.topic}: {f.found}")
        if f.level != "ok" and f.fix:
            c.print(f"         what to do: {f.fix}")
    bad = [f for f in findings if f.level != "ok"]
    c.print(f"{out}: " + ("runtime OK for this policy" if not bad else f"{len(bad)} problem(s)"))


# --- pibridge fixes -----------------------------------------------------------------------------------------

def command_fixes(transformers: str | None = None, lerobot: str | None = None, dtype: str | None = None,
                  as_json: bool = False) -> list[Fix]:
    """CLI entry: print the fix-table rows that apply to the given runtime (unset filters match every row)."""
    rows = matching_fixes(transformers, lerobot, dtype)
    if as_json:
        print(json.dumps([f.__dict__ for f in rows], indent=2))
        return rows
    from rich.console import Console
    from rich.table import Table

    title = ", ".join(f"{k} {v}" for k, v in (("transformers", transformers), ("LeRobot", lerobot),
                                               ("dtype", dtype)) if v) or "every runtime"
    t = Table(title=f"fixes for {title}")
    for col in ("id", "kind", "transformers", "LeRobot", "dtype", "function"):
        t.add_column(col, no_wrap=True)
    for f in rows:
        t.add_row(f.id, f.kind, f.transformers, f.lerobot, ",".join(f.runtime_dtypes), f.function or "-")
    c = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
    c.print(t)
    for f in rows:
        c.print(f"[bold]{f.id}[/]: {f.defect}\n  check: {f.check}")
    if not rows:
        print("no fix applies to this runtime")
    return rows


__all__ = ["Finding", "PROBES", "Probe", "Runtime", "check_runtime", "command_check", "command_fixes", "exit_code",
           "probe", "probe_runtime"]
