# The front door. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BACKEND ?= responses
DURATION ?= 300
WORKERS ?= 2
# pytest-xdist processes for `make test`; the disruptive tests (server restarts) run after, alone.
# Three on this 2-core machine: most tests wait on runs and servers, not the CPU (1,011 tests in
# 5:15 with 3, against 6:54 with 2).
TEST_WORKERS ?= 3

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format check migrate standin chaos bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml standin/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./standin
	touch $(STAMP)

install: $(STAMP) ## Create the virtualenv and install the worker with its dev tools

demo: $(STAMP) ## Play a conversation through stand-in + worker (BACKEND=responses|assistants)
	$(BIN)/assistant-worker migrate
	AW_BACKEND=$(BACKEND) $(BIN)/assistant-worker demo

test: $(STAMP) ## Run the test suite against the local Postgres and RabbitMQ
	$(BIN)/pytest -m "not disruptive" -n $(TEST_WORKERS) --dist loadfile
	$(BIN)/pytest -m disruptive

test-fast: $(STAMP) ## The behaviour suite on the in-memory store: no Postgres, no RabbitMQ
	$(BIN)/pytest tests/behaviour -m "not postgres" -q

lint: $(STAMP) ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

chaos: $(STAMP) ## Kill workers under load for DURATION s (WORKERS, BACKEND), print a summary
	$(BIN)/python -m bench.chaos --duration $(DURATION) --workers $(WORKERS) --backend $(BACKEND)

bench: $(STAMP) ## Worker vs a naive baseline, all scenarios (REPEAT, BENCH_QUICK=1); writes bench/RESULTS.md
	$(BIN)/python -m bench $(if $(REPEAT),--repeat $(REPEAT)) $(if $(filter-out 0,$(BENCH_QUICK)),--quick)

format: $(STAMP) ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

check: lint test ## Everything CI checks

migrate: $(STAMP) ## Apply database migrations (AW_DATABASE_URL)
	$(BIN)/assistant-worker migrate

standin: $(STAMP) ## Serve the OpenAI stand-in on :8900
	$(BIN)/assistant-worker standin --port 8900

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
