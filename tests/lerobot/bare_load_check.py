"""Run inside a LeRobot venv: `PI05Policy.from_pretrained(OUT)` called directly (no LeRobot script, no plugin
registration), optionally after the pibridge interpreter-start hook's .pth has been processed the way the
interpreter processes site-packages (`site.addsitedir(DIR)`). Prints JSON: the fixes the plugin applied (None: the
plugin never ran) and the dtypes of the RoPE inv_freq buffers.

    python tests/lerobot/bare_load_check.py OUT [HOOK_SITE_DIR]
"""

import json
import runpy
import site
import sys
from pathlib import Path

if len(sys.argv) > 2:
    site.addsitedir(sys.argv[2])  # what interpreter start does with the .pth files of site-packages
runpy.run_path(str(Path(__file__).with_name("tiny_patch.py")))  # test-only: LeRobot builds the tiny variant
from lerobot.policies.pi05.modeling_pi05 import PI05Policy  # noqa: E402

policy = PI05Policy.from_pretrained(sys.argv[1])
dtypes = sorted({str(b.dtype) for n, b in policy.named_buffers() if n.endswith("inv_freq")})
print(json.dumps({"fixes": getattr(policy, "pibridge_fixes", None), "inv_freq_dtypes": dtypes}))
