# The two commands (see README.md): `make run` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench loadtest faults lint typecheck check-migrations install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bookrender needs Python 3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m ops.devstack run

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy .

check-migrations: $(STAMP)
	$(PY) -m ops.devstack check-migrations

test: $(STAMP) lint typecheck check-migrations
	$(PY) -m ops.devstack test $(PYTEST_ARGS)

# Benchmarks: figures printed as JSON, the last line the summary (see README, Performance).
bench: $(STAMP)
	$(PY) -m ops.devstack bench

# The end-to-end load test against seed 004's SLA (var/loadtest/index.html); LOADTEST_ARGS passes flags.
loadtest: $(STAMP)
	$(PY) -m ops.devstack loadtest $(LOADTEST_ARGS)

# The fault-injection suite; its last line says "faults: N/M scenarios passed".
faults: $(STAMP)
	$(PY) -m ops.devstack faults $(FAULTS_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
