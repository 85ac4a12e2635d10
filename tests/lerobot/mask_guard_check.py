"""Run inside LeRobot 0.6.1: fine-tuning from a delta-action OUT set up the way lerobot-train sets it up
(scripts/lerobot_train.py:325-399): make_policy(cfg, ds_meta) with a dataset whose action names are not OUT's, then
make_pre_post_processors(pretrained_path=OUT) with lerobot-train's relative-actions overrides (names and exclude
joints from the config), then the preprocessor on one training batch. One JSON line on stdout:
{"same_config", "names", "mask" (the relative step's), "warning" (stderr of make_policy), "state", "action",
"target" (the normalized training target)}.   python mask_guard_check.py OUT
PIBRIDGE_PLUGIN_WRAP=0 switches the plugin's from_pretrained wrapper (load check, fixes, this guard) off."""

import contextlib
import io
import json
import sys

import torch

from pibridge.parity.stacks.lerobot.tiny import apply

apply()
from lerobot.configs.policies import PreTrainedConfig  # noqa: E402
from lerobot.policies.factory import make_policy, make_pre_post_processors  # noqa: E402
from lerobot.utils.import_utils import register_third_party_plugins  # noqa: E402

register_third_party_plugins()
out = sys.argv[1]
cfg = PreTrainedConfig.from_pretrained(out)
cfg.pretrained_path = out
dim = cfg.output_features["action"].shape[0]


class DatasetMeta:  # what make_policy reads of a LeRobotDatasetMetadata: features (names: the robot's motors)
    features = {"action": {"dtype": "float32", "shape": [dim], "names": [f"motor_{i}" for i in range(dim)]}}
    stats = None


err = io.StringIO()
with contextlib.redirect_stderr(err):
    policy = make_policy(cfg, ds_meta=DatasetMeta())
over = {"device_processor": {"device": "cpu"},  # lerobot_train.py:377-382
        "relative_actions_processor": {"enabled": True, "exclude_joints": getattr(cfg, "relative_exclude_joints", []),
                                       "action_names": getattr(cfg, "action_feature_names", None)}}
pre, _ = make_pre_post_processors(cfg, pretrained_path=out, preprocessor_overrides=over,
                                  postprocessor_overrides={"absolute_actions_processor": {"enabled": True}})
rel = next(s for s in pre.steps if type(s).__name__ == "RelativeActionsProcessorStep")
gen = torch.Generator().manual_seed(0)
batch = {k: torch.rand((2, *f.shape), generator=gen) for k, f in cfg.input_features.items()}
batch["observation.state"] = torch.rand((2, dim), generator=gen) * 2 - 1
batch["action"] = torch.rand((2, cfg.chunk_size, dim), generator=gen) * 2 - 1
batch["task"] = ["fold the towel"] * 2
target = pre(dict(batch))["action"]
print(json.dumps({"same_config": policy.config is cfg, "names": cfg.action_feature_names, "mask": rel._build_mask(dim),
                  "warning": [l for l in err.getvalue().splitlines() if "WARNING pibridge" in l],
                  "state": batch["observation.state"].tolist(), "action": batch["action"].tolist(),
                  "target": target.tolist()}))
