"""Run inside a LeRobot venv (any cwd): for each OUT given, build its processors the way a user script does,
`make_pre_post_processors(cfg, pretrained_path=OUT)` (the policy config only selects special cases there, so a
plain object stands in): first as LeRobot alone, then after LeRobot's own `register_third_party_plugins()` (what
lerobot-eval / lerobot-record do). One JSON line per load: {"mode", "out", "ok", "tokenizer", "device" | "error"}.

    python tests/lerobot/travel_check.py OUT...
"""

import json
import sys

from lerobot.policies.factory import make_pre_post_processors
from lerobot.utils.import_utils import register_third_party_plugins


def load_all(mode: str) -> None:
    for out in sys.argv[1:]:
        try:
            pre, _ = make_pre_post_processors(object(), pretrained_path=out)
            tok = [s for s in pre.steps if type(s).__name__.startswith("Tokenizer")][0]
            dev = [s for s in pre.steps if type(s).__name__ == "DeviceProcessorStep"][0]
            print(json.dumps({"mode": mode, "out": out, "ok": True, "tokenizer": tok.input_tokenizer.name_or_path,
                              "device": dev.device}))
        except Exception as err:  # noqa: BLE001  (the outcome is the measurement)
            print(json.dumps({"mode": mode, "out": out, "ok": False,
                              "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}))


load_all("lerobot")
register_third_party_plugins()
load_all("plugins registered")
