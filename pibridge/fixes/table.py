"""The fix table (configs/fixes.json) as data: which numeric fixes a runtime (transformers x LeRobot x dtype)
needs. Pure; used by the converter (key layout), the runtime fixes, `pibridge check` and `pibridge fixes`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from pibridge.configs import CONFIG_DIR
from pibridge.errors import PibridgeError


@dataclass(frozen=True)
class Fix:
    id: str
    kind: str  # runtime | layout | fold | guard
    defect: str
    evidence: str
    transformers: str
    lerobot: str
    runtime_dtypes: tuple[str, ...]
    function: str | None
    check: str


@cache
def load_fixes() -> tuple[Fix, ...]:
    raw = json.loads((CONFIG_DIR / "fixes.json").read_text())
    return tuple(Fix(f["id"], f["kind"], f["defect"], f["evidence"], f["applies"]["transformers"],
                     f["applies"]["lerobot"], tuple(f["applies"]["runtime_dtype"]), f.get("function"), f["check"])
                 for f in raw["fixes"])


def parse_version(text: str, what: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise PibridgeError(f"{what} version {text!r} is not a version", "e.g. 5.5.4 or 0.6.1",
                            f"pass a release number for {what}") from None


def _matches(spec: str, version: Version) -> bool:
    return spec == "*" or SpecifierSet(spec).contains(version, prereleases=True)


def applicable_fixes(transformers: str, lerobot: str, runtime_dtype: str) -> list[Fix]:
    tv, lv = parse_version(transformers, "transformers"), parse_version(lerobot, "LeRobot")
    return [f for f in load_fixes() if runtime_dtype in f.runtime_dtypes
            and _matches(f.transformers, tv) and _matches(f.lerobot, lv)]


def flat_siglip_keys(transformers: str) -> bool:
    """True when SigLIP keys have no `vision_model.` level (transformers >= 5.6)."""
    return parse_version(transformers, "transformers") >= Version("5.6")


def embedding_semantics(lerobot: str) -> str:
    """'0.5': LeRobot multiplies image features and text by sqrt(hidden) itself; '0.6': relies on transformers."""
    return "0.5" if parse_version(lerobot, "LeRobot") < Version("0.6") else "0.6"


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
