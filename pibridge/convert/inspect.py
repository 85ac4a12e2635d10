"""`pibridge inspect CKPT`: variant, sizes, leaf table and norm stats of an OpenPI checkpoint, from metadata only.

The variant is the known variant (configs/variants) whose OpenPI tree (tree.openpi_tree_shapes) has exactly
the checkpoint's leaf paths and shapes; otherwise "unknown", with the differences to the closest one.
Never decided from a path or directory name. The model family and sizes also come from detect.detect
when the tree allows (it reads them from the role leaves' shapes).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pibridge.configs import load_variant, variant_names
from pibridge.convert.lora import EXPERTS, is_lora_path, resolve_settings, split_lora
from pibridge.convert.reader import OpenPICheckpoint, open_checkpoint
from pibridge.convert.tree import openpi_tree_shapes
from pibridge.errors import PibridgeError

TreePath = tuple[str, ...]


@dataclass(frozen=True)
class VariantMatch:
    variant: str  # a known variant name, or "unknown"
    closest: str | None  # for "unknown": the variant with the fewest differences
    differences: tuple[str, ...]  # for "unknown": missing / extra / reshaped leaves against `closest`


@dataclass(frozen=True)
class Report:
    checkpoint: str
    params_dir: str
    layout: str
    variant: VariantMatch
    model: str | None  # pi0 / pi05 from detect.detect
    sizes: dict | None  # from detect.detect: widths / depths / heads
    detect_error: str | None
    n_leaves: int
    n_params: int
    stored_bytes: int
    disk_bytes: int
    dtypes: dict  # dtype -> {"leaves": n, "params": n}
    leaves: list  # [{"path", "shape", "dtype", "bytes", "chunks"}]
    norm_stats: list  # [{"asset_id", "keys": {key: {"dim", "fields"}}} | {"asset_id", "error"}]
    synth: dict | None
    suggestions: list = ()  # per asset: {"asset_id", "state", "actions", "profiles", "command"} (assets.py)
    lora: dict | None = None  # LoRA factors: experts, rank per expert / kind, the scaling convert would assume


def match_variant(shapes: dict[TreePath, tuple[int, ...]]) -> VariantMatch:
    """Exact match against every known variant's tree; otherwise the closest one and the differences."""
    best: tuple[int, str, list[str]] | None = None
    for name in variant_names():
        diffs = tree_differences(shapes, openpi_tree_shapes(load_variant(name)))
        if not diffs:
            return VariantMatch(name, None, ())
        if best is None or len(diffs) < best[0]:
            best = (len(diffs), name, diffs)
    assert best is not None
    return VariantMatch("unknown", best[1], tuple(best[2]))


def tree_differences(found: dict[TreePath, tuple[int, ...]], expected: dict[TreePath, tuple[int, ...]]) -> list[str]:
    out = [f"missing {'/'.join(p)} {s}" for p, s in expected.items() if p not in found]
    out += [f"extra {'/'.join(p)} {s}" for p, s in found.items() if p not in expected]
    out += [f"shape {'/'.join(p)} {tuple(found[p])} (expected {s})" for p, s in expected.items()
            if p in found and tuple(found[p]) != s]
    return out


def inspect_checkpoint(ckpt: Path | str) -> Report:
    ck = open_checkpoint(ckpt)
    shapes = {p: i.shape for p, i in ck.leaves.items()}
    model, sizes, derr = _detect(shapes)
    lora = _lora_summary(shapes)
    dtypes: dict[str, dict[str, int]] = {}
    for info in ck.leaves.values():
        d = dtypes.setdefault(info.dtype, {"leaves": 0, "params": 0})
        d["leaves"] += 1
        d["params"] += math.prod(info.shape)
    leaves = [{"path": "/".join(p), "shape": list(i.shape), "dtype": i.dtype, "bytes": i.nbytes, "chunks": list(i.chunks)}
              for p, i in ck.leaves.items()]
    base = {p: s for p, s in shapes.items() if not is_lora_path(p)} if lora else shapes
    return Report(str(ck.root), str(ck.params_dir), ck.layout, match_variant(base), model, sizes, derr,
                  len(leaves), ck.n_params, sum(i.nbytes for i in ck.leaves.values()), _disk_bytes(ck.params_dir),
                  dtypes, leaves, _norm_stats_summary(ck), ck.synth_record, _suggestions(ck, model), lora)


def _suggestions(ck: OpenPICheckpoint, model: str | None) -> list[dict]:
    """Per readable asset: its meaningful dims, the shipped profiles that fit (the one naming this asset id
    first) and the convert command to start from."""
    from pibridge.convert.assets import fitting_profiles, widths
    from pibridge.convert.profile import load_profile

    if model is None:
        return []
    out = []
    for asset_id in ck.asset_ids:
        try:
            found = widths(ck.norm_stats(asset_id))
        except PibridgeError:
            continue
        names = sorted(fitting_profiles(model, found), key=lambda n: load_profile(n).asset_id != asset_id)
        cmd = None
        if names:
            p = load_profile(names[0])
            slots = [c.slot for c in p.cameras or () if not c.empty]
            cmd = (f"pibridge convert {ck.root} OUT --profile {p.name}"
                   + (f" --asset-id {asset_id}" if p.asset_id != asset_id and len(ck.asset_ids) > 1 else "")
                   + (" --camera-map " + ",".join(f"{s}=NAME" for s in slots) if slots else ""))
        out.append({"asset_id": asset_id, **found, "profiles": names, "command": cmd})
    return out



def _lora_summary(shapes) -> dict | None:
    """Ranks per expert and kind, the adapted experts, and the scaling `convert` assumes without flags."""
    try:
        _, tree = split_lora(shapes)
    except PibridgeError:
        return None  # detect_error says why
    if tree is None:
        return None
    ranks = {f"{EXPERTS[e]}/{k}": r for (e, k), r in sorted(tree.ranks().items())}
    try:
        assumed = {f"{EXPERTS[e]}/{k}": v.to_dict() for (e, k), v in sorted(resolve_settings(tree).items())}
        note = "OpenPI's variant for the rank; alpha / rsLoRA are not in the checkpoint: pass --lora-alpha / " \
               "--lora-rslora to convert if the training config differs"
    except PibridgeError as err:
        assumed, note = None, err.found + ": convert needs --lora-alpha"
    return {"experts": list(tree.experts), "ranks": ranks, "factor_leaves": len(tree.factor_leaves()),
            "scaling_assumed": assumed, "note": note}


def _detect(shapes) -> tuple[str | None, dict | None, str | None]:
    try:
        from pibridge.convert.detect import detect

        found = detect(shapes)
    except PibridgeError as err:
        return None, None, err.found
    v = found.variant
    sizes = {"variant": v.name, "paligemma": asdict(v.paligemma), "action_expert": asdict(v.action_expert),
             "siglip": asdict(v.siglip), "vocab_size": v.vocab_size, "action_dim": v.action_dim}
    return found.model, sizes, None


def _disk_bytes(directory: Path) -> int:
    total = 0
    for base, _, files in os.walk(directory):
        total += sum(os.path.getsize(os.path.join(base, f)) for f in files)
    return total


def _norm_stats_summary(ck: OpenPICheckpoint) -> list[dict]:
    out = []
    for asset_id in ck.asset_ids:
        try:
            stats = ck.norm_stats(asset_id)
        except PibridgeError as err:
            out.append({"asset_id": asset_id, "error": err.found})
            continue
        keys = {k: {"dim": s.dim, "fields": [f for f in ("mean", "std", "q01", "q99") if getattr(s, f) is not None]}
                for k, s in stats.items()}
        out.append({"asset_id": asset_id, "keys": keys})
    return out


def inspect_command(ckpt: Path, *, as_json: bool, show_leaves: bool) -> Report | dict:
    if (Path(ckpt) / "pibridge.json").is_file() and not (Path(ckpt) / "params").exists():
        return _inspect_output(Path(ckpt), as_json)
    report = inspect_checkpoint(ckpt)
    if as_json:
        doc = asdict(report)
        if not show_leaves:
            doc.pop("leaves")
        print(json.dumps(doc, indent=2))
    else:
        _print_rich(report, show_leaves)
    return report


def _print_rich(r: Report, show_leaves: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(highlight=False, soft_wrap=True)
    if not c.is_terminal:  # piped: do not truncate leaf paths to 80 columns
        c = Console(highlight=False, soft_wrap=True, width=160)
    c.print(f"[bold]{r.checkpoint}[/]  ({r.layout} layout, params in {r.params_dir})")
    if r.variant.variant != "unknown":
        c.print(f"variant: [bold green]{r.variant.variant}[/]" + (f"  model {r.model}" if r.model else ""))
    else:
        c.print(f"variant: [bold red]unknown[/] ({len(r.variant.differences)} differences to {r.variant.closest}"
                + (f"; detected model {r.model}, sizes {r.sizes['variant']}" if r.model else "") + ")")
        for line in r.variant.differences[:20]:
            c.print(f"  {line}")
        if len(r.variant.differences) > 20:
            c.print(f"  ... and {len(r.variant.differences) - 20} more (--json lists all)")
    if r.detect_error:
        c.print(f"detect: {r.detect_error}")
    if r.lora:
        c.print(f"LoRA on {', '.join(r.lora['experts'])}: {r.lora['factor_leaves']} factor leaves; ranks "
                + ", ".join(f"{k} {v}" for k, v in r.lora["ranks"].items()))
        for k, v in (r.lora["scaling_assumed"] or {}).items():
            c.print(f"  {k}: alpha {v['alpha']:g}{' rsLoRA' if v['rslora'] else ''} -> scaling "
                    + (f"{v['scaling']:g}" if k.endswith("attn") else "none (lora.FeedForward)") + f" ({v['source']})")
        c.print(f"  {r.lora['note']}")
    dt = ", ".join(f"{k} ({v['leaves']} leaves, {v['params']:,} params)" for k, v in r.dtypes.items())
    c.print(f"{r.n_leaves} leaves, {r.n_params:,} params; stored {r.stored_bytes / 1e9:.3f} GB, "
            f"on disk {r.disk_bytes / 1e9:.3f} GB; dtypes: {dt}")
    if show_leaves:
        t = Table(box=None, pad_edge=False)
        t.add_column("path", no_wrap=True)
        for name in ("shape", "dtype", "bytes"):
            t.add_column(name, justify="right" if name == "bytes" else "left")
        for leaf in r.leaves:
            t.add_row(leaf["path"], str(tuple(leaf["shape"])), leaf["dtype"], f"{leaf['bytes']:,}")
        c.print(t)
    _print_norm_stats(c, r.norm_stats)
    for sug in r.suggestions:
        dims = f"state {sug.get('state')}, actions {sug.get('actions')}"
        if not sug["profiles"]:
            c.print(f"profile for asset {sug['asset_id']} ({dims}): no shipped {r.model} profile fits; "
                    f"use --profile {r.model}_base with --state-dim / --action-dim / --camera-map")
            continue
        c.print(f"profile for asset {sug['asset_id']} ({dims}): {', '.join(sug['profiles'])}")
        c.print(f"  {sug['command']}    (NAME: your dataset's observation.images.<NAME>)", markup=False)
    if r.synth:
        s = r.synth
        c.print(f"synthetic (pibridge synth): {s.get('variant')} seed {s.get('seed')} {s.get('dtype')}, "
                f"fingerprint {s.get('fingerprint')}")


def _print_norm_stats(c, entries: list[dict]) -> None:
    if not entries:
        c.print("norm stats: none (no assets/<asset_id>/norm_stats.json)")
    for e in entries:
        if "error" in e:
            c.print(f"norm stats {e['asset_id']}: [red]{e['error']}[/]")
            continue
        keys = ", ".join(f"{k} dim {v['dim']} ({'/'.join(v['fields'])})" for k, v in e["keys"].items())
        c.print(f"norm stats {e['asset_id']}: {keys}")


def describe_output(out: Path) -> dict:
    """An OUT written by `pibridge convert`: what its pibridge.json records, and which listed files are missing
    or have another size now (sizes only: metadata, no hashing)."""
    from pibridge.provenance import load_provenance

    rec = load_provenance(out)
    files = rec.get("files") or []
    missing = [f["name"] for f in files if not (out / f["name"]).is_file()]
    resized = [f["name"] for f in files if (out / f["name"]).is_file() and (out / f["name"]).stat().st_size != f["size"]]
    src = rec.get("source", {})
    return {"kind": "pibridge output", "path": str(out), "model": rec.get("model"), "variant": rec.get("variant"),
            "profile": (rec.get("profile") or {}).get("name"), "camera_names": rec.get("camera_names"),
            "empty_slots": rec.get("empty_slots"), "source": {k: src.get(k) for k in ("path", "fingerprint", "asset")},
            "target": rec.get("target"), "runtime_fixes_needed": rec.get("runtime_fixes_needed"),
            "files": len(files), "files_missing": missing, "files_resized": resized,
            "pibridge_version": rec.get("pibridge_version")}


def _inspect_output(out: Path, as_json: bool) -> dict:
    d = describe_output(out)
    if as_json:
        print(json.dumps(d, indent=2))
        return d
    from rich.console import Console

    c = Console(highlight=False, soft_wrap=True)
    t, src = d["target"] or {}, d["source"]
    asset = src.get("asset") or {}
    c.print(f"[bold]{out}[/]: a LeRobot policy directory written by pibridge {d['pibridge_version']} (not a checkpoint)")
    c.print(f"{d['model']} ({d['variant']}), profile {d['profile']}, cameras {d['camera_names']}, empty {d['empty_slots']}")
    c.print(f"target LeRobot {t.get('lerobot_version')} / transformers {t.get('transformers_version')}, weights "
            f"{t.get('weights_dtype')}, runtime {t.get('runtime_dtype')}; runtime fixes needed: "
            f"{', '.join(d['runtime_fixes_needed'] or []) or 'none'}")
    c.print(f"source {src.get('path')}, params fingerprint {src.get('fingerprint')}, norm stats asset "
            f"{asset.get('id', '?')} ({asset.get('norm_stats_sha256', 'not recorded')})")
    state = ("all present with their recorded sizes" if not (d["files_missing"] or d["files_resized"]) else
             f"missing {d['files_missing']}, size changed {d['files_resized']}")
    c.print(f"{d['files']} files listed: {state}")
    c.print(f"next: pibridge check {out}    pibridge parity run --openpi {src.get('path')} --lerobot {out}", markup=False)
    return d
