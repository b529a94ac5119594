# crispflow: one command to try it, one to test it. Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
STAMP := $(VENV)/.installed

.PHONY: demo test up prod-local down status lint lock bench bench-scale clean help chromium monitoring-tools

help:
	@echo "make demo    set up and run the demo on the local stack (Airflow + MLflow)"
	@echo "make test    set up and run the whole test suite"
	@echo "make up / down / status   manage the local stack"
	@echo "make prod-local   the production topology without Docker (Celery, PostgreSQL, Redis, S3 on moto)"
	@echo "make lint    ruff;  make lock  re-resolve requirements.lock;  make bench  benchmarks"

$(UV):
	$(PYTHON) -m pip install --quiet --user uv || $(PYTHON) -m pip install --quiet uv

$(STAMP): pyproject.toml requirements.lock | $(UV)
	@test -x $(BIN)/python || $(UV) venv --quiet --python 3.11 $(VENV) || $(UV) venv --quiet $(VENV)
	$(UV) pip install --quiet -p $(BIN)/python -r requirements.lock
	$(UV) pip install --quiet -p $(BIN)/python --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/crispflow demo

up: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/crispflow up

# Needs PostgreSQL on 127.0.0.1:5432 (user postgres) and Redis on 127.0.0.1:6379; `make down` stops it.
prod-local: $(STAMP) monitoring-tools
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/crispflow up --profile prod-local

down:
	@if [ -x $(BIN)/crispflow ]; then PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/crispflow down; else echo "nothing installed, nothing running"; fi

status: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/crispflow status

# The browser tests drive Debian's chromium through Playwright (never a browser download).
chromium:
	@command -v chromium >/dev/null || apt-get install -y -qq chromium >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "make test needs Debian's chromium (apt-get install chromium)"; exit 1; }

# prod-local runs Prometheus and Alertmanager from Debian's packages; the tests run promtool and amtool on the rules.
monitoring-tools:
	@command -v prometheus-alertmanager >/dev/null && command -v promtool >/dev/null || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null; } || \
	  { echo "needs Debian's prometheus and prometheus-alertmanager (apt-get install prometheus prometheus-alertmanager)"; exit 1; }

test: $(STAMP) chromium monitoring-tools
	$(BIN)/ruff check .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

lock: | $(UV)
	$(UV) pip compile --quiet --python-version 3.11 --extra dev pyproject.toml -o requirements.lock

bench: $(STAMP)
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null || { echo "make bench needs wrk (Debian package wrk)"; exit 1; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/crispflow up
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.train_overhead
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.serving_vs_mlflow
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.serving_many_models
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.drift_vs_evidently
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.bench_ui_pages
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.explain_overhead
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.batch_vs_predict
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.scorer_vs_onnx
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.pseudonymise_publish
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.erase_plan

# Scale-out: batch scoring of 10M rows on prod-local with 1, then 2 Celery workers (one task slot each).
bench-scale: $(STAMP)
	for n in 1 2; do \
	  export CRISPFLOW_HOME="$(CURDIR)/.crispflow/bench-scale" CRISPFLOW_CELERY_WORKERS=$$n CRISPFLOW_CELERY_WORKER_CONCURRENCY=1 \
	    CRISPFLOW_AIRFLOW_PORT=28080 CRISPFLOW_MLFLOW_PORT=25000 CRISPFLOW_SERVE_PORT=28000 CRISPFLOW_S3_PORT=29000 PATH="$(CURDIR)/$(BIN):$$PATH"; \
	  $(BIN)/crispflow down >/dev/null; $(BIN)/crispflow up --profile prod-local && $(BIN)/python -m benchmarks.scoring_scale airflow; status=$$?; \
	  $(BIN)/crispflow down; [ $$status -eq 0 ] || exit $$status; \
	done

clean: down
	rm -rf .crispflow $(VENV)
