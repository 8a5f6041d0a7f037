# Everything a fresh machine needs: Python 3.11+ and make. The venv is built here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: test lint typecheck pytest bench demo clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "surelay needs Python 3.11+, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(DEV_STAMP): pyproject.toml $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

DEMO_STAMP := $(VENV)/.demo-installed

$(DEMO_STAMP): pyproject.toml $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cli]'
	@touch $@

# The main job: a host sending to a flaky downstream, on ./surelay-data.
demo: $(DEMO_STAMP)
	$(BIN)/surelay demo

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(DEV_STAMP)
	$(BIN)/mypy --strict src

# The whole suite on two workers (pytest-xdist: most tests wait on servers and
# subprocesses), under line coverage of src/surelay, the subprocesses the tests start
# included; fails under 90% of lines (pyproject.toml [tool.coverage]).
pytest: $(DEV_STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest -n 2
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

test: lint typecheck pytest

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): pyproject.toml $(DEV_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $@

bench: $(DEV_STAMP) $(BENCH_STAMP)
	$(BIN)/python benchmarks/supervision.py
	$(BIN)/python benchmarks/storage.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/overload.py
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/hosts.py
	$(BIN)/python benchmarks/jetstream.py
	$(BIN)/python benchmarks/rabbitmq.py
	$(BIN)/python benchmarks/push.py
	$(BIN)/python benchmarks/console.py
	$(BIN)/python benchmarks/backlog.py
	$(BIN)/python benchmarks/replay.py
	$(BIN)/python benchmarks/sql_outbox.py
	$(BIN)/python benchmarks/ways.py

clean:
	rm -rf $(VENV) surelay-data .mypy_cache .pytest_cache .ruff_cache .hypothesis .coverage .coverage.*
