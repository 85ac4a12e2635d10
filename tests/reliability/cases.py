"""The bad-input case table (issue 8): one row per case, run through the real CLI by runner.run_case.

A case builds its inputs in its own empty directory (the command runs there, so paths in `args` are relative:
`ck` checkpoint, `out` output, `obs` observation, `a` / `b` traces, `tol.json` tolerances), then states what the
run must give: exit code (2 bad input, 1 parity tolerance failure, 0 where the behaviour is "accept and report"),
case-specific substrings of the output, and whether OUT may be written. Everything else in the directory must be
byte-identical afterwards, and no `.out.pibridge-*` temporaries may remain.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pibridge.parity import stages as st

from reliability import build as B

CONVERT = ("convert", "ck", "out", "--profile", B.PROFILE, "--allow-tiny", "--camera-map", B.CAMS)
COMPARE = ("parity", "compare", "a", "b")
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


def also_out(make: Callable[[B.Shared, Path], None]) -> Callable[[B.Shared, Path], None]:
    """`make`, plus an existing OUT directory holding a previous conversion's files."""
    def both(shared: B.Shared, d: Path) -> None:
        make(shared, d)
        (d / "out").mkdir()
        (d / "out" / "config.json").write_text('{"type": "pi05"}\n')
        (d / "out" / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    return both


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
         "old OUT kept byte-identical", also_out(ck(lambda c: B.truncate(B.data_files(c)[0], 1 << 20))),
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
    Case("profile-unknown", "profile", "--profile names no shipped profile", ck(),
         ("convert", "ck", "out", "--profile", "pi05_nope", "--allow-tiny", "--camera-map", B.CAMS), 2,
         ("unknown profile 'pi05_nope'", "pi05_droid")),
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
