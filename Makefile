# pibridge developer entry points. `make demo` and `make test` are the README's two commands.
# PY: the interpreter for the project venv (Python 3.11: jax + torch CPU wheel live side by side there).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU-only torch wheel is a Makefile/CI choice, not a package requirement (pyproject pins no torch version).
TORCH_PIN ?= torch==2.13.0
OPENPI_SRC ?=
OPENPI_PY ?= $(OPENPI_SRC)/.venv/bin/python
OPENPI_COMMIT ?=

.PHONY: setup test test-all demo goldens bench clean help matrix matrix-venvs canary lerobot-env openpi-client-env browser

help:
	@echo "make setup    create $(VENV) (Python 3.11) with pibridge[all] and the CPU torch wheel"
	@echo "make test     the whole gate (what CI runs)"
	@echo "make demo     synthetic tiny pi05 checkpoint -> convert -> parity report (offline)"
	@echo "make goldens  OPENPI_SRC=path/to/openpi: regenerate goldens, validated against OpenPI's own model code"
	@echo "make bench    full-size benchmarks (minutes, ~30 GB disk at peak)"
	@echo "make matrix   torch stack vs goldens on every supported transformers release (own small venvs)"
	@echo "make canary   newest jax / flax / orbax / transformers vs the goldens, Python 3.11 and 3.12 (early warning)"
	@echo "make browser  Debian's chromium for the report render test (skipped at once when installed)"

$(BIN)/pibridge: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)" -e ".[all]"
	@touch $@

setup: $(BIN)/pibridge

# the gate includes a subset of the transformers matrix: small cached venvs under .venvs/tf-<version>
matrix-venvs: setup
	$(BIN)/python tools/tfvenv.py --gate

# the real LeRobot (Python 3.12): lerobot[pi]==0.6.1 and 0.5.1 + transformers 5.3.0, one shared torch (cached)
lerobot-env:
	tools/lerobot_env.sh

# OpenPI's real client (openpi-client, numpy<2) in its own Python 3.11 venv for the `pibridge serve` tests (cached)
openpi-client-env:
	tools/openpi_client_env.sh

# Debian's chromium renders the HTML reports in tests/test_report.py (no browser download); quick when installed
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && export DEBIAN_FRONTEND=noninteractive && \
	  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; }; } || \
	  echo "make browser: could not install chromium (needs apt-get and root); the render test will be skipped" >&2

test: setup matrix-venvs lerobot-env openpi-client-env browser
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python tools/tfvenv.py --matrix
	$(BIN)/python -m pytest -q -m ""

matrix: setup
	$(BIN)/python tools/matrix.py

# CANARY_PY=3.12 runs one Python; the 3.12 torch check reuses .venvs/_torch (make lerobot-env)
canary: setup
	$(BIN)/python tools/canary.py $(if $(CANARY_PY),--python $(CANARY_PY))

demo: setup
	rm -rf demo-out && mkdir -p demo-out
	$(BIN)/pibridge synth --variant tiny-pi05 --profile pi05_droid --asset-id droid demo-out/ckpt
	$(BIN)/pibridge convert demo-out/ckpt demo-out/lerobot --profile pi05_droid --allow-tiny \
	  --camera-map base_0_rgb=top,left_wrist_0_rgb=wrist --tokenizer tests/data/test_spm.model --fold-norm-eps
	$(BIN)/pibridge parity obs --profile pi05_droid demo-out/obs.safetensors
	$(BIN)/pibridge parity run --openpi demo-out/ckpt --lerobot demo-out/lerobot --obs demo-out/obs.safetensors \
	  --html demo-out/report.html --json demo-out/report.json --workdir demo-out/parity
	@echo "report: demo-out/report.html"

goldens: setup
	@test -n "$(OPENPI_SRC)" || { echo "set OPENPI_SRC=path/to/openpi checkout (and OPENPI_PY=its scratch venv python)" >&2; exit 2; }
	$(BIN)/python tools/make_goldens.py --openpi-src $(OPENPI_SRC) --openpi-python $(OPENPI_PY) $(if $(OPENPI_COMMIT),--openpi-commit $(OPENPI_COMMIT))

bench: setup
	$(BIN)/python bench/synth_full.py
	$(BIN)/python bench/convert_full.py --roundtrip

clean:
	rm -rf demo-out .pytest_cache build *.egg-info
