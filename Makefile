# h3lab — the two commands: `make run` (demo lab on http://127.0.0.1:8000) and `make test`.
# Everything runs from .venv, created on first use. The embedded default (SQLite + filesystem
# broker under var/) needs no server; DATABASE_URL / CELERY_BROKER_URL switch to PostgreSQL/Redis.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: run test lint format bench demo migrate venv dev-venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first, pinned, so that no later requirement can pull a CUDA build.
$(VENV)/.installed: requirements.txt | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed
dev-venv: $(VENV)/.installed-dev

migrate: venv
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py load_demo

run: demo
	HOST=$(HOST) PORT=$(PORT) $(PY) scripts/run.py

test: dev-venv
	@scripts/ensure_chromium.sh || true
	$(PY) -m pytest $(PYTEST_ARGS)

lint: dev-venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: dev-venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: migrate
	$(PY) manage.py bench_platform --out out/bench_platform.json

clean:
	rm -rf var/broker var/results var/celerybeat-schedule* out
