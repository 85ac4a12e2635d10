"""Issue 15, OUT travels: a copied or moved OUT loaded by the real LeRobot (0.6.1, 0.5.1) from another working
directory, with and without the pibridge plugin, and without pibridge at all (.venvs/lr-0.6.1-bare: lerobot[pi]
only); a bare `PI05Policy.from_pretrained` of a bf16 OUT reached by the plugin's interpreter-start hook.

The worktree's plugin and pibridge go first on the LeRobot venvs' path (PYTHONPATH), so the code under test is
this checkout's. Each LeRobot run is one subprocess that checks every directory at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "lerobot"))
import harness as h  # noqa: E402

from pibridge.convert.convert import ConvertRequest, convert  # noqa: E402
from pibridge.convert.relocate import relocate  # noqa: E402

pytestmark = pytest.mark.timeout(900)
PLUGIN_SRC = h.ROOT / "plugins" / "lerobot_policy_pibridge"
CHECK = Path(h.__file__).with_name("travel_check.py")


def _env(with_checkout: bool = True) -> dict:
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"}
    return env | ({"PYTHONPATH": f"{PLUGIN_SRC}:{h.ROOT}"} if with_checkout else {})


def _convert(out: Path, lerobot: str, ck: Path, runtime: str = "float32") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    convert(ConvertRequest(ckpt=ck, out=out, profile="pi05_droid", camera_map="base_0_rgb=top,left_wrist_0_rgb=wrist",
                           lerobot_version=lerobot, runtime_dtype=runtime, tokenizer=h.TOKENIZER, allow_tiny=True))
    return out


@pytest.fixture(scope="module")
def travelled(tmp_path_factory):
    """Per LeRobot release: OUT in place, a copy (source kept), a moved OUT, a moved OUT after relocate."""
    root = tmp_path_factory.mktemp("travel")
    ck = h.make_ckpt(root, "pi05")
    outs = {}
    for lr in ("0.6.1", "0.5.1"):  # 0.5.1's OUTs: 4 s, built even when its (slow) test is deselected
        d = root / lr
        src = _convert(d / "src" / "OUT", lr, ck)
        shutil.copytree(src, d / "copy" / "OUT")
        _convert(d / "first" / "OUT", lr, ck)
        (d / "moved").mkdir()
        shutil.move(d / "first" / "OUT", d / "moved" / "OUT")
        shutil.copytree(d / "moved" / "OUT", d / "relocated" / "OUT")
        relocate(d / "relocated" / "OUT")
        outs[lr] = {k: d / k / "OUT" for k in ("src", "copy", "moved", "relocated")}
    (root / "elsewhere").mkdir()
    return root, outs


def _load_all(py: Path, outs: dict, cwd: Path, with_checkout: bool = True) -> tuple[dict, dict]:
    """({name: result} as LeRobot alone loads them, the same after register_third_party_plugins())."""
    p = subprocess.run([str(py), str(CHECK), *map(str, outs.values())], capture_output=True, text=True, cwd=cwd,
                       env=_env(with_checkout), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    by = {(r["mode"], r["out"]): r for r in rows}
    return tuple({k: by[(mode, str(v))] for k, v in outs.items()} for mode in ("lerobot", "plugins registered"))


def _own(r: dict, out: Path) -> bool:
    return r["ok"] and Path(r["tokenizer"]).resolve() == (out / "tokenizer").resolve()


def _assert_without_plugin(r: dict, outs: dict) -> None:
    assert _own(r["src"], outs["src"]) and _own(r["relocated"], outs["relocated"])
    assert r["copy"]["ok"] and Path(r["copy"]["tokenizer"]) == outs["src"] / "tokenizer"  # LeRobot: the source's
    assert not r["moved"]["ok"] and "tokenizer_processor" in r["moved"]["error"]  # loud, never silently different


@pytest.mark.parametrize("lerobot", ["0.6.1", pytest.param("0.5.1", marks=pytest.mark.slow)])
def test_copied_and_moved_out_load_from_another_cwd(travelled, lerobot):
    root, outs = travelled
    py = h.venv_python(f"lr-{lerobot}")
    bare, plug = _load_all(py, outs[lerobot], root / "elsewhere")
    _assert_without_plugin(bare, outs[lerobot])
    assert all(_own(plug[k], outs[lerobot][k]) for k in outs[lerobot]), plug  # copy and move: OUT's own tokenizer
    assert {r["device"] for r in plug.values()} == {"cpu"}  # as written; LeRobot's scripts override it (README)


def test_without_pibridge_at_all(travelled):
    """lerobot[pi]==0.6.1 alone (.venvs/lr-0.6.1-bare, tools/lerobot_env.sh): same as LeRobot without the plugin;
    there is no plugin to register."""
    root, outs = travelled
    py = h.venv_python("lr-0.6.1-bare")
    gone = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('pibridge'), "
                           "u.find_spec('lerobot_policy_pibridge'))"], capture_output=True, text=True, env=_env(False),
                          cwd=root / "elsewhere")
    assert gone.stdout.split() == ["None", "None"], gone.stdout + gone.stderr
    bare, registered = _load_all(py, outs["0.6.1"], root / "elsewhere", with_checkout=False)
    _assert_without_plugin(bare, outs["0.6.1"])
    _assert_without_plugin(registered, outs["0.6.1"])


def test_out_needing_runtime_fixes_refuses_to_load_without_the_plugin(travelled):
    """A bf16 OUT for LeRobot 0.6.1 needs runtime fixes (rope-inv-freq-fp32): its preprocessor starts with pibridge's
    marker step, so LeRobot without pibridge fails to build its processors, naming the plugin, instead of running the
    policy unfixed; with the plugin it loads. A float32 OUT (no fixes needed) carries no marker and loads anywhere."""
    root, _ = travelled
    ck = h.make_ckpt(root, "pi05")
    outs = {"bf16": _convert(root / "marker" / "bf16" / "OUT", "0.6.1", ck, runtime="bfloat16"),
            "f32": _convert(root / "marker" / "f32" / "OUT", "0.6.1", ck)}
    steps = {k: [s.get("class", s.get("registry_name")) for s in
                 json.loads((v / "policy_preprocessor.json").read_text())["steps"]] for k, v in outs.items()}
    assert "lerobot_policy_pibridge.steps.RuntimeFixesRequiredStep" in steps["bf16"]
    assert not any("RuntimeFixesRequired" in str(s) for s in steps["f32"])
    bare, _ = _load_all(h.venv_python("lr-0.6.1-bare"), outs, root / "elsewhere", with_checkout=False)
    assert not bare["bf16"]["ok"] and "lerobot_policy_pibridge" in bare["bf16"]["error"], bare["bf16"]
    assert bare["f32"]["ok"], bare["f32"]
    plug, registered = _load_all(h.venv_python("lr-0.6.1"), outs, root / "elsewhere")
    assert plug["bf16"]["ok"] and registered["bf16"]["ok"], (plug, registered)


def test_bare_from_pretrained_gets_fixes_through_the_startup_hook(travelled, tmp_path):
    """A script calling PI05Policy.from_pretrained(OUT) itself: no LeRobot script, no plugin registration. With the
    plugin's .pth hook processed at interpreter start, the bf16 OUT gets its runtime fixes; without it none."""
    root, _ = travelled
    py = h.venv_python("lr-0.6.1")
    out = _convert(root / "bf16" / "OUT", "0.6.1", h.make_ckpt(root, "pi05"), runtime="bfloat16")
    sys.path.insert(0, str(PLUGIN_SRC))
    try:
        from lerobot_policy_pibridge.__main__ import install_hook
    finally:
        sys.path.remove(str(PLUGIN_SRC))
    install_hook(tmp_path)
    script = str(Path(h.__file__).with_name("bare_load_check.py"))
    runs = {}
    for name, extra in (("no hook", []), ("hook", [str(tmp_path)])):
        p = subprocess.run([str(py), script, str(out), *extra], capture_output=True, text=True, env=_env(),
                           cwd=root / "elsewhere", timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        runs[name] = json.loads(p.stdout.strip().splitlines()[-1])
    assert runs["no hook"] == {"fixes": None, "inv_freq_dtypes": ["torch.bfloat16"]}, runs
    assert runs["hook"]["fixes"].get("rope-inv-freq-fp32") == 4 and runs["hook"]["inv_freq_dtypes"] == ["torch.float32"]
