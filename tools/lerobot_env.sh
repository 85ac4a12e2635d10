#!/usr/bin/env bash
# Build the real-LeRobot environments used by tests/lerobot and `pibridge parity capture --stack lerobot`.
#
#   .venvs/_torch      one shared torch/torchvision install (pip --target), reused by all three venvs via a .pth
#   .venvs/lr-0.6.1    lerobot[pi]==0.6.1 (transformers 5.4/5.5) + pibridge's torch side (editable, no jax) with its
#                      [serve] extra (websockets, msgpack: `pibridge serve --lerobot` runs its server there)
#   .venvs/lr-0.5.1    lerobot[pi]==0.5.1 + transformers==5.3.0 (the blog's closest installable setup)
#   .venvs/lr-0.6.1-bare  lerobot[pi]==0.6.1 only: no pibridge, no plugin (what a user without pibridge has; the
#                      "without the plugin" tests load converted OUTs there). Names ending in -bare get nothing else.
#   .venvs/lr-0.5.0    lerobot[pi]==0.5.0 + transformers 5.5.x (the double-scaling combination its pin allows).
#                      Not built by default: on transformers >= 5.4 `import lerobot.policies` of 0.5.0 raises
#                      TypeError (groot/groot_n1.py:176, a dataclass over transformers' PretrainedConfig), so no
#                      pi05 can run there; tests/test_lerobot_real.py documents it when the venv exists.
#
# Why one shared torch: LeRobot needs Python >= 3.12 and torch < 2.11 (0.5.x) / < 2.12 (0.6.x); no CPU wheel
# exists for 3.12 here, so torch is the CUDA build (7.0 GB installed with its nvidia-* wheels). Installing it once and
# pointing each venv at it with a .pth file saves ~2/3 of the time and disk. A venv's own site-packages comes
# before .pth entries on sys.path, so anything a venv installs itself still wins.
#
# Cached: each venv records the exact requirement string in .venvs/<name>/.pibridge-stamp; a rerun with the
# same strings does nothing. Usage: tools/lerobot_env.sh [names...]   (default: lr-0.6.1 lr-0.5.1 lr-0.6.1-bare)
# Env: PY312 (interpreter), VENVS (directory, default .venvs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY312:-}" ]; then
  for c in /root/.pyenv/versions/3.12.1/bin/python python3.12; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then PY312="$c"; break; fi
  done
fi
[ -n "${PY312:-}" ] || { echo "lerobot_env: no Python 3.12 found; set PY312=/path/to/python3.12" >&2; exit 2; }
VENVS="${VENVS:-.venvs}"
TORCH_REQ="torch==2.10.* torchvision==0.25.*"
declare -A REQ=(
  # protobuf: transformers builds the fast Gemma tokenizer from OUT/tokenizer/tokenizer.model with it (else it
  # falls back to a tiktoken reader and fails). sentencepiece < 0.2.3 for 0.5.x: 0.2.3's generated proto needs
  # protobuf >= 7, and wandb (a lerobot 0.5.x dependency) caps protobuf < 7.
  [lr-0.6.1]="lerobot[pi]==0.6.1 transformers>=5.4,<5.6 protobuf"
  [lr-0.5.1]="lerobot[pi]==0.5.1 transformers==5.3.0 protobuf sentencepiece<0.2.3"
  [lr-0.5.0]="lerobot[pi]==0.5.0 transformers>=5.5,<5.6 protobuf sentencepiece<0.2.3"
  [lr-0.6.1-bare]="lerobot[pi]==0.6.1 transformers>=5.4,<5.6 protobuf"
)
NAMES=("$@"); [ ${#NAMES[@]} -gt 0 ] || NAMES=(lr-0.6.1 lr-0.5.1 lr-0.6.1-bare)
mkdir -p "$VENVS"

stamp_ok() { [ -f "$1/.pibridge-stamp" ] && [ "$(cat "$1/.pibridge-stamp")" = "$2" ]; }

build_torch() {
  local dir="$VENVS/_torch"
  stamp_ok "$dir" "$TORCH_REQ" && return 0
  echo "lerobot_env: installing shared torch ($TORCH_REQ) into $dir" >&2
  rm -rf "$dir"
  # shellcheck disable=SC2086
  "$PY312" -m pip install -q --disable-pip-version-check --target "$dir" $TORCH_REQ
  echo "$TORCH_REQ" > "$dir/.pibridge-stamp"
}

build_venv() {
  local name="$1" req="${REQ[$1]}" dir="$VENVS/$1"
  local bare=""; [[ "$1" == *-bare ]] && bare=1
  local key="$TORCH_REQ | $req | pibridge-editable"; [ -z "$bare" ] || key="$TORCH_REQ | $req | bare"
  stamp_ok "$dir" "$key" && { echo "lerobot_env: $name up to date" >&2; return 0; }
  echo "lerobot_env: building $name ($req)" >&2
  rm -rf "$dir"
  "$PY312" -m venv "$dir"
  mkdir -p "$dir/.pibridge-plugin" && rm -f "$dir/.pibridge-plugin/.pibridge-stamp"
  local site; site="$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$(cd "$VENVS/_torch" && pwd)" > "$site/pibridge_shared_torch.pth"
  # shellcheck disable=SC2086
  local own="-e .[serve]"; [ -z "$bare" ] || own=""
  # shellcheck disable=SC2086
  "$dir/bin/python" -m pip install -q --disable-pip-version-check $req $own
  "$dir/bin/python" - <<'PY'
import importlib.metadata as md, torch, lerobot  # noqa: F401
print("lerobot", md.version("lerobot"), "transformers", md.version("transformers"), "torch", torch.__version__)
PY
  echo "$key" > "$dir/.pibridge-stamp"
  mkdir -p "$dir/.pibridge-deps" && echo "pyproject:$(sha256sum pyproject.toml | cut -d' ' -f1)" > "$dir/.pibridge-deps/.pibridge-stamp"
}

# The LeRobot plugin (plugins/lerobot_policy_pibridge): editable, no deps (pibridge is already there). Its own stamp,
# so adding it to an existing venv does not rebuild the venv.
install_plugin() {
  local dir="$VENVS/$1" key="plugin:lerobot_policy_pibridge-editable"
  stamp_ok "$dir/.pibridge-plugin" "$key" 2>/dev/null && return 0
  "$dir/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e plugins/lerobot_policy_pibridge
  mkdir -p "$dir/.pibridge-plugin" && echo "$key" > "$dir/.pibridge-plugin/.pibridge-stamp"
}

# pibridge's own dependencies follow pyproject.toml: when it changes, re-run the editable install only.
refresh_pibridge() {
  local dir="$VENVS/$1" key; key="pyproject:$(sha256sum pyproject.toml | cut -d' ' -f1)"
  stamp_ok "$dir/.pibridge-deps" "$key" 2>/dev/null && return 0
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -e ".[serve]"
  mkdir -p "$dir/.pibridge-deps" && echo "$key" > "$dir/.pibridge-deps/.pibridge-stamp"
}

build_torch
for n in "${NAMES[@]}"; do
  build_venv "$n"
  [[ "$n" == *-bare ]] || { refresh_pibridge "$n"; install_plugin "$n"; }
done
