# The two commands that matter: `make demo` (run it) and `make test` (test it).
# Both set up what they need first: a virtualenv in .venv with the project and its
# dependencies, and (for the tests) Steady, the OpenAPI mock the conformance tests use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STEADY := .tools/node_modules/.bin/steady

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(STEADY):
	npm install --prefix .tools --no-audit --no-fund --loglevel=error @stdy/cli@0.22.1

demo: $(BIN)/.installed
	$(BIN)/llmspool demo

lint: $(BIN)/.installed
	$(BIN)/ruff check daemon plugins tests
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(BIN)/.installed $(STEADY) lint
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python -m tests.bench.bench_latency

clean:
	rm -rf $(VENV) .tools build *.egg-info
