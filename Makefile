# sluice: the one task runner. `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install up test lint fmt bench bench-workers bench-publish bench-pipeline bench-tracker clean images compose-test

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install sluice with its dev tools (editable)

up: install ## run producer, worker and metrics locally against RabbitMQ and Redis on localhost
	@$(BIN)/python deploy/local_up.py

test: install ## run the whole test suite against the real RabbitMQ and Redis
	$(BIN)/pytest

images: ## build local stand-ins for the base images from Debian's packages (no registry needed); writes deploy/images/local.env
	bash deploy/images/build.sh

test-containers: install images ## the integration core (tests/e2e, tests/worker, tests/policies) against RabbitMQ and Redis in containers
	set -a && . deploy/images/local.env && set +a && SLUICE_TEST_BROKERS=containers $(BIN)/pytest -m "not compose and not disruptive" tests/e2e tests/worker tests/policies

compose-test: install images ## boot docker-compose.yml in a Docker engine and test it (tasks run, nothing lost on kills)
	SLUICE_COMPOSE_ENV_FILE=deploy/images/local.env $(BIN)/pytest -m compose -o timeout=1800 tests/compose

lint: install ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install ## format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

PEERS ?= ../shared/bench/peers
BENCH_VENV := bench/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml bench/requirements.txt $(wildcard $(PEERS)/requirements.txt)
	@test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -r $(PEERS)/requirements.txt -r bench/requirements.txt -e .
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## sluice vs the raw aio-pika ceilings on the peer workloads (BENCH_VARIANTS=all adds the peers, =sluice-quorum,sluice-quorum-cluster the 3-node cluster)
	$(BENCH_VENV)/bin/python bench/run.py

bench-workers: $(BENCH_STAMP) ## drains by 1, 2, 4 worker processes, standalone and 3-node cluster broker (docs/scaling.md)
	$(BENCH_VENV)/bin/python bench/workers.py $(BENCH_WORKERS_ARGS)

bench-publish: install ## sluice publish fed 1,000,000 NDJSON lines: peak RSS, rate vs the aio-pika ceiling
	$(BIN)/python bench/publish_stream.py

bench-pipeline: install ## the worker's CPU a delivery in process, no broker: plain, rate-limited, tracked, idempotent (BENCH_PIPELINE_ARGS=--stub-tracker, --gc-threshold 0)
	$(BIN)/python bench/pipeline_cpu.py $(BENCH_PIPELINE_ARGS)

bench-tracker: install ## the CPU of the task handles' write path alone, on the real Redis (tracked, a trivial batched write, a stub)
	$(BIN)/python bench/tracker_cpu.py $(BENCH_TRACKER_ARGS)

clean: ## remove .venv and caches
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache
