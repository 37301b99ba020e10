# The two commands of the README: `make run` (the daemon on the built-in lab) and `make test` (install everything, run every test).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup venv system bench clean

run: setup
	$(BIN)/latency-router run -c examples/lab.toml

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

setup: system venv

system:
	scripts/setup-system

venv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'

bench: setup
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
