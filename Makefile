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
# Tools in virtualenvs of their own under $(VENV)/tools, so their dependencies never move the
# worker's (checkov alone pins dozens of packages); `make clean` removes them with the rest.
TOOLS   := $(VENV)/tools
UV_VERSION      ?= 0.13.9
CHECKOV_VERSION ?= 3.3.30
UV      := $(TOOLS)/uv/bin/uv
# A stamp per version: a new pin reinstalls. tests/test_deploy.py runs $(TOOLS)/checkov/bin/checkov.
UV_STAMP      := $(TOOLS)/uv/.installed-$(UV_VERSION)
CHECKOV_STAMP := $(TOOLS)/checkov/.installed-$(CHECKOV_VERSION)
# The image's dependencies (deploy/Dockerfile), for its Python (3.11) on both of its platforms.
LOCK       := deploy/requirements.lock
BUILD_LOCK := deploy/build-requirements.lock
LOCK_FLAGS := --generate-hashes --python-version 3.11 --only-binary :all: --quiet \
	--custom-compile-command 'make lock' $(if $(filter-out 0,$(UPGRADE)),--upgrade)

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format check migrate standin chaos bench clean \
	lock checkov

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

test: $(STAMP) $(CHECKOV_STAMP) ## Run the test suite against the local Postgres and RabbitMQ
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

lock: $(UV_STAMP) ## Regenerate the image's locks from pyproject.toml (UPGRADE=1 moves every pin)
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) --python-platform x86_64-manylinux_2_28 -o $(LOCK)
	@# The image is multi-arch: arm64 must resolve to the very same pins, with wheels for them.
	cp $(LOCK) $(TOOLS)/arm64.lock
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) --python-platform aarch64-manylinux_2_28 \
		-o $(TOOLS)/arm64.lock
	cmp $(LOCK) $(TOOLS)/arm64.lock
	@# The worker's build backend ([build-system] requires), for the wheel built in the image.
	$(PYTHON) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')" \
		| $(UV) pip compile - $(LOCK_FLAGS) --python-platform x86_64-manylinux_2_28 -o $(BUILD_LOCK)

$(UV_STAMP):
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet uv==$(UV_VERSION)
	touch $@

checkov: $(CHECKOV_STAMP) ## Install checkov (make test runs it) in a virtualenv of its own

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

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
