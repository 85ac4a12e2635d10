"""Run inside a LeRobot venv: load OUT the way lerobot-eval does and print what pibridge's plugin did, as JSON.

    python tests/lerobot/factory_check.py OUT [--tiny]
lerobot-eval (scripts/lerobot_eval.py, v0.6.1) calls register_third_party_plugins(), then make_policy(cfg, ...),
which resolves the class with get_policy_class(cfg.type) and calls policy_cls.from_pretrained(
pretrained_name_or_path=cfg.pretrained_path, config=cfg, revision=...) (policies/factory.py). Same calls here.
"""

import json
import runpy
import sys
from pathlib import Path

out = sys.argv[1]
if "--tiny" in sys.argv:
    runpy.run_path(str(Path(__file__).with_name("tiny_patch.py")))

import torch  # noqa: E402
from lerobot.configs.policies import PreTrainedConfig  # noqa: E402
from lerobot.policies.factory import get_policy_class  # noqa: E402
from lerobot.utils.import_utils import register_third_party_plugins  # noqa: E402

register_third_party_plugins()
cfg = PreTrainedConfig.from_pretrained(out)
cfg.pretrained_path = out
policy = get_policy_class(cfg.type).from_pretrained(pretrained_name_or_path=cfg.pretrained_path, config=cfg,
                                                    revision=None)
inv = [m.inv_freq.dtype for m in policy.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
print(json.dumps({"plugin": "lerobot_policy_pibridge" in sys.modules, "fixes": getattr(policy, "pibridge_fixes", None),
                  "dtype": cfg.dtype, "inv_freq_dtypes": sorted({str(d) for d in inv})}))
