# crispflow: one command to try it, one to test it. Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
STAMP := $(VENV)/.installed

.PHONY: demo test up prod-local down status lint lock bench clean help

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
prod-local: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/crispflow up --profile prod-local

down:
	@if [ -x $(BIN)/crispflow ]; then PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/crispflow down; else echo "nothing installed, nothing running"; fi

status: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/crispflow status

test: $(STAMP)
	$(BIN)/ruff check .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

lock: | $(UV)
	$(UV) pip compile --quiet --python-version 3.11 --extra dev pyproject.toml -o requirements.lock

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/crispflow up
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.train_overhead

clean: down
	rm -rf .crispflow $(VENV)
