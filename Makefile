# Two commands matter: `make up` (install, then run everything) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install up test check lint typecheck

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

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test
