"""Issue 15 units: what convert may replace (pibridge.convert.guard) and which norm stats fit a profile
(pibridge.convert.assets). The CLI cases (exit 2, nothing changed) are rows of tests/reliability/cases.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pibridge.convert.assets import fitting_profiles, meaningful_dim
from pibridge.convert.guard import HASH, check_no_overlap, check_replaceable, file_list
from pibridge.convert.normstats import NormStats
from pibridge.errors import PibridgeError


def _own(out: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    (out / "pibridge.json").write_text(json.dumps({"files": file_list(out)}))
    return out


def test_replaceable_only_when_every_entry_is_listed_and_unmodified(tmp_path):
    (tmp_path / "out").mkdir()
    out = _own(tmp_path / "out", {"config.json": b"{}", "tokenizer/tokenizer.model": b"spm"})
    check_replaceable(out)  # positive control
    (out / "tokenizer" / "extra").write_bytes(b"x")
    with pytest.raises(PibridgeError, match="tokenizer/extra, which was not written"):
        check_replaceable(out)
    (out / "tokenizer" / "extra").unlink()
    (out / "config.json").write_bytes(b"[]")  # same size, other bytes
    with pytest.raises(PibridgeError, match=f"same size, {HASH} differs"):
        check_replaceable(out)


def test_overlap_found_through_symlinks_and_dotdot(tmp_path):
    ck = tmp_path / "exp" / "2000"
    (ck / "params").mkdir(parents=True)
    (tmp_path / "lnk").symlink_to(tmp_path / "exp")
    for out in (tmp_path / "exp", tmp_path / "lnk", ck / "..", tmp_path, Path("/")):
        with pytest.raises(PibridgeError, match="contains the checkpoint"):
            check_no_overlap(out, [("checkpoint", ck)])
    for out in (ck, ck / "params" / "new", tmp_path / "lnk" / "2000" / "x"):
        with pytest.raises(PibridgeError, match="checkpoint"):
            check_no_overlap(out, [("checkpoint", ck)])
    check_no_overlap(tmp_path / "exp" / "2000-lerobot", [("checkpoint", ck)])  # sibling: fine


def test_overlap_found_through_a_bind_mount(tmp_path):
    """A bind mount shows one directory under two paths: only (st_dev, st_ino) tells them apart."""
    ck = tmp_path / "data" / "2000"
    (ck / "params").mkdir(parents=True)
    view = tmp_path / "view"
    view.mkdir()
    if subprocess.run(["mount", "--bind", str(tmp_path / "data"), str(view)], capture_output=True).returncode:
        pytest.skip("bind mounts need CAP_SYS_ADMIN")
    try:
        assert os.path.realpath(view) != os.path.realpath(tmp_path / "data")
        with pytest.raises(PibridgeError, match="contains the checkpoint"):
            check_no_overlap(view, [("checkpoint", ck)])
        with pytest.raises(PibridgeError, match="is inside the checkpoint"):
            check_no_overlap(view / "2000" / "out", [("checkpoint", ck)])
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_meaningful_dim_ignores_trailing_zero_padding_only():
    v = np.r_[np.arange(1.0, 9.0), np.zeros(24)]
    assert meaningful_dim(NormStats(mean=v, std=v, q01=None, q99=None)) == 8
    inner = v.copy()
    inner[3] = 0.0
    assert meaningful_dim(NormStats(mean=inner, std=inner)) == 8  # a zero inside is data
    assert meaningful_dim(NormStats(mean=np.zeros(4), std=np.r_[1.0, 1.0, 1.0, 1.0])) == 4


def test_fitting_profiles_for_aloha_and_droid_dims():
    assert {"pi05_aloha"} <= set(fitting_profiles("pi05", {"state": 14, "actions": 14}))
    assert "pi05_droid" in fitting_profiles("pi05", {"state": 8, "actions": 8})
    assert "pi05_droid" not in fitting_profiles("pi05", {"state": 14, "actions": 14})


def test_relocate_repoints_the_tokenizer_and_keeps_out_replaceable(tmp_path):
    """`python -m pibridge.convert.relocate OUT` after a move: the stored path becomes OUT's own tokenizer/, and the
    file list follows, so `convert --force` still recognises OUT as pibridge's."""
    import sys

    out = tmp_path / "moved"
    (out / "tokenizer").mkdir(parents=True)
    steps = [{"registry_name": "tokenizer_processor", "config": {"tokenizer_name": "/gone/OUT/tokenizer"}}]
    _own(out, {"policy_preprocessor.json": json.dumps({"steps": steps}).encode(), "tokenizer/tokenizer.model": b"m"})
    p = subprocess.run([sys.executable, "-m", "pibridge.convert.relocate", str(out)], capture_output=True, text=True)
    assert p.returncode == 0 and "/gone/OUT/tokenizer ->" in p.stdout, p.stderr
    doc = json.loads((out / "policy_preprocessor.json").read_text())
    assert doc["steps"][0]["config"]["tokenizer_name"] == str((out / "tokenizer").resolve())
    check_replaceable(out)
    again = subprocess.run([sys.executable, "-m", "pibridge.convert.relocate", str(out)], capture_output=True, text=True)
    assert again.returncode == 0 and "already points" in again.stdout
    bad = subprocess.run([sys.executable, "-m", "pibridge.convert.relocate", str(tmp_path)], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("pibridge: error:")
