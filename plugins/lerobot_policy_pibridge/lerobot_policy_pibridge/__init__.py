"""LeRobot third-party plugin: pibridge-converted policies get pibridge's load check and runtime fixes wherever
LeRobot loads them (lerobot-eval, lerobot-record, lerobot-rollout, make_policy, PI05Policy.from_pretrained).

LeRobot's scripts call `register_third_party_plugins()` (lerobot/utils/import_utils.py, v0.6.1), which imports
every installed distribution named `lerobot_policy_*`; importing this module wraps `from_pretrained` of
PI05Policy and PI0Policy. For a directory that holds pibridge.json (written by `pibridge convert`) the wrapper
1. checks the load (LeRobot only prints a warning on missing / unexpected keys and keeps random weights): raises
   PibridgeError naming the differences;
2. applies pibridge.fixes.runtime.apply_runtime_fixes for the installed transformers / LeRobot and the
   policy's runtime dtype (e.g. fp32 RoPE inv_freq in bf16; undo double scaling on LeRobot 0.5 + transformers 5.4+).
It also wraps the processor pipelines' `from_pretrained`: LeRobot <= 0.6.1 does not resolve a relative
tokenizer path, and `pibridge convert` writes OUT/tokenizer's absolute path into policy_preprocessor.json; when
that path is not this OUT's own tokenizer/ (OUT moved, or copied: the copy would silently use the source's) it
points the tokenizer step at OUT/tokenizer. Without the plugin, `python -m pibridge.convert.relocate OUT`
rewrites the stored path once.
Interpreter start: `python -m lerobot_policy_pibridge --install-hook` writes a .pth file into site-packages that
imports `_startup` (stdlib only), which wraps the two policy classes as soon as their modules are imported, so a
bare `PI05Policy.from_pretrained(OUT)` (no LeRobot script, no register_third_party_plugins) gets the load check
and the runtime fixes too.
A regular (non-editable) install puts lerobot_policy_pibridge_startup.pth into site-packages (setup.py);
editable installs do not carry it: `python -m lerobot_policy_pibridge --install-hook` writes it.
3. for an OUT with delta actions (pibridge.json host_transforms.delta_action_mask non-empty), makes the policy's
   `select_action` print a WARNING on stderr the first time it runs (once per policy): per-tick select_action loops
   re-anchor every queued action on the current state, and lerobot-rollout needs --inference.type=rtc
   (host_transforms.notes, pibridge.convert.convert.DELTA_NOTE).
4. keeps OpenPI's delta-action mask when LeRobot's make_policy has put a dataset's action names into the config
   (keep_openpi_mask: fine-tuning from OUT trains on OpenPI's action space).
It also registers the processor steps of OpenPI's host
transforms (lerobot_policy_pibridge.steps: default prompt, prompt cleaning, ALOHA adapt_to_pi) that
`pibridge convert` writes into OUT's processors.
Any other directory or hub id loads exactly as before. Switch off with PIBRIDGE_RUNTIME_FIXES=0.
Result on the policy: `policy.pibridge_fixes` {fix id: places changed}.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as md
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("lerobot_policy_pibridge")
POLICIES = (("lerobot.policies.pi05.modeling_pi05", "PI05Policy"), ("lerobot.policies.pi0.modeling_pi0", "PI0Policy"))


def _pibridge_dir(path) -> Path | None:
    from pibridge.provenance import is_pibridge_out

    p = Path(str(path)) if path is not None else None
    return p if p is not None and is_pibridge_out(p) else None


def after_load(policy, out: Path):
    """Load check + runtime fixes for a pibridge-converted directory; returns the policy."""
    from pibridge.parity.stacks.lerobot.loader import verify_load
    from pibridge.fixes.runtime import apply_runtime_fixes
    from pibridge.errors import PibridgeError

    check = verify_load(policy, out / "model.safetensors", "")
    if not check.ok:
        first = (check.missing + check.unexpected + check.wrong_shape + check.wrong_value)[:4]
        raise PibridgeError(f"LeRobot {md.version('lerobot')} did not load {out} completely: {len(check.missing)} "
                            f"missing, {len(check.unexpected)} unexpected, {len(check.wrong_shape)} wrong shape, "
                            f"{len(check.wrong_value)} unequal (first: {first})",
                            "every tensor of model.safetensors loaded", "convert for this LeRobot release")
    fixes = {}
    if os.environ.get("PIBRIDGE_RUNTIME_FIXES", "1") != "0":
        fixes = apply_runtime_fixes(policy, runtime_dtype=policy.config.dtype, lerobot_version=md.version("lerobot"))
    policy.pibridge_fixes = fixes
    log.info("pibridge: %s loaded (%d tensors checked), runtime fixes %s", out, check.keys, fixes)
    from pibridge.provenance import load_provenance

    host = load_provenance(out).get("host_transforms") or {}  # read once for both
    keep_openpi_mask(policy.config, out, host)
    warn_delta_select_action(policy, out, host)
    return policy


def keep_openpi_mask(config, out: Path, host: dict) -> bool:
    """LeRobot's make_policy overwrites config.action_feature_names with a dataset's action names (policies/
    factory.py:308-312, before from_pretrained), and lerobot-train builds the relative-actions step from them
    (scripts/lerobot_train.py:377-382), so a dataset whose names lack "gripper" would convert the grippers too. When
    the config's names / exclude_joints give another mask than OpenPI's (pibridge.json host_transforms), put OUT's
    recorded names and exclude token back and print a WARNING on stderr; returns whether it did. Names that give
    OpenPI's mask are kept (the dataset's order and names then reach the saved config). host: pibridge.json's
    host_transforms."""
    from pibridge.hostx import EXCLUDE_TOKEN, lerobot_relative_mask

    mask, recorded = list(host.get("delta_action_mask") or []), host.get("action_feature_names")
    if not any(mask) or not recorded or not hasattr(config, "action_feature_names"):
        return False
    dim = len(recorded)
    openpi = lerobot_relative_mask(recorded, [EXCLUDE_TOKEN], dim)
    names, exclude = config.action_feature_names, getattr(config, "relative_exclude_joints", None)
    found = lerobot_relative_mask(names, exclude, dim)
    if found == openpi:
        return False
    config.action_feature_names, config.relative_exclude_joints = list(recorded), [EXCLUDE_TOKEN]
    print(f"WARNING pibridge: {out} was trained with OpenPI's delta-action mask (relative dims "
          f"{[i for i, m in enumerate(openpi) if m]}), but the config's action_feature_names {names} with "
          f"relative_exclude_joints {exclude} (a dataset's names, set by make_policy) would make LeRobot's "
          f"relative-actions step convert dims {[i for i, m in enumerate(found) if m]}: kept OUT's names {recorded} "
          f"and exclude_joints ['{EXCLUDE_TOKEN}'], so training and inference keep OpenPI's mask.",
          file=sys.stderr, flush=True)
    return True


def warn_delta_select_action(policy, out: Path, host: dict) -> None:
    """Wrap policy.select_action (instance attribute) so that its first call prints a WARNING on stderr when OUT's
    actions are deltas; predict_action_chunk + the postprocessor over the chunk (what OpenPI's Policy does) stays
    silent. host: pibridge.json's host_transforms."""
    mask = host.get("delta_action_mask") or []
    if not any(mask) or getattr(policy.select_action, "_pibridge_delta_warning", False):
        return
    joints = [i for i, m in enumerate(mask) if m]
    notes = "; ".join(host.get("notes") or []) or "the postprocessor adds the state the preprocessor cached"
    message = (f"WARNING pibridge: {out} predicts delta actions (dims {joints} relative to the state, OpenPI's "
               f"delta_action_mask) and select_action runs it one tick at a time: {notes}. For OpenPI's actions, "
               "run predict_action_chunk and the postprocessor over the whole chunk (pibridge serve does).")
    original = policy.select_action
    warned = []

    @functools.wraps(original)
    def select_action(*args, **kwargs):
        if not warned:
            warned.append(True)
            print(message, file=sys.stderr, flush=True)
        return original(*args, **kwargs)

    select_action._pibridge_delta_warning = True
    policy.select_action = select_action  # nn.Module.__setattr__: a plain function lands in the instance __dict__


def _wrap(cls) -> None:
    original = cls.__dict__["from_pretrained"].__func__  # the classmethod's function
    if getattr(original, "_pibridge", False):
        return

    @functools.wraps(original)
    def from_pretrained(klass, pretrained_name_or_path=None, *args, **kwargs):
        policy = original(klass, pretrained_name_or_path, *args, **kwargs)
        if os.environ.get("PIBRIDGE_PLUGIN_WRAP") == "0":  # pibridge's own LeRobot capture does both itself
            return policy
        out = _pibridge_dir(pretrained_name_or_path)
        return after_load(policy, out) if out is not None else policy

    from_pretrained._pibridge = True
    cls.from_pretrained = classmethod(from_pretrained)


def tokenizer_override(out: Path, config_filename: str) -> dict:
    """{"tokenizer_processor": {"tokenizer_name": OUT/tokenizer}} when OUT bundles a tokenizer and the stored
    name is not that directory (gone after a move; the source's after a copy)."""
    import json

    cfg_path, local = out / config_filename, out / "tokenizer"
    if not cfg_path.is_file() or not local.is_dir():
        return {}
    for step in json.loads(cfg_path.read_text()).get("steps", []):
        name = step.get("config", {}).get("tokenizer_name")
        if step.get("registry_name") == "tokenizer_processor" and name and not _same_dir(Path(name), local):
            if Path(name).is_dir():
                log.warning("pibridge: %s names the tokenizer %s, not its own %s: using its own", cfg_path, name, local)
            return {"tokenizer_processor": {"tokenizer_name": str(local.resolve())}}
    return {}


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.is_absolute() and a.samefile(b)
    except OSError:
        return False


def _wrap_processors() -> None:
    from lerobot.processor.pipeline import DataProcessorPipeline

    original = DataProcessorPipeline.__dict__["from_pretrained"].__func__
    if getattr(original, "_pibridge", False):
        return

    @functools.wraps(original)
    def from_pretrained(klass, pretrained_model_name_or_path, config_filename, *args, overrides=None, **kwargs):
        out = _pibridge_dir(pretrained_model_name_or_path)
        extra = tokenizer_override(out, config_filename) if out is not None else {}
        if extra:
            overrides = {**(overrides or {}), **{k: {**(overrides or {}).get(k, {}), **v} for k, v in extra.items()}}
        return original(klass, pretrained_model_name_or_path, config_filename, *args, overrides=overrides, **kwargs)

    from_pretrained._pibridge = True
    DataProcessorPipeline.from_pretrained = classmethod(from_pretrained)


def install() -> list[str]:
    done = []
    try:
        from lerobot_policy_pibridge import steps  # noqa: F401 - registers OpenPI's host-transform steps

        done.append("steps")
    except ImportError as err:
        log.debug("pibridge plugin: processor steps not available (%s)", err)
    try:
        _wrap_processors()
        done.append("DataProcessorPipeline")
    except ImportError as err:
        log.debug("pibridge plugin: processor pipeline not available (%s)", err)
    for module, name in POLICIES:
        try:
            _wrap(getattr(importlib.import_module(module), name))
            done.append(name)
        except ImportError as err:  # e.g. lerobot without the [pi] extra: nothing to fix
            log.debug("pibridge plugin: %s not available (%s)", name, err)
    return done


INSTALLED = install()
