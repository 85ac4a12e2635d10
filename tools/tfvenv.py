"""Small per-release venvs for the transformers version matrix (.venvs/tf-<version>).

Each venv holds only transformers (+ its own huggingface_hub / tokenizers, whose majors differ between
releases) and reuses the project venv's torch, numpy-compatible stack and editable pibridge through a
`zz_pibridge_project.pth` that calls site.addsitedir(<project site-packages>): addsitedir APPENDS to
sys.path, so the venv's own transformers / huggingface_hub win and torch comes from the project venv.
A stamp file records the resolved versions; an existing stamp makes ensure_venv a no-op (cached).
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENVS = ROOT / ".venvs"
STAMP = "pibridge-matrix.json"
PTH = "zz_pibridge_project.pth"
CHECK = ("import json, torch, transformers, huggingface_hub, pibridge; "
         "print(json.dumps({'transformers': transformers.__version__, 'torch': torch.__version__, "
         "'huggingface_hub': huggingface_hub.__version__, 'transformers_file': transformers.__file__, "
         "'torch_file': torch.__file__}))")


def project_site_packages() -> Path:
    return Path(sysconfig.get_paths(vars={"base": sys.prefix, "platbase": sys.prefix})["purelib"])


def venv_dir(version: str) -> Path:
    return VENVS / f"tf-{version}"


def venv_python(version: str) -> Path:
    return venv_dir(version) / "bin" / "python"


def _site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python3*/site-packages"))


def ensure_venv(version: str, python: str = "python3.11", log=print) -> dict:
    """Create (once) .venvs/tf-<version> with transformers==<version>; return the stamp {versions, seconds}."""
    venv = venv_dir(version)
    stamp = venv / STAMP
    if stamp.is_file():
        return json.loads(stamp.read_text())
    t0 = time.perf_counter()
    log(f"building {venv} (transformers=={version})")
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # torch is NOT a dependency of transformers: nothing here pulls it; the .pth below supplies it.
    subprocess.run(pip + [f"transformers=={version}"], check=True)
    site = _site_packages(venv)
    (site / PTH).write_text(f"import site; site.addsitedir({str(project_site_packages())!r})\n")
    info = json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", CHECK], check=True,
                                     capture_output=True, text=True).stdout)
    if info["transformers"] != version or not info["transformers_file"].startswith(str(venv)):
        raise RuntimeError(f"{venv}: imports transformers {info['transformers']} from {info['transformers_file']}")
    info["seconds"] = round(time.perf_counter() - t0, 1)
    stamp.write_text(json.dumps(info, indent=1))
    return info


def _configured(which: str) -> list[str]:
    cfg = json.loads((ROOT / "pibridge/configs/transformers_support.json").read_text())
    return cfg["gate"] if which == "--gate" else [m["transformers"] for m in cfg["matrix"]]


if __name__ == "__main__":
    # python tools/tfvenv.py --gate | --matrix | VERSION...   (cached: an existing venv is reused as is)
    t0 = time.perf_counter()
    args = sys.argv[1:]
    versions = _configured(args[0]) if args and args[0] in ("--gate", "--matrix") else args
    for v in versions:
        print(json.dumps({"version": v, **ensure_venv(v)}))
    print(f"{len(versions)} venvs ready in {time.perf_counter() - t0:.1f} s")
