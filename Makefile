# prognos: `make run` runs the main job on the embedded stack, `make test` runs the tests.
# Both bootstrap what they need first (make setup) and are safe to run twice.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONDONTWRITEBYTECODE :=
PYTEST_ARGS ?=
# Test files run on 2 workers: most test time waits on JVMs, brokers and streams.
PYTEST_WORKERS ?= 2

.PHONY: setup test test-unit run bench bench-quick lint clean lock up down status docs

setup:
	@infra/setup.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: setup lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

# The fast tier: tests that start no JVM, broker or server and need no trained model
# (marked `unit`), in one process: spreading them over workers costs more than it saves.
test-unit: setup
	$(PY) -m pytest -m unit --durations=10 $(PYTEST_ARGS)

run: setup
	$(PY) -m prognos.cli.main run $(ARGS)

bench: setup
	@set -e; for script in bench/*.py; do echo "== $$script"; $(PY) $$script; done

bench-quick: setup
	@set -e; for script in bench/*.py; do echo "== $$script --quick"; $(PY) $$script --quick; done

# docs/operations.md (settings, metrics), docs/api.md and docs/benchmarks.md from the code
# and bench/results/*.json; tests/unit/test_docs_current.py fails when they are stale.
docs: setup
	$(PY) scripts/gen_docs.py

lock:
	$(VENV)/bin/python -m pip --version >/dev/null
	.state/uv/bin/uv pip compile requirements.in --python-version 3.11 --generate-hashes -o requirements.lock

up: setup
	$(VENV)/bin/prognos up

down:
	-$(VENV)/bin/prognos down

status:
	$(VENV)/bin/prognos status

clean: down
	rm -rf .state .venv .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
