# Two entry points for a fresh machine (README's quick start): `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup run test lint bench constraints

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/zai-proxy proxy

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/proxy_bench.py

# Refresh the pinned versions after changing dependencies in pyproject.toml.
constraints:
	$(BIN)/pip freeze --exclude-editable --disable-pip-version-check > constraints.txt
