"""Loading OUT in the real LeRobot, verified: `from_pretrained` (then pibridge checks that every tensor of
OUT/model.safetensors landed in the state dict: LeRobot only prints a warning) and the pre/post-processors loaded
from OUT by `lerobot.policies.factory.make_pre_post_processors` (tokenizer included). Runs in a LeRobot
environment; LeRobot and torch are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pibridge.errors import PibridgeError
from pibridge.provenance import load_provenance


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


def make_processors(policy, out_dir: Path):
    """LeRobot's own factory, as lerobot-eval / lerobot-record load processors of a pretrained policy."""
    from lerobot.policies.factory import make_pre_post_processors

    over = {"device_processor": {"device": "cpu"}}
    return make_pre_post_processors(policy.config, pretrained_path=str(out_dir), preprocessor_overrides=over,
                                    postprocessor_overrides=over)


def mmap_load_file() -> None:
    """Replace safetensors.torch.load_file, which LeRobot's from_pretrained imports at call time
    (lerobot 0.5.1 / 0.6.1 policies/pi0*/modeling_pi0*.py from_pretrained), with a copy-on-write mapping of the
    file. LeRobot's own key fixing, remapping and load_state_dict run unchanged on the same tensors."""
    import safetensors.torch

    from pibridge.parity.stacks.common import mmap_safetensors

    keep = []  # the mappings must outlive the returned tensors

    def load_file(filename, device="cpu"):
        mapped = mmap_safetensors(Path(filename))
        keep.append(mapped)
        return dict(mapped.tensors) if str(device) == "cpu" else {k: v.to(device) for k, v in mapped.tensors.items()}

    safetensors.torch.load_file = load_file


def load_only(out_dir: Path) -> dict:
    """The real from_pretrained plus pibridge's load check, nothing run: timings and key counts (bench)."""
    t0 = time.perf_counter()
    policy, check = load_policy(out_dir, load_provenance(out_dir)["model"])
    return {"out": str(out_dir), "versions": versions(), "load_keys": check.keys, "missing": len(check.missing),
            "unexpected": len(check.unexpected), "wrong_shape": len(check.wrong_shape),
            "wrong_value": len(check.wrong_value), "state_dict_keys": len(policy.state_dict()),
            "dtype": policy.config.dtype, "load_s": round(time.perf_counter() - t0, 1)}
