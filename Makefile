# Two commands matter: `make up` (install, then run everything) and `make test`. `make check`
# is what CI runs: lint, types, the full suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install up test test-fast check lint typecheck

$(BIN)/contactsync: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/contactsync

up: install
	$(BIN)/contactsync up

# Every test, against SQLite and PostgreSQL, with real Redis and real worker processes.
test: install
	$(BIN)/pytest

# The inner loop: every test but those marked slow (those that start gateways, workers or a
# Redis of their own, kill processes, race, fuzz or flood: fault scenarios, schemathesis,
# Flower in a browser, compose commands, shutdowns, process supervision, rate and backlog
# limits, dead workers).
test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test
