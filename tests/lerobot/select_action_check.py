"""Run inside a LeRobot venv: each OUT loaded as lerobot-eval loads it (register_third_party_plugins, then
PI05Policy / PI0Policy.from_pretrained + make_pre_post_processors), then select_action run for two ticks on a
random frame. One JSON line per OUT: {"out", "plugin" (the plugin module's file), "stderr": [text printed on stderr
during tick 1, tick 2], "action": the postprocessed first action}.   python select_action_check.py OUT...
(tiny variants: pibridge.parity.stacks.lerobot.tiny is applied first.)"""

import contextlib
import io
import json
import sys

import torch

from pibridge.parity.stacks.lerobot.tiny import apply

apply()
from lerobot.policies.factory import make_pre_post_processors  # noqa: E402
from lerobot.utils.import_utils import register_third_party_plugins  # noqa: E402

register_third_party_plugins()
import lerobot_policy_pibridge  # noqa: E402  (imported by the call above; here for its path)

for out in sys.argv[1:]:
    model = json.load(open(f"{out}/config.json"))["type"]
    if model == "pi05":
        from lerobot.policies.pi05.modeling_pi05 import PI05Policy as Policy
    else:
        from lerobot.policies.pi0.modeling_pi0 import PI0Policy as Policy
    policy = Policy.from_pretrained(out)
    policy.eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=out,
                                         preprocessor_overrides={"device_processor": {"device": "cpu"}})
    gen = torch.Generator().manual_seed(0)
    frame = {k: torch.rand((1, *f.shape), generator=gen) for k, f in policy.config.input_features.items()}
    frame["task"] = ["pick up the cube"]
    printed, first = [], None
    for _ in range(2):
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf), torch.no_grad():
            action = post(policy.select_action(pre(dict(frame))))
        printed.append(buf.getvalue())
        first = action.tolist() if first is None else first
    print(json.dumps({"out": out, "plugin": lerobot_policy_pibridge.__file__, "stderr": printed, "action": first}))
