"""The command line's vocabulary (issue 16): one dtype spelling with its alias accepted everywhere, the renamed
checkpoint flag with its deprecated alias, --version, --debug anywhere, repeated options, every missing camera
in one message, the dry-run audit on stdout, help without placeholders, the exit-code table, shell completion."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pibridge import __version__
from pibridge.cli import command, main
from pibridge.convert.synth import write_synthetic_checkpoint
from pibridge.vocab import EXIT_CODES, exit_code_table

ROOT = Path(__file__).resolve().parents[1]

# every option that takes a dtype, with the arguments needed to parse its command
DTYPE_OPTIONS = [
    (("synth",), "--dtype", ["ck"]),
    (("convert",), "--weights-dtype", ["ck", "out"]),
    (("convert",), "--runtime-dtype", ["ck", "out"]),
    (("fixes",), "--dtype", []),
    (("parity", "capture"), "--precision", ["--stack", "jax", "--obs", "o", "--out", "t"]),
    (("parity", "run"), "--precision", ["--openpi", "ck", "--lerobot", "out"]),
]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code or 0, out, err


def _sub(path: tuple[str, ...]):
    cmd = command()
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("path,option,rest", DTYPE_OPTIONS, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("spelling,canonical", [("bfloat16", "bfloat16"), ("bf16", "bfloat16"),
                                                ("float32", "float32"), ("fp32", "float32")])
def test_every_dtype_option_takes_both_spellings(path, option, rest, spelling, canonical):
    ctx = _sub(path).make_context(path[-1], [*rest, option, spelling])
    assert ctx.params[option.lstrip("-").replace("-", "_")] == canonical


@pytest.mark.parametrize("path,option,rest", DTYPE_OPTIONS[:4], ids=lambda v: v if isinstance(v, str) else None)
def test_unknown_dtype_is_a_usage_error(capsys, path, option, rest):
    code, _, err = _cli(capsys, *path, *rest, option, "fp16")
    assert code == 2 and "expected float32|bfloat16" in err and "Traceback" not in err


def test_precision_policy_token_from_either_spelling(tmp_path):
    from pibridge.parity.capture import _defaults
    from pibridge.parity.request import CaptureRequest

    for spelling in ("bfloat16", "bf16"):
        assert _defaults(CaptureRequest("jax", tmp_path / "o", tmp_path / "t", precision=spelling)).precision == "bf16"


def test_ckpt_is_a_hidden_deprecated_alias_of_openpi(capsys, tmp_path):
    help_text = _cli(capsys, "parity", "capture", "--help")[1]
    assert "--openpi" in help_text and "--ckpt" not in help_text
    code, _, err = _cli(capsys, "parity", "capture", "--stack", "jax", "--ckpt", str(tmp_path / "ck"),
                        "--obs", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "t"))
    assert "--ckpt is deprecated; use --openpi" in err
    assert code == 2 and "missing.safetensors" in err  # the alias reached the capture: it failed on the obs next


def test_version_names_package_and_default_targets(capsys):
    code, out, _ = _cli(capsys, "--version")
    assert code == 0 and f"pibridge {__version__}" in out
    assert re.search(r"default target: LeRobot 0\.6\.1, transformers key layout 5\.\d+\.\d+", out)


@pytest.mark.parametrize("where", ["first", "after-subcommand", "last"])
def test_debug_anywhere_keeps_exit_code(capsys, tmp_path, where):
    args = ["inspect", str(tmp_path / "nope")]
    args = {"first": ["--debug", *args], "after-subcommand": ["inspect", "--debug", args[1]],
            "last": [*args, "--debug"]}[where]
    code, _, err = _cli(capsys, *args)
    assert code == 2 and "Traceback" in err and "pibridge: error:" in err
    code, _, err = _cli(capsys, "inspect", str(tmp_path / "nope"))
    assert code == 2 and "Traceback" not in err


def test_repeated_single_option_is_refused(capsys, tmp_path):
    code, _, err = _cli(capsys, "parity", "obs", str(tmp_path / "o.safetensors"), "--profile", "pi05_droid",
                        "--batch", "1", "--batch=3")
    assert code == 2 and "--batch 1; --batch 3" in err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def aloha_ckpt(tmp_path_factory):
    ck = tmp_path_factory.mktemp("ck") / "ck"
    write_synthetic_checkpoint(ck, variant="tiny-pi05", profile="pi05_aloha", asset_id="trossen")
    return ck


def test_camera_map_repeats_merge_and_a_slot_twice_is_refused(capsys, aloha_ckpt, tmp_path):
    base = ["convert", str(aloha_ckpt), str(tmp_path / "out"), "--profile", "pi05_aloha", "--allow-tiny", "--dry-run"]
    code, out, err = _cli(capsys, *base, "--camera-map", "base_0_rgb=top",
                          "--camera-map", "left_wrist_0_rgb=l,right_wrist_0_rgb=r")
    assert code == 0, err
    assert "'base_0_rgb': 'top', 'left_wrist_0_rgb': 'l', 'right_wrist_0_rgb': 'r'" in out
    code, _, err = _cli(capsys, *base, "--camera-map", "base_0_rgb=top", "--camera-map", "base_0_rgb=other")
    assert code == 2 and "base_0_rgb given twice" in err


def test_all_missing_cameras_in_one_message_with_an_example_that_works(capsys, aloha_ckpt, tmp_path):
    base = ["convert", str(aloha_ckpt), str(tmp_path / "out"), "--profile", "pi05_aloha", "--allow-tiny"]
    code, _, err = _cli(capsys, *base, "--camera-map", "base_0_rgb=top")
    assert code == 2 and "slots left_wrist_0_rgb" in err and "right_wrist_0_rgb" in err.split("expected")[0]
    example = re.search(r"e\.g\. --camera-map (\S+)", err).group(1)
    code, out, err = _cli(capsys, *base, "--camera-map", example, "--dry-run")
    assert code == 0, err
    assert " <- " in out and not (tmp_path / "out").exists()  # the audit is on stdout


def test_help_has_no_placeholders_and_lists_exit_codes(capsys):
    paths = [()] + [(n,) for n in command().commands] + [("parity", n) for n in command().commands["parity"].commands]
    for path in paths:
        code, out, _ = _cli(capsys, *path, "--help")
        assert code == 0
        assert not re.search(r"<(bool|path|str|int|text|float|list\[str\])>", out), (path, out)
        usage = out.splitlines()[0]
        assert "{" not in usage and "}" not in usage, usage
        if path != ("parity",):
            lines = [" ".join(line.split()) for line in out.splitlines()]
            assert all(" ".join(row.split()) in lines for row in exit_code_table().splitlines()), path
    assert [c for c, _ in EXIT_CODES] == [0, 1, 2, 130, 143]


def test_readme_has_the_exit_code_table():
    readme = (ROOT / "README.md").read_text()
    for code, what in EXIT_CODES:
        assert f"| {code} | {what} |" in readme


def test_shell_completion(tmp_path):
    env = {**os.environ, "_PIBRIDGE_COMPLETE": "complete_bash", "COMP_WORDS": "pibridge synth --dtype b",
           "COMP_CWORD": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pibridge.cli"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.split() == ["bfloat16"]
    env.update(COMP_WORDS="pibridge par", COMP_CWORD="1")
    proc = subprocess.run([sys.executable, "-m", "pibridge.cli"], env=env, capture_output=True, text=True)
    assert proc.stdout.split() == ["parity"]


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def _record_a_run(progress, steps=3):
    from pibridge.parity import stages as st
    from pibridge.parity.stages import StageRecorder

    rec = StageRecorder(on_record=progress.on_record)
    progress.phase("load weights")
    for name in ("img/embed", "llm/block00", "suffix/time", *(f"velocity/step{k:02d}" for k in range(steps))):
        rec.record(name, [0.0])
    rec.record(st.ACTIONS_UNNORMALIZED, [0.0])
    progress.done()


def test_progress_per_phase_on_a_terminal_quiet_otherwise(monkeypatch):
    from pibridge.parity.progress import ENV, PREFIX, Progress

    monkeypatch.delenv(ENV, raising=False)
    quiet = _Stream(tty=False)
    _record_a_run(Progress("jax", 3, quiet))
    assert quiet.getvalue() == ""
    tty = _Stream(tty=True)
    _record_a_run(Progress("jax", 3, tty))
    shown = [p.rsplit(" (", 1)[0] for p in tty.getvalue().replace("\x1b[2K", "").split("\r") if p]
    assert shown == ["jax: load weights", "jax: vision tower and prefix (LLM)", "jax: denoise step 1/3",
                     "jax: denoise step 2/3", "jax: denoise step 3/3", "jax: postprocess"]
    monkeypatch.setenv(ENV, "1")  # what `parity run` asks of its capture subprocesses
    relay = _Stream(tty=False)
    _record_a_run(Progress("torch", 3, relay))
    lines = relay.getvalue().splitlines()
    assert lines[0] == PREFIX + "torch: load weights (0 s)" and all(x.startswith(PREFIX) for x in lines)
    assert len(lines) == 6


def test_every_stack_finds_outs_tokenizer(tmp_path):
    """The jax capture defaults to OUT's tokenizer too (--profile OUT), as the torch and lerobot captures do."""
    from pibridge.parity.capture import _defaults
    from pibridge.parity.request import CaptureRequest

    out = tmp_path / "out"
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "tokenizer.model").write_bytes(b"x")
    want = out / "tokenizer" / "tokenizer.model"
    assert _defaults(CaptureRequest("jax", tmp_path / "o", tmp_path / "t", profile=str(out))).tokenizer == want
    assert _defaults(CaptureRequest("torch", tmp_path / "o", tmp_path / "t", lerobot=out)).tokenizer == want
    assert _defaults(CaptureRequest("jax", tmp_path / "o", tmp_path / "t", profile="pi05_droid")).tokenizer is None
    given = tmp_path / "mine.model"
    assert _defaults(CaptureRequest("jax", tmp_path / "o", tmp_path / "t", profile=str(out),
                                    tokenizer=given)).tokenizer == given


def test_help_names_the_lerobot_path(capsys):
    check = " ".join(_cli(capsys, "check", "--help")[1].split())
    assert "LeRobot environment" in check and ".venvs/lr-0.6.1/bin/pibridge check OUT" in check
    run = " ".join(_cli(capsys, "parity", "run", "--help")[1].split())
    assert "--torch-stack [ours|lerobot|transformers]" in run and "PIBRIDGE_LEROBOT_PYTHON" in run  # the registry
    assert "is the conversion right?" in run  # which comparison answers which question


def test_parity_run_relays_capture_progress_on_a_terminal():
    from rich.console import Console

    from pibridge.parity.run import _with_progress

    code = ("import os, sys; print('pibridge-progress: jax: denoise step 2/10 (3 s)', file=sys.stderr); "
            "print('warning: kept', file=sys.stderr); print('env', os.environ.get('PIBRIDGE_PROGRESS'))")
    con = Console(file=io.StringIO(), force_terminal=True, width=100)
    proc = _with_progress([sys.executable, "-c", code, "--stack", "jax"], con)
    assert proc.returncode == 0 and proc.stdout.strip() == "env 1"  # the child was asked for progress lines
    assert proc.stderr == "warning: kept\n"  # progress lines shown as status, everything else kept
