"""The bad-input case table (issue 8): one row per case, run through the real CLI by runner.run_case.

A case builds its inputs in its own empty directory (the command runs there, so paths in `args` are relative:
`ck` checkpoint, `out` output, `obs` observation, `a` / `b` traces, `tol.json` tolerances), then states what the
run must give: exit code (2 bad input, 1 parity tolerance failure, 0 where the behaviour is "accept and report"),
case-specific substrings of the output, and whether OUT may be written. Everything else in the directory must be
byte-identical afterwards, and no `.out.pibridge-*` temporaries may remain.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pibridge.parity import stages as st

from reliability import build as B

CONVERT = ("convert", "ck", "out", "--profile", B.PROFILE, "--allow-tiny", "--camera-map", B.CAMS)
FLAGS = CONVERT[3:]
PFILE = ("convert", "ck", "out", "--profile", "prof.json", "--allow-tiny", "--camera-map", B.CAMS)
COMPARE = ("parity", "compare", "a", "b")
RUN = ("parity", "run", "--openpi", "ck", "--lerobot", "out")
CAPTURE = ("parity", "capture", "--stack", "jax", "--ckpt", "ck", "--obs", "obs", "--out", "trace")
MLP = ("PaliGemma", "llm", "layers", "mlp", "linear")
BIAS = ("action_in_proj", "bias")


@dataclass(frozen=True)
class Case:
    id: str
    area: str  # checkpoint | norm stats | profile | output | parity
    what: str
    build: Callable[[B.Shared, Path], None]
    args: tuple[str, ...]
    exit_code: int
    messages: tuple[str, ...]  # all must occur in stderr + stdout
    writes: str | None = None  # a path the command is expected to create (opt-out / accepted cases)
    traceback: bool = False  # --debug: a traceback is expected
    xfail: str = ""  # why pibridge cannot pass this case yet (the fix lies outside this suite's files)
    slow: bool = False


# --- builders -----------------------------------------------------------------------------------------------

def nothing(shared: B.Shared, d: Path) -> None:
    pass


def ck(*edits: Callable[[Path], None]) -> Callable[[B.Shared, Path], None]:
    """A hard-linked copy of the shared checkpoint at d/ck, then `edits` applied to it."""
    def make(shared: B.Shared, d: Path) -> None:
        B.link_copy(shared.ck, d / "ck")
        for edit in edits:
            edit(d / "ck")
    return make


def profile_file(edit: Callable[[dict], None] | None, text: str | None = None) -> Callable[[B.Shared, Path], None]:
    """The shared checkpoint plus d/prof.json: the shipped B.PROFILE's file with `edit` applied (or `text`)."""
    def make(shared: B.Shared, d: Path) -> None:
        from pibridge.convert.profile import PROFILE_DIR

        ck()(shared, d)
        doc = json.loads((PROFILE_DIR / f"{B.PROFILE}.json").read_text())
        if edit is not None:
            edit(doc)
        (d / "prof.json").write_text(text if text is not None else json.dumps(doc))
    return make


def also_out(make: Callable[[B.Shared, Path], None]) -> Callable[[B.Shared, Path], None]:
    """`make`, plus an existing OUT directory holding a previous conversion's files."""
    def both(shared: B.Shared, d: Path) -> None:
        make(shared, d)
        (d / "out").mkdir()
        (d / "out" / "config.json").write_text('{"type": "pi05"}\n')
        (d / "out" / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    return both


def at(rel: str, *edits: Callable[[Path], None]) -> Callable[[B.Shared, Path], None]:
    """The shared checkpoint hard-link-copied to d/rel (parents created), then `edits` applied to d."""
    def make(shared: B.Shared, d: Path) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        B.link_copy(shared.ck, d / rel)
        for edit in edits:
            edit(d)
    return make


def own_out(make: Callable[[B.Shared, Path], None], *edits: Callable[[Path], None]) -> Callable[[B.Shared, Path], None]:
    """`make`, plus d/out: a hard-linked copy of an OUT pibridge wrote, then `edits` applied to d/out."""
    def both(shared: B.Shared, d: Path) -> None:
        make(shared, d)
        B.link_copy(shared.out, d / "out")
        for edit in edits:
            edit(d / "out")
    return both


def symlink(name: str, target: str) -> Callable[[Path], None]:
    return lambda d: (d / name).symlink_to(target)


def move_to_symlink(rel: str, dest: str) -> Callable[[Path], None]:
    """Move d/rel to d/dest and leave a (relative) symlink at d/rel pointing there."""
    def edit(d: Path) -> None:
        (d / dest).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).rename(d / dest)
        (d / rel).symlink_to(os.path.relpath(d / dest, (d / rel).parent))
    return edit


def drop_file_list(o: Path) -> None:
    doc = json.loads((o / "pibridge.json").read_text())
    doc.pop("files")
    B.replace_file(o / "pibridge.json", json.dumps(doc).encode())


def tree(shapes: Callable[[], dict], poison: tuple | None = None) -> Callable[[B.Shared, Path], None]:
    return lambda shared, d: B.write_tree(d / "ck", shapes(), shared.ck, poison)


def with_leaf(path: tuple[str, ...], shape: tuple[int, ...]) -> Callable[[], dict]:
    return lambda: {**B.tiny_shapes(), path: shape}


def without_leaf(path: tuple[str, ...]) -> Callable[[], dict]:
    return lambda: {p: s for p, s in B.tiny_shapes().items() if p != path}


def rm(rel: str) -> Callable[[Path], None]:
    def edit(c: Path) -> None:
        p = c / rel
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return edit


def write(rel: str, data: bytes) -> Callable[[Path], None]:
    return lambda c: B.replace_file(c / rel, data)


def half_metadata(c: Path) -> None:
    B.truncate(c / "params" / "_METADATA", (c / "params" / "_METADATA").stat().st_size // 2)


def loop_params(c: Path) -> None:
    shutil.rmtree(c / "params")
    (c / "params").symlink_to("params")


def stats(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda c: B.edit_norm_stats(c, edit)


def set_stat(key: str, field: str, fn: Callable[[list], list]) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        doc[key][field] = fn(doc[key][field])
    return edit


def two_asset_ids(c: Path) -> None:
    text = (c / "assets" / "droid" / "norm_stats.json").read_text()
    shutil.rmtree(c / "assets")
    B.write_norm_stats(c, "robot_a", text)
    B.write_norm_stats(c, "robot_b", text)


def trossen_only(c: Path) -> None:
    """The only norm stats a 14-dim ALOHA (trossen) asset, as in issue 15."""
    from pibridge.convert.normstats import serialize, synthesize

    shutil.rmtree(c / "assets")
    B.write_norm_stats(c, "trossen", serialize(synthesize(0, {"state": 14, "actions": 14})))


def file_named(name: str, data: bytes = b"not a checkpoint\n") -> Callable[[B.Shared, Path], None]:
    return lambda shared, d: (d / name).write_bytes(data)


def symlink_loop(shared: B.Shared, d: Path) -> None:
    (d / "ck").symlink_to("ck")


def traces(a: list, b: list) -> Callable[[B.Shared, Path], None]:
    def make(shared: B.Shared, d: Path) -> None:
        B.write_trace_file(d / "a", a)
        B.write_trace_file(d / "b", b)
    return make


def traces_and_tolerances(rules: object, b_scale: float = 0.0) -> Callable[[B.Shared, Path], None]:
    def make(shared: B.Shared, d: Path) -> None:
        traces(B.trace_stages(), B.trace_stages(scale=b_scale))(shared, d)
        (d / "tol.json").write_text(rules if isinstance(rules, str) else json.dumps(rules))
    return make


def float16_trace_b(shared: B.Shared, d: Path) -> None:
    traces(B.trace_stages(), B.trace_stages())(shared, d)
    from pibridge.parity.tensorfile import load_tensors, save_tensors
    from pibridge.parity.trace import TRACE_KEY

    tensors, doc = load_tensors(d / "b", TRACE_KEY, what="trace", made_by="", fix="")
    tensors[st.IMG_EMBED] = tensors[st.IMG_EMBED].astype(np.float16)
    (d / "b").unlink()
    save_tensors(d / "b", tensors, TRACE_KEY, doc)


def corrupt_b(shared: B.Shared, d: Path) -> None:
    traces(B.trace_stages(), B.trace_stages())(shared, d)
    B.truncate(d / "b", (d / "b").stat().st_size - 40)


def capture_inputs(obs: Callable[[Path], None]) -> Callable[[B.Shared, Path], None]:
    def make(shared: B.Shared, d: Path) -> None:
        B.link_copy(shared.ck, d / "ck")
        obs(d / "obs")
    return make


def raw_obs(**images: np.ndarray) -> Callable[[Path], None]:
    return lambda p: B.write_raw_observation(p, images)


def corrupt_obs(p: Path) -> None:
    B.write_raw_observation(p, {"base_0_rgb": np.zeros((1, 24, 32, 3), np.uint8)})
    B.flip_bit(p, 3, 6)  # inside the 8-byte header length: the file no longer parses


RGB = (1, 24, 32, 3)
LONG_PROMPT = " ".join(["pick up the red block and place it carefully in the blue bin"] * 40)


# --- the table ----------------------------------------------------------------------------------------------

CASES: tuple[Case, ...] = (
    # checkpoint input
    Case("ckpt-missing", "checkpoint", "CKPT path does not exist", nothing, CONVERT, 2, ("ck does not exist",)),
    Case("ckpt-is-file", "checkpoint", "CKPT is a regular file", file_named("ck"), CONVERT, 2,
         ("is a file, not a directory",)),
    Case("ckpt-empty-dir", "checkpoint", "CKPT is an empty directory", lambda s, d: (d / "ck").mkdir(), CONVERT, 2,
         ("has no params/ directory",)),
    Case("params-missing", "checkpoint", "CKPT has assets/ but no params/", ck(rm("params")), CONVERT, 2,
         ("has no params/ directory",)),
    Case("metadata-truncated", "checkpoint", "params/_METADATA cut in half", ck(half_metadata), CONVERT, 2,
         ("cannot parse", "_METADATA", "JSONDecodeError")),
    Case("metadata-not-orbax", "checkpoint", "params/_METADATA is JSON without tree_metadata",
         ck(write("params/_METADATA", b'{"version": 1}')), CONVERT, 2, ("cannot parse", "KeyError: 'tree_metadata'")),
    Case("metadata-missing", "checkpoint", "params/_METADATA deleted", ck(rm("params/_METADATA")), CONVERT, 2,
         ("params has no _METADATA file",)),
    Case("data-file-deleted", "checkpoint", "largest data file under params/ocdbt.process_0/d/ deleted",
         ck(lambda c: B.data_files(c)[0].unlink()), CONVERT, 2, ("is damaged or missing", "Zstd")),
    Case("data-file-truncated", "checkpoint", "largest data file cut to 1 MB",
         ck(lambda c: B.truncate(B.data_files(c)[0], 1 << 20)), CONVERT, 2, ("is damaged or missing", "byte range")),
    Case("node-file-truncated", "checkpoint", "OCDBT b-tree node file (params/d/) cut to 1000 bytes",
         ck(lambda c: B.truncate(B.node_file(c), 1000)), CONVERT, 2, ("is damaged or missing", "byte range")),
    Case("bitflip-zstd-frame", "checkpoint", "one bit flipped in a zstd frame header of the largest data file",
         ck(lambda c: B.flip_bit(B.data_files(c)[0], 5)), CONVERT, 2, ("is damaged or missing", "ZSTD")),
    Case("bitflip-node", "checkpoint", "one bit flipped inside an OCDBT b-tree node (CRC-32C protected)",
         ck(lambda c: B.flip_bit(B.node_file(c), 100)), CONVERT, 2, ("is damaged or missing", "CRC-32C")),
    Case("bitflip-payload", "checkpoint", "one bit flipped in the middle of stored float data (a zstd block payload)",
         ck(lambda c: B.flip_bit(B.data_files(c)[0], 30_000_000)), CONVERT, 2, ("fingerprint",)),
    Case("leaf-wrong-shape", "checkpoint", "llm mlp/linear stored with a wrong mlp dim",
         tree(with_leaf(MLP, (4, 100, 64))), CONVERT, 2, ("inconsistent with the detected sizes", "mlp/linear")),
    Case("leaf-missing", "checkpoint", "action-expert mlp_1/linear absent",
         tree(without_leaf(MLP[:3] + ("mlp_1", "linear"))), CONVERT, 2, ("unfilled destination keys", "down_proj")),
    Case("leaf-extra", "checkpoint", "an unknown extra leaf PaliGemma/llm/extra_leaf",
         tree(with_leaf(("PaliGemma", "llm", "extra_leaf"), (3,))), CONVERT, 2,
         ("unconsumed source leaves", "PaliGemma/llm/extra_leaf")),
    Case("roles-mixed", "checkpoint", "pi05 tree plus pi0's state_proj",
         tree(with_leaf(("state_proj", "kernel"), (32, 64))), CONVERT, 2, ("mixes pi0 roles", "state_proj")),
    Case("weight-nan", "checkpoint", "NaN in action_in_proj/bias", tree(B.tiny_shapes, (BIAS, np.nan)), CONVERT, 2,
         ("action_in_proj/bias contains NaN or Inf", "--allow-nonfinite")),
    Case("weight-inf", "checkpoint", "+Inf in action_in_proj/bias", tree(B.tiny_shapes, (BIAS, np.inf)), CONVERT, 2,
         ("action_in_proj/bias contains NaN or Inf",)),
    Case("weight-nan-allowed", "checkpoint", "NaN in a weight with the opt-out --allow-nonfinite: converted",
         tree(B.tiny_shapes, (BIAS, np.nan)), CONVERT + ("--allow-nonfinite",), 0, ("wrote out",), writes="out"),
    Case("lora-leaves", "checkpoint", "a LoRA factor without its partner (lora_a, no lora_b)",
         tree(with_leaf(MLP[:3] + ("attn", "q_einsum", "lora_a"), (4, 8, 64, 2))), CONVERT, 2,
         ("without its partner", "not an OpenPI LoRA fine-tune")),
    Case("pi0-fast", "checkpoint", "a pi0-FAST tree (PaliGemma without action expert)", tree(B.fast_shapes),
         CONVERT, 2, ("pi0-FAST",)),
    Case("tiny-without-allow-tiny", "checkpoint", "test-size model without --allow-tiny", ck(),
         tuple(a for a in CONVERT if a != "--allow-tiny"), 2, ("sizes LeRobot cannot build", "--allow-tiny")),
    Case("symlink-loop-ckpt", "checkpoint", "CKPT is a symlink to itself", symlink_loop, CONVERT, 2,
         ("symlink loop",)),
    Case("symlink-loop-params", "checkpoint", "CKPT/params is a symlink to itself", ck(loop_params), CONVERT, 2,
         ("params is a symlink loop",)),
    Case("inspect-node-damaged", "checkpoint", "`inspect` on a checkpoint whose b-tree node fails its CRC",
         ck(lambda c: B.flip_bit(B.node_file(c), 100)), ("inspect", "ck"), 2, ("is damaged or missing", "CRC-32C")),
    Case("force-over-out-damaged-input", "checkpoint", "--force over an existing OUT, data file truncated: "
         "old OUT kept byte-identical", own_out(ck(lambda c: B.truncate(B.data_files(c)[0], 1 << 20))),
         CONVERT + ("--force",), 2, ("is damaged or missing",)),
    # norm stats
    Case("normstats-missing", "norm stats", "no assets/ directory", ck(rm("assets")), CONVERT, 2,
         ("no norm_stats.json under", "copy the checkpoint's assets/")),
    Case("normstats-ambiguous", "norm stats", "two asset ids, none matches the profile, no --asset-id",
         ck(two_asset_ids), CONVERT, 2, ("2 norm-stats asset ids", "--asset-id")),
    Case("asset-id-unknown", "norm stats", "--asset-id names no assets/ entry", ck(), CONVERT + ("--asset-id", "nope"),
         2, ("no assets/nope/norm_stats.json",)),
    Case("normstats-malformed", "norm stats", "norm_stats.json is not JSON",
         ck(write("assets/droid/norm_stats.json", b'{"norm_stats": {"state": [')), CONVERT, 2,
         ("cannot read norm stats",)),
    Case("normstats-no-actions", "norm stats", "norm_stats.json without an actions entry",
         ck(stats(lambda doc: doc.pop("actions"))), CONVERT, 2, ("norm stats lack",)),
    Case("normstats-wrong-dims", "norm stats", "state stats of width 5 for a profile with state dim 8",
         ck(stats(lambda doc: doc.update(state={k: v[:5] for k, v in doc["state"].items()}))), CONVERT, 2,
         ("`state` have width 5", "--state-dim")),
    Case("normstats-ragged", "norm stats", "state mean and std of different lengths",
         ck(stats(set_stat("state", "std", lambda v: v[:3]))), CONVERT, 2, ("vectors have different shapes",)),
    Case("normstats-q01-above-q99", "norm stats", "q01 > q99 in one action dim",
         ck(stats(set_stat("actions", "q01", lambda v: [100.0] + v[1:]))), CONVERT, 2, ("actions: q01 > q99",)),
    Case("normstats-nan", "norm stats", "NaN in the state mean",
         ck(stats(set_stat("state", "mean", lambda v: [float("nan")] + v[1:]))), CONVERT, 2,
         ("norm stats state.mean contain NaN or Inf",)),
    # profile and camera map
    Case("profile-asset-dims-mismatch", "profile", "--profile pi05_droid (8 dims) on a checkpoint whose only norm "
         "stats are a 14-dim trossen asset", ck(trossen_only), CONVERT, 2,
         ("`state` have width 14", "asset 'trossen'", "profile 'pi05_droid' has state_dim 8", "pi05_aloha",
          "--profile")),
    Case("profile-unknown", "profile", "--profile names no shipped profile", ck(),
         ("convert", "ck", "out", "--profile", "pi05_nope", "--allow-tiny", "--camera-map", B.CAMS), 2,
         ("unknown profile 'pi05_nope'", "pi05_droid")),
    Case("profile-file-unknown-field", "profile", "a --profile file with a field pibridge does not know",
         profile_file(lambda d: d.update(camera_fps=30)), PFILE, 2,
         ("prof.json has unknown field(s) camera_fps", "fields among name, model", "delta_action_mask")),
    Case("profile-file-missing-field", "profile", "a --profile file without a required field (norm)",
         profile_file(lambda d: d.pop("norm")), PFILE, 2, ("prof.json lacks the required field(s) norm",)),
    Case("profile-file-mask-length", "profile", "a --profile file whose delta_action_mask has 6 entries for 8 action dims",
         profile_file(lambda d: d.update(delta_action_mask=[True] * 6)), PFILE, 2,
         ("delta_action_mask has 6 entries but action_dim is 8", "pad with -n")),
    Case("profile-file-unknown-robot", "profile", "a --profile file naming an unknown robot family",
         profile_file(lambda d: d.update(robot="ur5")), PFILE, 2,
         ("unknown robot family: robot 'ur5' not in aloha, droid, libero, none",)),
    Case("profile-file-not-json", "profile", "a --profile file that is not JSON", profile_file(None, "{name: x"),
         PFILE, 2, ("prof.json is not readable JSON",)),
    Case("profile-file-missing", "profile", "--profile names a .json file that does not exist", ck(),
         PFILE[:4] + ("nope.json",) + PFILE[5:], 2, ("profile file nope.json does not exist", "pi05_droid")),
    Case("profile-wrong-model", "profile", "a pi0 profile for a pi05 checkpoint", ck(),
         ("convert", "ck", "out", "--profile", "pi0_droid", "--allow-tiny", "--camera-map", B.CAMS), 2,
         ("pi05 model but profile 'pi0_droid'",)),
    Case("camera-map-missing-slot", "profile", "--camera-map leaves out a slot the policy uses", ck(),
         CONVERT[:-1] + ("base_0_rgb=top",), 2, ("no LeRobot camera name for slot left_wrist_0_rgb",)),
    Case("camera-map-slot-twice", "profile", "--camera-map names a slot twice", ck(),
         CONVERT[:-1] + ("base_0_rgb=top,base_0_rgb=side,left_wrist_0_rgb=wrist",), 2,
         ("base_0_rgb given twice",)),
    Case("camera-map-unknown-slot", "profile", "--camera-map names an unknown OpenPI slot", ck(),
         CONVERT[:-1] + ("base_rgb=top,left_wrist_0_rgb=wrist",), 2, ("unknown OpenPI image slot(s) base_rgb",)),
    Case("camera-map-bad-lerobot-name", "profile", "--camera-map gives an invalid LeRobot camera name", ck(),
         CONVERT[:-1] + ("base_0_rgb=observation.images.top,left_wrist_0_rgb=wrist",), 2,
         ("observation.images.top", "invalid")),
    Case("camera-map-name-twice", "profile", "--camera-map gives one LeRobot name to two slots", ck(),
         CONVERT[:-1] + ("base_0_rgb=top,left_wrist_0_rgb=top",), 2, ("used twice",)),
    # output
    Case("out-exists", "output", "OUT exists, no --force: refused, untouched", also_out(ck()), CONVERT, 2,
         ("already exists", "--force")),
    Case("out-inside-ckpt", "output", "OUT inside CKPT", ck(),
         ("convert", "ck", "ck/out") + CONVERT[3:], 2, ("is inside the checkpoint",)),
    Case("out-is-file", "output", "OUT is an existing file, --force", lambda s, d: (ck()(s, d), file_named("out")(s, d)),
         CONVERT + ("--force",), 2, ("exists and is not a directory",)),
    # output: --force and overlaps (issue 15): never an input, never what pibridge did not write
    Case("out-contains-ckpt-dot", "output", "`convert ./ck . --force` run in CKPT's parent (OUT contains CKPT)",
         at("ck"), ("convert", "./ck", ".", "--force") + FLAGS, 2, ("output . contains the checkpoint ck",)),
    Case("out-contains-ckpt-named", "output", "`convert danger/2000 danger --force` (OUT is CKPT's parent)",
         at("danger/2000"), ("convert", "danger/2000", "danger", "--force") + FLAGS, 2,
         ("output danger contains the checkpoint danger/2000",)),
    Case("out-contains-ckpt-no-force", "output", "OUT is CKPT's parent, without --force: the overlap is named",
         at("danger/2000"), ("convert", "danger/2000", "danger") + FLAGS, 2,
         ("output danger contains the checkpoint",)),
    Case("out-contains-ckpt-symlink", "output", "OUT is a symlink to CKPT's parent, --force",
         at("danger/2000", symlink("lnk", "danger")), ("convert", "danger/2000", "lnk", "--force") + FLAGS, 2,
         ("output lnk contains the checkpoint danger/2000",)),
    Case("out-contains-ckpt-dotdot", "output", "OUT spelled CKPT/.., --force",
         at("danger/2000"), ("convert", "danger/2000", "danger/2000/..", "--force") + FLAGS, 2,
         ("contains the checkpoint danger/2000",)),
    Case("out-contains-ckpt-symlink-dotdot", "output", "CKPT a symlink `step` to danger/2000, OUT `step/..` (the "
         "kernel's .. is danger, the spelled one the case directory), --force",
         at("danger/2000", symlink("step", "danger/2000")), ("convert", "step", "step/..", "--force") + FLAGS, 2,
         ("output step/.. contains the checkpoint step",)),
    Case("out-contains-params-symlink", "output", "CKPT/params a symlink into store/, OUT store, --force",
         at("ck", move_to_symlink("ck/params", "store/params")), ("convert", "ck", "store", "--force") + FLAGS, 2,
         ("output store contains the checkpoint params",)),
    Case("out-contains-norm-stats-symlink", "output", "CKPT's norm_stats.json a symlink into stats/, OUT stats, "
         "--force", at("ck", move_to_symlink("ck/assets/droid/norm_stats.json", "stats/norm_stats.json")),
         ("convert", "ck", "stats", "--force") + FLAGS, 2, ("output stats contains the norm stats of asset 'droid'",)),
    Case("out-contains-tokenizer", "output", "--tokenizer inside OUT, --force",
         own_out(ck(), lambda o: shutil.copyfile(B.TOKENIZER, o / "tok.model")),
         CONVERT + ("--force", "--tokenizer", "out/tok.model"), 2, ("output out contains the tokenizer out/tok.model",)),
    Case("out-inside-ckpt-symlink", "output", "OUT inside CKPT through a symlink to CKPT",
         at("ck", symlink("lnk", "ck")), ("convert", "ck", "lnk/out") + FLAGS, 2, ("is inside the checkpoint",)),
    Case("force-foreign-file", "output", "--force over pibridge's OUT plus a notes.txt of the user's",
         own_out(ck(), lambda o: (o / "notes.txt").write_text("my notes\n")), CONVERT + ("--force",), 2,
         ("out/notes.txt, which was not written by pibridge", "move notes.txt out of out")),
    Case("force-foreign-dir", "output", "--force over pibridge's OUT plus an empty logs/ directory",
         own_out(ck(), lambda o: (o / "logs").mkdir()), CONVERT + ("--force",), 2,
         ("out/logs, which was not written by pibridge",)),
    Case("force-foreign-symlink", "output", "--force over pibridge's OUT plus a symlink to the checkpoint in it",
         own_out(ck(), lambda o: (o / "data").symlink_to("../ck")), CONVERT + ("--force",), 2,
         ("out/data, which was not written by pibridge",)),
    Case("force-modified-file", "output", "--force over pibridge's OUT whose config.json the user edited",
         own_out(ck(), lambda o: B.replace_file(o / "config.json", o.joinpath("config.json").read_bytes() + b" ")),
         CONVERT + ("--force",), 2, ("out/config.json, which was modified after pibridge wrote it",)),
    Case("force-modified-same-size", "output", "--force over pibridge's OUT, one bit of model.safetensors flipped",
         own_out(ck(), lambda o: B.flip_bit(o / "model.safetensors", 1 << 20)), CONVERT + ("--force",), 2,
         ("model.safetensors, which was modified after pibridge wrote it (same size",)),
    Case("force-not-pibridge-dir", "output", "--force over a directory without pibridge.json",
         also_out(ck()), CONVERT + ("--force",), 2, ("in a directory pibridge did not write (no pibridge.json)",)),
    Case("force-no-file-list", "output", "--force over an OUT whose pibridge.json has no `files` list",
         own_out(ck(), drop_file_list), CONVERT + ("--force",), 2, ("has no list of the files pibridge wrote",)),
    Case("ok-no-overlap", "output", "positive control: `convert danger/2000 danger-lerobot`, no overlap",
         at("danger/2000"), ("convert", "danger/2000", "danger-lerobot") + FLAGS, 0, ("wrote danger-lerobot",),
         writes="danger-lerobot"),
    Case("ok-empty-dir-out", "output", "positive control: OUT an existing empty directory, no --force",
         lambda s, d: (ck()(s, d), (d / "out").mkdir()), CONVERT, 0, ("wrote out",), writes="out"),
    Case("ok-force-own-out", "output", "positive control: --force over pibridge's own unmodified OUT",
         own_out(ck()), CONVERT + ("--force",), 0, ("wrote out",), writes="out"),
    Case("ok-force-own-out-file-deleted", "output", "positive control: --force over pibridge's OUT missing a file "
         "it listed (nothing foreign to lose)", own_out(ck(), lambda o: (o / "config.json").unlink()),
         CONVERT + ("--force",), 0, ("wrote out",), writes="out"),
    Case("debug-shows-traceback", "output", "--debug (anywhere on the line): the same refusal, its traceback, the same exit code",
         nothing, CONVERT[:1] + ("--debug",) + CONVERT[1:], 2, ("Traceback", "PibridgeError", "ck does not exist"),
         traceback=True),
    # parity
    Case("compare-disjoint-stages", "parity", "traces without a common stage",
         traces(B.trace_stages((st.INPUT_STATE,)), B.trace_stages((st.ACTIONS,))), COMPARE, 2, ("share no stage",)),
    Case("compare-partial-stages", "parity", "B lacks a stage of A: reported, the common stages compared",
         traces(B.trace_stages(), B.trace_stages((st.INPUT_STATE, st.ACTIONS))), COMPARE, 0,
         ("stages only in A (not compared): img/embed", "PASS")),
    Case("compare-shape-mismatch", "parity", "a stage with different shapes", traces(
        B.trace_stages(), B.trace_stages(shapes={st.IMG_EMBED: (1, 4, 9)})), COMPARE, 1,
         ("first diverging stage img/embed (shape-mismatch)",)),
    Case("compare-dtype-mismatch", "parity", "a stage stored as float16 (not a pibridge trace)", float16_trace_b,
         COMPARE, 2, ("stage 'img/embed' has dtype float16", "float32")),
    Case("compare-trace-corrupted", "parity", "trace B truncated by 40 bytes", corrupt_b, COMPARE, 2,
         ("trace file b is unreadable or corrupted",)),
    Case("compare-trace-missing", "parity", "trace B does not exist",
         lambda s, d: B.write_trace_file(d / "a", B.trace_stages()), COMPARE, 2, ("trace file b not found",)),
    Case("compare-not-a-trace", "parity", "an observation file given as trace B",
         lambda s, d: (B.write_trace_file(d / "a", B.trace_stages()), shutil.copyfile(s.obs, d / "b")), COMPARE, 2,
         ("b is not a pibridge trace file",)),
    Case("tolerance-unknown-pattern", "parity", "a tolerance rule matching no stage: reported, not an error",
         traces_and_tolerances({"rules": [
             {"pattern": "nope/*", "precision": "*", "max_abs": 0.0, "min_cosine": 1.0},
             {"pattern": "*", "precision": "*", "max_abs": 1e-6, "min_cosine": 0.99999}]}),
         COMPARE + ("--tolerances", "tol.json"), 0, ("tolerance patterns that matched no stage: nope/*", "PASS")),
    Case("tolerance-file-malformed", "parity", "tolerance file with a misspelt field",
         traces_and_tolerances({"rules": [{"patern": "*", "precision": "*", "max_abs": 0.1, "min_cosine": 0.9}]}),
         COMPARE + ("--tolerances", "tol.json"), 2, ("tolerance file tol.json is invalid", "patern")),
    Case("tolerance-failure", "parity", "a real tolerance failure (contrast: exit 1)",
         traces_and_tolerances({"rules": [{"pattern": "*", "precision": "*", "max_abs": 1e-3, "min_cosine": 0.9999}]},
                               b_scale=0.01),
         COMPARE + ("--tolerances", "tol.json"), 1, ("parity failed: first diverging stage input/state (fail)",)),
    Case("run-html-dir-missing", "parity", "`parity run --html` into a missing directory: refused before any capture",
         own_out(ck()), RUN + ("--html", "nope/report.html"), 2, ("--html nope/report.html: directory nope does not exist",)),
    Case("run-out-from-other-norm-stats", "parity", "`parity run` with a checkpoint whose norm stats differ from the "
         "ones OUT was converted with: refused before any capture",
         own_out(ck(stats(set_stat("state", "mean", lambda v: [v[0] + 1.0] + v[1:])))), RUN, 2,
         ("was converted with the norm stats of asset 'droid'",)),
    Case("capture-obs-misses-a-camera", "parity", "`parity capture --stack torch` with an observation lacking a camera "
         "OUT fills: refused before torch starts", own_out(capture_inputs(raw_obs(base_0_rgb=np.zeros(RGB, np.uint8)))),
         ("parity", "capture", "--stack", "torch", "--lerobot", "out", "--obs", "obs", "--out", "trace"), 2,
         ("does not fit OUT's profile 'pi05_droid'", "no image for slot(s) left_wrist_0_rgb")),
    Case("obs-missing", "parity", "capture with an observation path that does not exist",
         capture_inputs(lambda p: None), CAPTURE, 2, ("observation file obs not found",)),
    Case("obs-corrupted", "parity", "capture with a corrupted observation file", capture_inputs(corrupt_obs),
         CAPTURE, 2, ("observation file obs is unreadable or corrupted",)),
    Case("obs-grayscale", "parity", "observation image without a channel axis (grayscale)",
         capture_inputs(raw_obs(base_0_rgb=np.zeros(RGB[:3], np.uint8))), CAPTURE, 2,
         ("invalid observation", "image base_0_rgb: uint8 (1, 24, 32)")),
    Case("obs-float-image", "parity", "observation image stored as float32 in [0, 1]",
         capture_inputs(raw_obs(base_0_rgb=np.zeros(RGB, np.float32))), CAPTURE, 2,
         ("invalid observation", "image base_0_rgb: float32")),
    Case("obs-image-empty", "parity", "observation image of height 0",
         capture_inputs(raw_obs(base_0_rgb=np.zeros((1, 0, 32, 3), np.uint8))), CAPTURE, 2,
         ("invalid observation", "0x32 pixels")),
    Case("obs-image-sliver", "parity", "a 1x1000 image: resize-with-pad to 224x224 leaves 0 rows",
         capture_inputs(raw_obs(base_0_rgb=np.zeros((1, 1, 1000, 3), np.uint8))), CAPTURE, 2,
         ("invalid observation", "1x1000 pixels")),
    Case("obs-unknown-slot", "parity", "observation with a camera slot OpenPI does not have",
         capture_inputs(raw_obs(top=np.zeros(RGB, np.uint8))), CAPTURE, 2, ("unknown camera slot 'top'",)),
    Case("obs-profile-unknown", "parity", "`parity obs` for an unknown profile", nothing,
         ("parity", "obs", "obs", "--profile", "pi05_nope"), 2, ("unknown profile 'pi05_nope'",)),
    Case("obs-long-prompt-odd-sizes", "parity", "prompt over the token budget + 7x301 / 3x5 images: accepted, the "
         "prompt truncated with OpenPI's warning", capture_inputs(lambda p: B.write_valid_observation(
             p, LONG_PROMPT, {"base_0_rgb": (7, 301), "left_wrist_0_rgb": (3, 5)})),
         CAPTURE + ("--steps", "1", "--tokenizer", str(B.TOKENIZER)), 0, ("exceeds max length (200), truncating",
                                                                          "wrote trace"), writes="trace", slow=True),
)
