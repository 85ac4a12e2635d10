"""Run inside a LeRobot venv: build OUT's processors with LeRobot's factory (as lerobot-eval does) and print the
tokenizer path the tokenizer step ended up with.   python tests/lerobot/processor_check.py OUT [--plugin]
(The policy config only selects special cases there (Groot, Evo1); a plain object avoids parsing the tiny config.)"""

import sys

from lerobot.policies.factory import make_pre_post_processors

if "--plugin" in sys.argv:
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()
pre, _ = make_pre_post_processors(object(), pretrained_path=sys.argv[1],
                                  preprocessor_overrides={"device_processor": {"device": "cpu"}})
print("tokenizer_name", [s for s in pre.steps if type(s).__name__.startswith("Tokenizer")][0].tokenizer_name)
