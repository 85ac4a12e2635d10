"""`parity capture --stack transformers`: from CaptureRequest to the native-transformers stack (model.py), run by the
interpreter whose transformers is the release OUT was converted for (pibridge.json target.transformers_version):
this one when its transformers is that release, else the same `python -m pibridge.cli parity capture` command line
run by .venvs/tf-<version>/bin/python (tools/tfvenv.py builds it; PIBRIDGE_TF_VENVS names another directory
searched first) with this pibridge first on PYTHONPATH; its trace is read back here. Never imports jax.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import tempfile
from pathlib import Path

from pibridge.errors import PibridgeError
from pibridge.parity.request import CAPTURE_META_KEYS, CaptureRequest

VENVS_ENV = "PIBRIDGE_TF_VENVS"
PROJECT_ROOT = Path(__file__).resolve().parents[4]  # the checkout (its .venvs/) when pibridge runs from source


def installed_transformers() -> str | None:
    try:
        return md.version("transformers")
    except md.PackageNotFoundError:
        return None


def venv_python(version: str) -> Path:
    """The interpreter of the transformers-<version> venv, or PibridgeError with the command that builds it."""
    dirs = [Path(d) for d in os.environ.get(VENVS_ENV, "").split(os.pathsep) if d] + [PROJECT_ROOT / ".venvs"]
    for d in dirs:
        py = d / f"tf-{version}" / "bin" / "python"
        if py.exists():
            return py
    raise PibridgeError(
        f"no transformers {version} environment for the transformers stack (looked in {', '.join(map(str, dirs))}; "
        f"this interpreter has transformers {installed_transformers()})",
        f".venvs/tf-{version} (OUT was converted for transformers {version}: pibridge.json target)",
        f"build it: python tools/tfvenv.py {version}  (or convert OUT with --transformers-version "
        f"{installed_transformers()} to run in this interpreter)")


def capture_transformers(req: CaptureRequest):
    from pibridge.provenance import load_provenance

    precheck(req)
    version = load_provenance(req.lerobot).get("target", {}).get("transformers_version")
    if version is None or version == installed_transformers():
        from pibridge.parity.stacks.transformers.model import capture_native

        stages, meta = capture_native(req.lerobot, req.obs, shared_inputs=req.shared_inputs,
                                      save_inputs=req.save_inputs, steps=req.steps, tokenizer=req.tokenizer)
        return stages, {k: v for k, v in meta.items() if k not in CAPTURE_META_KEYS}
    from pibridge.parity.trace import read_trace

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "t.safetensors"
        args = ["--lerobot", str(req.lerobot), "--obs", str(req.obs), "--out", str(trace), "--steps", str(req.steps)]
        for flag, value in (("--shared-inputs", req.shared_inputs), ("--save-inputs", req.save_inputs),
                            ("--tokenizer", req.tokenizer)):
            if value is not None:
                args += [flag, str(value)]
        _run_in_venv(venv_python(version), args)
        t = read_trace(trace)  # the other interpreter's trace: its stages, its meta less what capture() adds here
    return list(t.stages.values()), {k: v for k, v in t.meta.items() if k not in CAPTURE_META_KEYS}


def precheck(req) -> None:
    """`parity run --torch-stack transformers` / capture: the native stack is checked in float32 only."""
    if req.precision != "float32":
        raise PibridgeError(f"--precision {req.precision} for the transformers stack", "float32",
                            "pass --precision float32 (the native stack is checked in float32 only)")


def _run_in_venv(python: Path, args: list[str]) -> None:
    """`pibridge parity capture --stack transformers ARGS` in the venv; its exit 2 (PibridgeError, rendered on
    stderr) becomes one here."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               USE_HUB_KERNELS="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    p = subprocess.run([str(python), "-m", "pibridge.cli", "parity", "capture", "--stack", "transformers", *args],
                       capture_output=True, text=True, env=env)
    if p.returncode == 2 and "error: " in p.stderr:
        lines = p.stderr[p.stderr.rindex("error: ") + len("error: "):].strip().splitlines()
        part = {k: next((ln[len(k):] for ln in lines if ln.startswith(k)), "") for k in ("expected: ", "what to do: ")}
        raise PibridgeError(f"{lines[0]} [transformers stack run by {python}]", part["expected: "], part["what to do: "])
    if p.returncode != 0:
        raise PibridgeError(f"the transformers stack run by {python} exited {p.returncode}: {p.stderr.strip()[-1500:]}",
                            "exit 0", "run it again with --debug, or report a bug")
