"""The fix table (configs/fixes.json) as data: which numeric fixes a runtime (transformers x LeRobot x dtype)
needs, and the version facts the fixes depend on (SigLIP key layout, LeRobot embedding semantics). Pure (no
torch, no jax): used by the converter (key layout), the runtime fixes, `pibridge check` and `pibridge fixes`.
Every version threshold lives in the JSON; `load_table` is its only reader."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from pibridge.configs import CONFIG_DIR, load_transformers_support
from pibridge.errors import PibridgeError

FIXES_JSON = CONFIG_DIR / "fixes.json"
OPT_IN_KIND = "runtime-opt-in"  # applied only on request (exact_fp32=True)
RUNTIME_KINDS = ("runtime", OPT_IN_KIND)  # records carried out by a function of pibridge.fixes.runtime
GUARDED_KINDS = ("runtime", "layout")  # records `pibridge check` probes on the installed runtime
SIGLIP_FLAT_KEYS = "siglip-flat-keys"
VISION_MODEL = ".vision_tower.vision_model."  # the SigLIP key segment transformers <= 5.5 has (siglip-flat-keys)


@dataclass(frozen=True)
class Fix:
    id: str
    kind: str  # runtime | runtime-opt-in | layout
    defect: str
    evidence: str
    transformers: str
    lerobot: str
    runtime_dtypes: tuple[str, ...]
    function: str | None
    check: str
    semantics: str | None = None  # the LeRobot embedding semantics the record is about (None: any)


@dataclass(frozen=True)
class FixTable:
    fixes: tuple[Fix, ...]
    embedding_semantics: dict[str, str]  # {semantics: LeRobot specifier}, first match wins


@cache
def load_table() -> FixTable:
    raw = json.loads(FIXES_JSON.read_text())
    fixes = tuple(Fix(f["id"], f["kind"], f["defect"], f["evidence"], f["applies"]["transformers"],
                      f["applies"]["lerobot"], tuple(f["applies"]["runtime_dtype"]), f.get("function"), f["check"],
                      f.get("semantics")) for f in raw["fixes"])
    return FixTable(fixes, dict(raw["embedding_semantics"]["lerobot"]))


def load_fixes() -> tuple[Fix, ...]:
    return load_table().fixes


def fix_record(fix_id: str) -> Fix:
    found = [f for f in load_fixes() if f.id == fix_id]
    if not found:
        raise PibridgeError(f"fix {fix_id!r} is not in {FIXES_JSON}", f"one of {[f.id for f in load_fixes()]}",
                            "add the record to configs/fixes.json")
    return found[0]


def parse_version(text: str, what: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise PibridgeError(f"{what} version {text!r} is not a version", "e.g. 5.5.4 or 0.6.1",
                            f"pass a release number for {what}") from None


def release_in(spec: str, text: str, what: str) -> bool:
    """Whether the release of `text` (5.6.0.dev0 -> 5.6.0) is in the specifier set `spec` ('*' = any)."""
    return _matches(spec, Version(parse_version(text, what).base_version))


def _matches(spec: str, version: Version) -> bool:
    return spec == "*" or SpecifierSet(spec).contains(version, prereleases=True)


def applicable_fixes(transformers: str, lerobot: str, runtime_dtype: str) -> list[Fix]:
    tv, lv = parse_version(transformers, "transformers"), parse_version(lerobot, "LeRobot")
    return [f for f in load_fixes() if runtime_dtype in f.runtime_dtypes
            and _matches(f.transformers, tv) and _matches(f.lerobot, lv)]


def flat_siglip_keys(transformers: str) -> bool:
    """True when SigLIP keys have no `vision_model.` level: the transformers range of record siglip-flat-keys."""
    return release_in(fix_record(SIGLIP_FLAT_KEYS).transformers, transformers, "transformers")


def transformers_api(name: str, transformers: str) -> bool:
    """Whether release `transformers` has API shape `name` (configs/transformers_support.json "api")."""
    return release_in(load_transformers_support()["api"][name]["transformers"], transformers, "transformers")


def embedding_semantics(lerobot: str) -> str:
    """'0.5': LeRobot multiplies image features and text by sqrt(hidden) itself; '0.6': relies on transformers
    (fixes.json "embedding_semantics")."""
    ranges = load_table().embedding_semantics
    for semantics, spec in ranges.items():
        if release_in(spec, lerobot, "LeRobot"):
            return semantics
    raise PibridgeError(f"LeRobot {lerobot} has no embedding semantics in {FIXES_JSON}",
                        f"a version in one of {ranges}", "add its range to fixes.json embedding_semantics")


def matching_fixes(transformers: str | None = None, lerobot: str | None = None,
                   runtime_dtype: str | None = None) -> list[Fix]:
    """The rows of configs/fixes.json that apply to a partly given runtime: an unset filter matches every row
    (`pibridge fixes`); with all three set this equals applicable_fixes."""
    tv = parse_version(transformers, "transformers") if transformers else None
    lv = parse_version(lerobot, "LeRobot") if lerobot else None
    if runtime_dtype not in (None, "float32", "bfloat16"):
        raise PibridgeError(f"runtime dtype {runtime_dtype!r}", "float32 or bfloat16", "pass --dtype float32|bfloat16")
    return [f for f in load_fixes() if (runtime_dtype is None or runtime_dtype in f.runtime_dtypes)
            and (tv is None or _matches(f.transformers, tv)) and (lv is None or _matches(f.lerobot, lv))]
