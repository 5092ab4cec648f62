# Parapet: every target installs what it needs first, so a fresh clone needs only `make run` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
PY_STAMP := $(VENV)/.synced
NODE_STAMP := node_modules/.installed
BUF := node_modules/.bin/buf
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
# llama.cpp (slow suite only) must not tune itself to the build machine's CPU: such a build crashes on
# CPUs without the same instructions (seen on these machines).
export CMAKE_ARGS := -DGGML_NATIVE=OFF
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-slow lint format generate check-generated proto-baseline bench bench-gateway bench-soak ci clean install

## run: install what is missing and start the whole suite on its embedded defaults (Ctrl-C stops it all)
run: install
	$(BIN)/parapet up

## test: install what is missing and run the default test suite
test: install
	$(BIN)/pytest

## test-slow: the suites marked slow (they have their own budget); none selected is not a failure
test-slow: install
	$(BIN)/uv sync --frozen --python $(BIN)/python --group llama
	$(BIN)/pytest -m slow || [ $$? -eq 5 ]
	@rm -f $(PY_STAMP)  # the next `make install` returns the venv to the default groups

install: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): pyproject.toml uv.lock
	@command -v $(PYTHON) >/dev/null || { echo "python3 (>= 3.11) is required"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv && $(BIN)/uv --version | grep -q "$(UV_VERSION)" || $(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	$(BIN)/uv sync --frozen --python $(BIN)/python
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "Installing Node.js and npm from Debian"; apt-get update -qq && apt-get install -y -qq nodejs npm; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The published v1 contracts: every change must stay wire- and source-compatible with them (buf FILE rules).
PROTO_BASELINE := protos/v1-baseline.binpb
GENERATED := 'libs/parapet/*/v1' docs/configuration.md

## generate: regenerate the Python code from protos/ and docs/configuration.md (committed; CI fails when stale)
generate: install
	$(BIN)/python scripts/generate_protos.py
	$(BIN)/python scripts/generate_config_docs.py

## check-generated: fail when the committed generated code differs from what protos/ produce
check-generated: generate
	@git diff --exit-code --stat -- $(GENERATED) || { echo "Generated code is stale: run 'make generate' and commit."; exit 1; }
	@test -z "$$(git status --porcelain -- $(GENERATED) | grep '^??')" || { echo "Generated files are not committed:"; git status --porcelain -- $(GENERATED); exit 1; }

## lint: buf lint + buf format + buf breaking (against the published v1), ruff, mypy
lint: install
	$(BUF) lint
	$(BUF) format -d --exit-code
	$(BUF) breaking --against $(PROTO_BASELINE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## format: apply buf format and ruff format
format: install
	$(BUF) format -w
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## proto-baseline: record the current contracts as the published baseline (a deliberate, reviewed act:
## only when a new major version is published or a pre-release contract is withdrawn)
proto-baseline: install
	$(BUF) build --exclude-source-info -o $(PROTO_BASELINE)

## bench: every benchmark under bench/, results written to docs/benchmarks.md
bench: install
	$(BIN)/python -m bench

## bench-gateway: the headline benchmark (issue #10): Parapet's governed chat against the upstream called directly
## and the LiteLLM proxy (installed once into its own .venv-litellm/); also part of `make bench`
bench-gateway: install
	$(BIN)/python -m bench gateway

## bench-soak: 10 minutes of steady load on the governed chat, every service's memory sampled (not in `make bench`)
bench-soak: install
	$(BIN)/python -m bench.gateway_soak

## ci: what .ci/run does (without its time bound on the slow suites)
ci: lint check-generated test-slow test

clean:
	rm -rf $(VENV) .venv-litellm node_modules .parapet .pytest_cache .mypy_cache .ruff_cache
