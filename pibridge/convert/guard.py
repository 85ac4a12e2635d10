"""What `convert` may replace: never an input, never a directory pibridge did not write, never a file it changed.

Two checks, both before any work:
  * overlap: OUT must neither contain nor lie inside any input (CKPT, its params/, the norm stats, a
    --tokenizer file). Compared by identity (st_dev, st_ino) of every directory up the parent chain of the
    resolved paths, so symlinks, `..`, `.` and bind mounts of the same directory cannot hide an overlap.
  * ownership (--force over an existing, non-empty OUT): OUT holds a pibridge.json whose `files` list
    (name, size, XXH3-128 of the bytes, written by convert) covers every entry of OUT, each unmodified.
    Anything else is refused naming the first foreign or modified entry. An empty directory is a valid OUT
    without --force (rename(2) replaces an empty directory atomically).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import xxhash

from pibridge.errors import PibridgeError
from pibridge.provenance import PROVENANCE_FILE, load_provenance

HASH = "xxh3_128"
_READ = 16 << 20


def file_hash(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(_READ):
            h.update(block)
    return h.hexdigest()


def file_list(root: Path, known: dict[str, str] | None = None, skip: Iterable[str] = ()) -> list[dict]:
    """Every regular file under `root` except the provenance file itself and `skip`: name (relative, '/'), size,
    hash. `known`: hashes already computed while writing (name -> hex), so big files are not read back."""
    known, skip = known or {}, {PROVENANCE_FILE, *skip}
    rows = []
    for p in sorted(_walk(root)):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not p.is_symlink() and rel not in skip:
            rows.append({"name": rel, "size": p.stat().st_size, HASH: known.get(rel) or file_hash(p)})
    return rows


def _walk(root: Path) -> Iterable[Path]:
    for d, dirs, files in os.walk(root):
        dirs.sort()
        yield from (Path(d) / n for n in sorted(dirs + files))


# --- overlap ----------------------------------------------------------------------------------------------

def _ident(p: Path) -> tuple[int, int]:
    s = os.stat(p)
    return s.st_dev, s.st_ino


def _chain(path: Path) -> list[tuple[Path, tuple[int, int]]]:
    """(directory, identity) for `path` (or its nearest existing ancestor) and every parent up to /, with
    symlinks and `..` resolved as the kernel does."""
    p = Path(os.path.realpath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return [(q, _ident(q)) for q in (p, *p.parents)]


def check_no_overlap(out: Path, inputs: Iterable[tuple[str, Path]]) -> None:
    """OUT neither is nor contains nor lies inside any input. `inputs`: (what, path) pairs. OUT is checked both
    as the kernel resolves it and as spelled after textual `..` removal (os.path.abspath, the path atomic.py
    renames), where the two differ."""
    outs = {os.path.realpath(out), os.path.abspath(out)}
    for what, path in inputs:
        if not os.path.exists(path):
            continue
        in_chain = _chain(Path(path))
        for o in sorted(outs):
            out_chain = _chain(Path(o))
            out_id = out_chain[0][1] if os.path.exists(o) else None  # else: the chain starts at an ancestor
            if out_id is not None and any(i == out_id for _, i in in_chain):
                raise PibridgeError(
                    f"output {out} contains the {what} {path} (same directory as {out_chain[0][0]})",
                    "an output directory that holds none of the inputs (--force would delete them)",
                    "choose a new output path that holds none of the inputs" + (
                        f", e.g. {in_chain[0][0].parent.parent / (in_chain[0][0].name + '-lerobot')}"
                        if what == "checkpoint" else ""))
            if any(i == in_chain[0][1] for _, i in out_chain):
                raise PibridgeError(f"output {out} is inside the {what} {path}",
                                    "an output outside the checkpoint and the other inputs",
                                    "choose an output directory elsewhere")


# --- ownership --------------------------------------------------------------------------------------------

def is_empty_dir(out: Path) -> bool:
    return out.is_dir() and not out.is_symlink() and not any(os.scandir(out))


def check_replaceable(out: Path) -> None:
    """--force over an existing, non-empty OUT: only pibridge's own, unmodified output may go."""
    if out.is_symlink():
        raise PibridgeError(f"output {out} is a symlink", "a real directory (--force replaces the path, not its target)",
                            f"pass the directory it points to ({os.path.realpath(out)}) or another path")
    files = _recorded_files(out)
    listed = {f["name"]: f for f in files}
    parents = {q.as_posix() for n in listed for q in Path(n).parents}
    for p in _walk(out):
        rel = p.relative_to(out).as_posix()
        if rel == PROVENANCE_FILE:
            continue
        if p.is_symlink() or (p.is_dir() and rel not in parents) or (not p.is_dir() and rel not in listed):
            raise _foreign(out, rel, "was not written by pibridge (its pibridge.json does not list it)")
        if p.is_dir():
            continue
        row, size = listed[rel], p.stat().st_size
        if size != row["size"]:
            raise _foreign(out, rel, f"was modified after pibridge wrote it ({size} bytes, {row['size']} recorded)")
        if file_hash(p) != row[HASH]:
            raise _foreign(out, rel, f"was modified after pibridge wrote it (same size, {HASH} differs)")


def _recorded_files(out: Path) -> list[dict]:
    p = out / PROVENANCE_FILE
    if not p.is_file() or p.is_symlink():
        first = next((q.relative_to(out).as_posix() for q in _walk(out)), "?")
        raise _foreign(out, first, f"is in a directory pibridge did not write (no {PROVENANCE_FILE})")
    try:
        files = load_provenance(out)["files"]
        assert all({"name", "size", HASH} <= set(f) for f in files)
    except (PibridgeError, KeyError, TypeError, AssertionError):
        raise PibridgeError(f"{p} has no list of the files pibridge wrote (an older pibridge, or edited)",
                            f"a {PROVENANCE_FILE} with a `files` list (name, size, {HASH})",
                            f"if {out} holds nothing you need, delete it yourself (rm -r {out}) and run again, "
                            "or choose another output path") from None
    return files


def _foreign(out: Path, rel: str, why: str) -> PibridgeError:
    return PibridgeError(f"--force would delete {out / rel}, which {why}",
                         f"--force replaces only an output pibridge wrote, holding only the unmodified files its "
                         f"{PROVENANCE_FILE} lists",
                         f"move {rel} out of {out} (or delete it yourself), or choose another output path")
