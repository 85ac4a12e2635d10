"""`pibridge check OUT` (the guard of DESIGN "Fixes") and `pibridge fixes` (the fix table, filtered).

check_runtime(OUT) reads OUT's provenance (the LeRobot / transformers / dtype it was converted for), then
PROBES the installed runtime on tiny modules built with the installed transformers classes (no download, no
weights): whether embed_tokens already scales by sqrt(hidden), whether get_image_features divides, which
SigLIP key layout the vision tower has (against OUT's model.safetensors keys), whether RoPE inv_freq stays
fp32 after a `.to(bfloat16)`. Each probe is compared with what the target LeRobot version's code expects
(LeRobot 0.6: transformers >= 5.4 semantics; 0.5: it scales by itself) and turned into findings that say
what is wrong and which runtime fix (pibridge.parity.runtime_fixes) repairs it.

Exit codes (command_check): 0 when nothing is wrong or only warnings (problems a runtime fix repairs, a
runtime other than the target) -- the policy is usable with `apply_runtime_fixes`; 1 with --strict on any
warning, and always on an error (a problem no runtime fix repairs: OUT's SigLIP keys do not match the
installed release, so LeRobot's loader leaves the vision tower random); 2 on bad input (PibridgeError).
Torch side: never imports jax.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pibridge.convert.fixtable import Fix, embedding_semantics, flat_siglip_keys, matching_fixes
from pibridge.errors import PibridgeError

VISION_MODEL = ".vision_tower.vision_model."


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warning | error
    topic: str  # versions | text-embedding | image-features | rope-inv-freq | siglip-keys
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


def _tiny_variant():
    from dataclasses import replace

    from pibridge.configs import GemmaSize, load_variant

    base = load_variant("tiny-pi05")
    g = GemmaSize("probe", 36, 1, 48, 2, 1, 18)  # width 36: sqrt(36) = 6, a factor no rounding can hide
    return replace(base, paligemma=g, action_expert=g, vocab_size=32)


def probe_runtime() -> Probe:
    """Build a tiny PaliGemma with the installed transformers (random init, CPU) and measure its behaviour."""
    import torch

    from pibridge.parity.torch_stack import compat
    from pibridge.parity.torch_stack.model import _paligemma_config

    torch.manual_seed(0)
    with torch.no_grad():
        from transformers import PaliGemmaForConditionalGeneration

        v = _tiny_variant()
        pg = PaliGemmaForConditionalGeneration(_paligemma_config(v)).eval()
        emb = pg.model.language_model.embed_tokens
        ids = torch.arange(5)[None]
        scaled = torch.allclose(emb(ids), emb.weight[ids] * math.sqrt(v.paligemma.width), rtol=1e-3)
        pixels = torch.rand(1, 3, v.siglip.image_size, v.siglip.image_size)
        direct = pg.model.multi_modal_projector(pg.model.vision_tower(pixels).last_hidden_state)
        divided = not torch.allclose(compat.image_features(pg.model, pixels), direct, rtol=1e-4, atol=1e-6)
        flat = not any(VISION_MODEL in "." + k for k in pg.state_dict())
        rotary = pg.model.language_model.rotary_emb.to(torch.bfloat16)
        fp32 = rotary.inv_freq.dtype == torch.float32
    return Probe(compat.transformers_version(), scaled, divided, flat, fp32)


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
    from pibridge.convert.convert import load_provenance

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
    findings += _embedding_findings(probe, embedding_semantics(lr), target["runtime_dtype"])
    findings += _layout_findings(out_vision_layout(Path(out_dir)), probe.siglip_flat_keys, probe.transformers)
    findings += _table_cross_check(findings, probe.transformers, lr, target["runtime_dtype"])
    return findings


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


def _embedding_findings(p: Probe, semantics: str, dtype: str) -> list[Finding]:
    out = []
    fix = "after from_pretrained: pibridge.parity.runtime_fixes.apply_runtime_fixes(policy, runtime_dtype=...)"
    if semantics == "0.6":
        out.append(Finding("warning", "text-embedding", "embed_tokens returns unscaled rows (transformers <= 5.3); "
                           "LeRobot 0.6 does not scale them", "rows scaled by sqrt(hidden)", fix + " "
                           "(scale_text_embeddings)", "text-embedding-scaled") if not p.text_embedding_scaled else
                   Finding("ok", "text-embedding", "embed_tokens scales by sqrt(hidden), as LeRobot 0.6 expects"))
        out.append(Finding("warning", "image-features", "get_image_features divides by sqrt(hidden) (transformers <= "
                           "5.3); LeRobot 0.6 does not multiply back", "undivided image features", fix +
                           " (bypass_image_feature_division)", "image-features-undivided") if p.image_features_divided
                   else Finding("ok", "image-features", "get_image_features is undivided, as LeRobot 0.6 expects"))
    elif p.text_embedding_scaled or not p.image_features_divided:
        out.append(Finding("warning", "text-embedding", "LeRobot 0.5 multiplies text and image features by "
                           "sqrt(hidden) itself and this transformers already scales (double scaling)",
                           "transformers <= 5.3 with LeRobot 0.5", fix + " (undo_double_scaling)",
                           "double-scaling-lerobot-0.5"))
    else:
        out.append(Finding("ok", "text-embedding", "transformers <= 5.3 semantics, as LeRobot 0.5 expects"))
    if dtype == "bfloat16" and not p.inv_freq_fp32_after_bf16:
        out.append(Finding("warning", "rope-inv-freq", "RoPE inv_freq is rounded to bf16 by LeRobot's bf16 cast "
                           "(phase error grows with position)", "fp32 inv_freq", fix + " (restore_rope_inv_freq)",
                           "rope-inv-freq-fp32"))
    elif dtype == "bfloat16":
        out.append(Finding("ok", "rope-inv-freq", "inv_freq stays fp32 after a bf16 cast"))
    return out


def _layout_findings(out_flat: bool | None, runtime_flat: bool, tv: str) -> list[Finding]:
    if out_flat is None:
        return [Finding("error", "siglip-keys", "OUT/model.safetensors has no vision tower keys", "SigLIP weights",
                        "convert the checkpoint again")]
    name = {True: "flat (no 'vision_model.', transformers >= 5.6)", False: "'vision_tower.vision_model.' (<= 5.5)"}
    if out_flat != runtime_flat:
        return [Finding("error", "siglip-keys", f"OUT's SigLIP keys are {name[out_flat]} but transformers {tv} "
                        f"expects {name[runtime_flat]}: LeRobot's loader would leave the vision tower random",
                        name[runtime_flat], f"pibridge convert CKPT OUT --transformers-version {tv} --force",
                        "siglip-flat-keys")]
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


__all__ = ["Finding", "Probe", "check_runtime", "command_check", "command_fixes", "exit_code", "flat_siglip_keys",
           "probe_runtime"]
