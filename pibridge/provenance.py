"""OUT's provenance file, pibridge.json: its name and its one reader. Low (json + errors only), so convert, the
guard, relocate, every stack (the LeRobot one runs in LeRobot's env without the converter's dependencies) and the
plugin read it the same way. What convert writes into it: convert/convert.py `_provenance`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pibridge.errors import PibridgeError

PROVENANCE_FILE = "pibridge.json"


def is_pibridge_out(path: str | Path) -> bool:
    """A directory that carries pibridge.json (written by `pibridge convert`)."""
    return (Path(path) / PROVENANCE_FILE).is_file()


def load_provenance(out: str | Path) -> dict[str, Any]:
    p = Path(out) / PROVENANCE_FILE
    if not p.is_file():
        raise PibridgeError(f"{out} has no {PROVENANCE_FILE}", "a directory written by `pibridge convert`",
                            "convert the checkpoint with pibridge first")
    try:
        return json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise PibridgeError(f"{p} is not valid JSON ({err})", f"the {PROVENANCE_FILE} `pibridge convert` wrote",
                            "convert the checkpoint again (or restore the file)") from None
