# Two entry points for a fresh machine (README's quick start): `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
UI := services/dashboard-api/static/index.html
UI_SOURCES := $(shell find web/src web/index.html web/vite.config.ts web/tsconfig.json -type f 2>/dev/null)

.PHONY: setup ui run demo test lint typecheck test-web test-python bench constraints

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

web/node_modules/.package-lock.json: web/package-lock.json
	cd web && npm ci --no-audit --no-fund

# The dashboard's web UI, built into the Python package when missing or out of date.
$(UI): web/node_modules/.package-lock.json $(UI_SOURCES)
	cd web && npm run build

ui: $(UI)

run: setup ui
	$(BIN)/zai-proxy up

demo: setup ui
	$(BIN)/zai-proxy demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck

# mypy cannot map zai_proxy onto services/ (and zai_proxy.dashboard_api onto its dashed
# folder) as the editable install does, so it checks a tree of links spelling that out,
# with the tests and benchmarks beside it.
typecheck: setup
	@tree=$$(mktemp -d) && trap 'rm -rf "$$tree"' EXIT && mkdir "$$tree/zai_proxy" && \
	for entry in services/*; do \
		name=$$(basename "$$entry"); [ "$$name" = dashboard-api ] && name=dashboard_api; \
		ln -s "$(CURDIR)/$$entry" "$$tree/zai_proxy/$$name"; \
	done && \
	ln -s "$(CURDIR)/tests" "$(CURDIR)/bench" "$$tree/" && \
	cd "$$tree" && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/.mypy_cache -p zai_proxy -p tests -p bench

test-web: web/node_modules/.package-lock.json
	cd web && npm test

test-python: setup ui
	$(BIN)/pytest

test: lint test-web test-python

bench: setup
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python bench/proxy_bench.py

# Refresh the pinned versions after changing dependencies in pyproject.toml.
constraints:
	$(BIN)/pip install --quiet -e '.[dev,bench,otel]'
	$(BIN)/pip freeze --exclude-editable --disable-pip-version-check > constraints.txt
