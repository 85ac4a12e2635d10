"""Which norm stats a conversion uses, and whether they fit the profile.

The asset (assets/<asset_id>/norm_stats.json) is chosen explicitly (--asset-id), by the profile (its asset_id
exists in the checkpoint) or because it is the only one; anything else is ambiguous (reader.norm_stats).
Its meaningful dims (the stats' width without trailing padding: dims where every stat is 0, what stats over
zero-padded data give) must equal the profile's state_dim / action_dim: OpenPI slices the stats to the data
width (transforms.py:138, :143), so a wider asset means another robot, not a padded one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pibridge.convert.normstats import FIELDS, NormStats
from pibridge.convert.profile import Profile, load_profile, profile_names
from pibridge.errors import PibridgeError

KEYS = {"state": "state_dim", "actions": "action_dim"}  # norm-stats key -> profile field


@dataclass(frozen=True)
class AssetChoice:
    asset_id: str
    how: str  # "--asset-id" | "profile" | "only asset"
    path: Path
    sha256: str  # of norm_stats.json's bytes, "sha256:<hex>"
    stats: dict[str, NormStats]

    def record(self) -> dict:
        return {"id": self.asset_id, "chosen_by": self.how, "norm_stats_sha256": self.sha256}


def meaningful_dim(s: NormStats) -> int:
    """Width without trailing all-zero dims (every present stat 0 there)."""
    present = [np.asarray(getattr(s, f), np.float64) for f in FIELDS if getattr(s, f) is not None]
    zero = np.all([a == 0 for a in present], axis=0)
    n = zero.shape[-1]
    while n and zero[n - 1]:
        n -= 1
    return n


def norm_stats_hash(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def choose_asset(ckpt, profile: Profile | None, asset_id: str | None) -> AssetChoice:
    """The asset whose stats go into OUT (PibridgeError from the reader when missing or ambiguous)."""
    ids = ckpt.asset_ids
    if asset_id is not None:
        how = "--asset-id"
    elif profile is not None and profile.asset_id in ids:
        asset_id, how = profile.asset_id, "profile"
    else:
        how = "only asset"
    stats = ckpt.norm_stats(asset_id)
    asset_id = asset_id or ids[0]
    path = ckpt.root / "assets" / asset_id / "norm_stats.json"
    return AssetChoice(asset_id, how, path, norm_stats_hash(path), stats)


def widths(stats: dict[str, NormStats]) -> dict[str, int]:
    return {k: meaningful_dim(stats[k]) for k in KEYS if k in stats}


def fitting_profiles(model: str, found: dict[str, int]) -> list[str]:
    """Shipped profiles of `model` whose state / action dims equal `found`."""
    out = []
    for name in profile_names():
        p = load_profile(name)
        if p.model == model and all(getattr(p, KEYS[k]) == w for k, w in found.items()):
            out.append(name)
    return out


def check_fit(choice: AssetChoice, profile: Profile) -> None:
    """The asset's meaningful dims equal the profile's state_dim / action_dim, else one message naming both."""
    found = widths(choice.stats)
    want = {k: getattr(profile, f) for k, f in KEYS.items()}
    if all(found.get(k, want[k]) == want[k] for k in KEYS):
        return
    fits = fitting_profiles(profile.model, found)
    flags = " ".join(f"--{KEYS[k].replace('_', '-')} {w}" for k, w in found.items())
    raise PibridgeError(
        f"norm stats `state` have width {found.get('state')} and `actions` width {found.get('actions')} "
        f"(asset {choice.asset_id!r}, chosen by {choice.how}; trailing zero padding not counted), but profile "
        f"{profile.name!r} has state_dim {want['state']} and action_dim {want['actions']}",
        "norm stats of the robot the profile describes (OpenPI slices the stats to the data width)",
        (f"shipped {profile.model} profiles that fit this asset: {', '.join(fits)}; pass --profile one of them"
         if fits else f"no shipped {profile.model} profile fits this asset")
        + f", or --asset-id with the asset of this robot, or override the dims ({flags}) if the profile is right")
