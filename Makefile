# The two set-up commands the README promises, and the targets CI calls.
#   make demo   - the main job on an embedded local AWS (moto on 127.0.0.1), no account needed
#   make test   - lint, type-check and the whole test suite (starts its own local servers)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NODE_STAMP := node_modules/.installed-stamp
NATIVE_STAMP := $(VENV)/.native-stamp
NATIVE_SRC := native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs)

.PHONY: demo test lint format unit bench venv node native kcl kcl-image-check clean test-other-pythons test-py312 test-py313

$(STAMP): pyproject.toml handlers/pyproject.toml tools/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./handlers -e ./tools
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The compiled hot path (Rust, PyO3 + maturin): optional - qldbstream falls back to pure Python.
$(NATIVE_STAMP): $(STAMP) $(NATIVE_SRC)
	$(BIN)/python -m pip install --quiet ./native
	touch $@

venv: $(STAMP)
node: $(NODE_STAMP)
native: $(NATIVE_STAMP)

# The native wheels a deployment installs: manylinux2014, abi3 (CPython >= 3.11), x86_64 and aarch64, built
# with zig as the linker (no Docker) into dist/; ARCHS=x86_64 for one. See docs/packaging.md.
.PHONY: wheels
wheels:
	PYTHON=$(PYTHON) native/build-wheels.sh

# The real KCL MultiLangDaemon: its jars from Maven Central, then amazon-kclpy (fast when done).
kcl: $(STAMP)
	deploy/kcl/install.sh $(BIN)/python

# The KCL worker image's install steps (the Dockerfile runs this script; no Docker engine here).
kcl-image-check: $(STAMP)
	dir=$$(mktemp -d) && deploy/kcl/image-setup.sh "$$dir" >/dev/null && rm -rf "$$dir"

demo: $(STAMP)
	$(BIN)/qldbstream demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) $(NATIVE_STAMP) $(NODE_STAMP) kcl lint kcl-image-check
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit -m "not integration"

# The server-free tests (unit, functional, handlers) on CPython 3.12 and 3.13, each in its own venv
# (.venv/py312, .venv/py313) with the one abi3 native wheel; `make test` covers the main venv's Python.
test-other-pythons: $(STAMP)
	.ci/other-pythons.sh 3.12 3.13

test-py312: $(STAMP)
	.ci/other-pythons.sh 3.12

test-py313: $(STAMP)
	.ci/other-pythons.sh 3.13

bench: $(STAMP) $(NATIVE_STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache deploy/kcl/target native/target
