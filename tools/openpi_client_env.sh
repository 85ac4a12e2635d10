#!/usr/bin/env bash
# Build .venvs/openpi-client: OpenPI's real client package (openpi-client on PyPI, the same code as OpenPI's
# packages/openpi-client) on Python 3.11, for the `pibridge serve` tests (tests/test_serve.py): the real
# WebsocketClientPolicy queries pibridge's server and the real msgpack_numpy encodes the golden bytes.
# Its own venv because openpi-client pins numpy<2 and LeRobot 0.6.1 needs numpy>=2 (no pibridge is installed there).
#
# Cached: the exact requirement string is recorded in .venvs/openpi-client/.pibridge-stamp; a rerun with the same
# string does nothing (~10 ms). Usage: tools/openpi_client_env.sh   Env: PY311 (interpreter), VENVS (default .venvs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY311:-}" ]; then
  for c in python3.11 /root/.pyenv/versions/3.11.7/bin/python; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then PY311="$c"; break; fi
  done
fi
[ -n "${PY311:-}" ] || { echo "openpi_client_env: no Python 3.11 found; set PY311=/path/to/python3.11" >&2; exit 2; }
VENVS="${VENVS:-.venvs}"
# 0.1.2 pulls websockets, msgpack, numpy<2, dm-tree, pillow; its websocket_client_policy.py imports
# typing_extensions, which it does not declare (ModuleNotFoundError without it)
REQ="openpi-client==0.1.2 typing_extensions"
dir="$VENVS/openpi-client"
if [ -f "$dir/.pibridge-stamp" ] && [ "$(cat "$dir/.pibridge-stamp")" = "$REQ" ]; then
  echo "openpi_client_env: $dir up to date" >&2
  exit 0
fi
echo "openpi_client_env: building $dir ($REQ)" >&2
rm -rf "$dir"
mkdir -p "$VENVS"
"$PY311" -m venv "$dir"
# shellcheck disable=SC2086
"$dir/bin/python" -m pip install -q --disable-pip-version-check $REQ
"$dir/bin/python" -c 'import importlib.metadata as md, numpy, openpi_client.websocket_client_policy; print("openpi-client", md.version("openpi-client"), "numpy", numpy.__version__, "websockets", md.version("websockets"), "msgpack", md.version("msgpack"))'
echo "$REQ" > "$dir/.pibridge-stamp"
