"""`python -m pibridge.convert.relocate OUT`: point a moved or copied OUT's tokenizer step at its own tokenizer/.

LeRobot (<= 0.6.1) resolves policy_preprocessor.json's `tokenizer_name` against the working directory or the hub,
so `pibridge convert --tokenizer` stores OUT/tokenizer's absolute path. After OUT is moved that path is gone
(LeRobot fails: "Failed to instantiate processor step 'tokenizer_processor'"); after a copy it still names the
source's. The pibridge plugin re-points it on every load; without the plugin, run this once per new location.
pibridge.json's file list is updated, so `convert --force` still recognises OUT as pibridge's own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pibridge.convert.guard import HASH, file_hash
from pibridge.errors import PibridgeError
from pibridge.provenance import PROVENANCE_FILE, load_provenance

PREPROCESSOR = "policy_preprocessor.json"


def relocate_command(out: Path) -> str:
    return f"python -m pibridge.convert.relocate {out}"


def relocate(out: Path) -> str | None:
    """Rewrite tokenizer_name to OUT/tokenizer's absolute path; returns the old name (None: already right)."""
    out = Path(out).resolve()
    cfg, tok = out / PREPROCESSOR, out / "tokenizer"
    if not (out / PROVENANCE_FILE).is_file() or not cfg.is_file() or not tok.is_dir():
        raise PibridgeError(f"{out} has no {PROVENANCE_FILE}, {PREPROCESSOR} or tokenizer/",
                            "a directory written by `pibridge convert --tokenizer`",
                            "pass the converted OUT (only OUTs with a bundled tokenizer need this)")
    doc = json.loads(cfg.read_text())
    steps = [s for s in doc.get("steps", []) if s.get("registry_name") == "tokenizer_processor"]
    old = steps[0]["config"].get("tokenizer_name") if steps else None
    if not steps or old == str(tok):
        return None
    steps[0]["config"]["tokenizer_name"] = str(tok)
    cfg.write_text(json.dumps(doc, indent=2) + "\n")
    rec = load_provenance(out)
    for f in rec.get("files", []):
        if f["name"] == PREPROCESSOR:
            f.update(size=cfg.stat().st_size, **{HASH: file_hash(cfg)})
    (out / PROVENANCE_FILE).write_text(json.dumps(rec, indent=2) + "\n")
    return old


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: {relocate_command(Path('OUT'))}", file=sys.stderr)
        return 2
    try:
        old = relocate(Path(args[0]))
    except PibridgeError as err:
        print(f"pibridge: error: {err.render()}", file=sys.stderr)
        return err.exit_code
    print(f"{args[0]}: tokenizer already points at its own tokenizer/" if old is None else
          f"{args[0]}: tokenizer_name {old} -> {Path(args[0]).resolve() / 'tokenizer'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
