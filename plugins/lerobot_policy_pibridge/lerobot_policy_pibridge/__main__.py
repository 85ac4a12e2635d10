"""`python -m lerobot_policy_pibridge --install-hook [--site DIR]`: write the interpreter-start hook (a .pth file)
into site-packages, so bare `PI05Policy.from_pretrained` calls get pibridge's fixes (see _startup)."""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

PTH = "lerobot_policy_pibridge_startup.pth"


def install_hook(site: Path) -> Path:
    path = Path(site) / PTH
    path.write_text("import lerobot_policy_pibridge._startup\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m lerobot_policy_pibridge")
    ap.add_argument("--install-hook", action="store_true", required=True)
    ap.add_argument("--site", type=Path, default=Path(sysconfig.get_paths()["purelib"]))
    print(f"wrote {install_hook(ap.parse_args().site)}")


if __name__ == "__main__":
    main()
