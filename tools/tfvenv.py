"""Small per-release venvs for the transformers version matrix (.venvs/tf-<version>).

Each venv holds only transformers (+ its own huggingface_hub / tokenizers, whose majors differ between
releases) and reuses the project venv's torch, numpy-compatible stack and editable pibridge through a
`zz_pibridge_project.pth` that calls site.addsitedir(<project site-packages>): addsitedir APPENDS to
sys.path, so the venv's own transformers / huggingface_hub win and torch comes from the project venv.
A stamp file records the resolved versions; an existing stamp makes ensure_venv a no-op (cached).

A release whose dependencies the registry cannot satisfy here carries an "install" entry in its matrix row of
configs/transformers_support.json: {"no_deps": true, "extra": [requirements installed normally], "missing":
[requirements left out on purpose], "why": ...}. The plan is data, printed when the venv is built and recorded in
the stamp; after the install `pip check` must report exactly the "missing" requirements (nothing else unmet).
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENVS = (ROOT / ".venvs").resolve()  # resolved: a worktree's .venvs may be a symlink to the main checkout's
STAMP = "pibridge-matrix.json"
PTH = "zz_pibridge_project.pth"
CHECK = ("import json, torch, transformers, huggingface_hub, pibridge; "
         "print(json.dumps({'transformers': transformers.__version__, 'torch': torch.__version__, "
         "'huggingface_hub': huggingface_hub.__version__, 'transformers_file': transformers.__file__, "
         "'torch_file': torch.__file__}))")


def project_site_packages() -> Path:
    return Path(sysconfig.get_paths(vars={"base": sys.prefix, "platbase": sys.prefix})["purelib"]).resolve()


def venv_dir(version: str) -> Path:
    return VENVS / f"tf-{version}"


def venv_python(version: str) -> Path:
    return venv_dir(version) / "bin" / "python"


def _site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python3*/site-packages"))


def support_config() -> dict:
    from pibridge.configs import load_transformers_support

    return load_transformers_support()


def install_spec(version: str, config: dict | None = None) -> dict | None:
    """The matrix row's "install" entry for `version` (None: a plain `pip install transformers==<version>`)."""
    rows = (config or support_config())["matrix"]
    return next((m.get("install") for m in rows if m["transformers"] == version), None)


def install_plan(version: str, spec: dict | None) -> list[list[str]]:
    """pip argument lists, in order, that install transformers==<version> by `spec` (see the module docstring)."""
    if not spec or not spec.get("no_deps"):
        return [[f"transformers=={version}"]]
    for key in ("extra", "missing", "why"):
        if key not in spec:
            raise ValueError(f"transformers {version}: an install entry with no_deps needs {key!r} (what it "
                             f"installs, what it leaves out and why): {spec}")
    return [["--no-deps", f"transformers=={version}"], list(spec["extra"])]


def unmet_requirements(pip_check_output: str, package: str = "transformers") -> list[str]:
    """Requirement names `pip check` reports unmet for `package` ("transformers 5.25.0 requires kernels, which is
    not installed." / "... has requirement kernels<0.20,>=0.19.1, but you have kernels 0.17.2.")."""
    out = []
    for line in pip_check_output.splitlines():
        words = line.split()
        if len(words) > 3 and words[0].lower() == package and words[2] in ("requires", "has"):
            out.append(_requirement_name((words[3] if words[2] == "requires" else words[4]).rstrip(",.")))
    return sorted(out)


def _requirement_name(req: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(req).name.lower()


def check_missing(py: str, spec: dict) -> None:
    """After a no-deps install: `pip check` must report exactly spec["missing"] unmet for transformers."""
    check = subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True).stdout
    unmet, want = unmet_requirements(check), sorted(map(_requirement_name, spec["missing"]))
    if unmet != want:
        raise RuntimeError(f"{py}: pip check reports {unmet or 'nothing'} unmet for transformers, the install "
                           f"entry declares {want} missing:\n{check}")


def ensure_venv(version: str, python: str = "python3.11", log=print) -> dict:
    """Create (once) .venvs/tf-<version> with transformers==<version>; return the stamp {versions, seconds}."""
    venv = venv_dir(version)
    stamp = venv / STAMP
    if stamp.is_file():
        return json.loads(stamp.read_text())
    t0 = time.perf_counter()
    spec = install_spec(version)
    plan = install_plan(version, spec)
    log(f"building {venv} (transformers=={version})" + (f"; pip install {' ; pip install '.join(map(' '.join, plan))}"
                                                          f" (why: {spec['why']})" if spec else ""))
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # torch is NOT a dependency of transformers: nothing here pulls it; the .pth below supplies it.
    for args in plan:
        subprocess.run(pip + args, check=True)
    if spec and spec.get("no_deps"):  # before the .pth: pip check sees this venv only
        check_missing(py, spec)
    site = _site_packages(venv)
    (site / PTH).write_text(f"import site; site.addsitedir({str(project_site_packages())!r})\n")
    info = json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", CHECK], check=True,
                                     capture_output=True, text=True).stdout)
    if info["transformers"] != version or not info["transformers_file"].startswith(str(venv)):
        raise RuntimeError(f"{venv}: imports transformers {info['transformers']} from {info['transformers_file']}")
    info["seconds"] = round(time.perf_counter() - t0, 1)
    info["install"] = spec or "pip install transformers==" + version
    stamp.write_text(json.dumps(info, indent=1))
    return info


def _configured(which: str) -> list[str]:
    cfg = support_config()
    return cfg["gate"] if which == "--gate" else [m["transformers"] for m in cfg["matrix"]]


if __name__ == "__main__":
    # python tools/tfvenv.py --gate | --matrix | VERSION...   (cached: an existing venv is reused as is)
    t0 = time.perf_counter()
    args = sys.argv[1:]
    versions = _configured(args[0]) if args and args[0] in ("--gate", "--matrix") else args
    for v in versions:
        print(json.dumps({"version": v, **ensure_venv(v)}))
    print(f"{len(versions)} venvs ready in {time.perf_counter() - t0:.1f} s")
