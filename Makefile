# The README's two commands: `make demo` and `make test`. Both set up .venv on a fresh machine,
# installing the fully pinned, hash-checked requirements.lock (compiled from requirements.txt),
# the build backend (setuptools) included: the project installs without build isolation.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU by default; GPU: `make setup LOCK=requirements-cuda12.lock` (jax[cuda12], same pins).
LOCK ?= requirements.lock
PIP_VERSION := 26.3
UV_VERSION := 0.13.9
# Resolved for the platform the tests run on; the hashes cover every file of each version.
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--custom-compile-command "make lock" --quiet
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export JAX_PLATFORMS ?= cpu

.PHONY: setup test test-fast demo lint lock clean

setup: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# All but the end-to-end tests (marked slow: training runs, the ablation, probe runs,
# multi-process and CLI-subprocess tests): under 3 minutes on 2 cores. CI runs `make test`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: $(STAMP)
	$(BIN)/python tools/demo.py --config configs/demo.py --workdir demo_out

# Re-resolve both locks after editing requirements.txt (pins already in a lock are kept
# unless requirements.txt moves them; `make lock UPGRADE=--upgrade` re-resolves everything).
lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip compile requirements.txt $(LOCK_FLAGS) $(UPGRADE) -o requirements.lock
	$(BIN)/uv pip compile requirements-cuda12.in $(LOCK_FLAGS) $(UPGRADE) \
		-o requirements-cuda12.lock

clean:
	rm -rf demo_out
