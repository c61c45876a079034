# The two commands (see README.md): `make run` and `make test`. Both build .venv first: `make run`
# installs only what running needs; everything else (and `make install`) adds the test and lint tools.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: run test bench loadtest faults lint typecheck check-migrations install clean

$(RUN_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bookrender needs Python 3.11 or newer")'
	@test -x $(PY) || { echo "make: creating the virtual environment in $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "make: installing what bookrender needs to run (Django, Celery, Redis and PostgreSQL clients, Pillow, Flower); the first time takes a minute or two"
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet --progress-bar off -e .
	@touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	@echo "make: installing the test and lint tools (pytest, Playwright, ruff, mypy)"
	@$(PY) -m pip install --quiet --progress-bar off -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	@echo "make: starting bookrender (database, simulator, web, workers, beat, Flower); Ctrl-C stops it"
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
