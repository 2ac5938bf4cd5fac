# h3lab — the two commands: `make run` (demo lab on http://127.0.0.1:8000) and `make test`.
# Everything runs from .venv, created on first use. The embedded default (SQLite + filesystem
# broker under var/) needs no server; DATABASE_URL / CELERY_BROKER_URL switch to PostgreSQL/Redis.
# Dependencies come from the hashed locks (requirements.txt, requirements-dev.txt; `make lock`
# recompiles them from requirements*.in); torch, pinned in requirements-torch.txt, comes first.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check
PIP_COMPILE := pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links

.PHONY: run test test-fast lint format bench demo migrate venv dev-venv lock audit clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned and without its dependencies (they are in the hashed lock), so that no
# later requirement can pull a CUDA build; then the lock in hash-checking mode, where pip
# refuses any file whose hash is not in the lock and any package the lock does not pin; then
# `pip check`, which fails if torch or anything else lacks a dependency.
$(VENV)/.installed: requirements.txt requirements-torch.txt | $(PY)
	$(PIP_INSTALL) --no-deps -r requirements-torch.txt
	$(PIP_INSTALL) --require-hashes -r requirements.txt
	$(PY) -m pip check
	touch $@

# requirements-dev.txt holds the runtime lock too (same versions), so one hashed install.
$(VENV)/.installed-dev: requirements-dev.txt requirements-torch.txt | $(PY)
	$(PIP_INSTALL) --no-deps -r requirements-torch.txt
	$(PIP_INSTALL) --require-hashes -r requirements-dev.txt
	$(PY) -m pip check
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
dev-venv: $(VENV)/.installed-dev

# Recompile the locks after editing requirements*.in (pip-tools in its own venv, .venv-lock).
# Versions already in the locks are kept where the .in files allow; `make lock UPGRADE=1` takes
# the newest. The locks must never contain torch (it would need a hash for every CUDA build).
lock:
	test -x .venv-lock/bin/pip-compile || \
		($(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --quiet pip-tools==7.6.2)
	.venv-lock/bin/$(PIP_COMPILE) $(if $(UPGRADE),--upgrade) -o requirements.txt requirements.in
	.venv-lock/bin/$(PIP_COMPILE) $(if $(UPGRADE),--upgrade) -o requirements-dev.txt \
		requirements-dev.in
	! grep -qi '^torch==' requirements.txt requirements-dev.txt

# Known vulnerabilities in the locked versions (pip-audit against PyPI's advisory data). Exit
# 1 on an advisory, 3 when the service could not be reached (scripts/audit.py).
audit: dev-venv
	$(PY) scripts/audit.py requirements-dev.txt

migrate: venv
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py load_demo

run: demo
	HOST=$(HOST) PORT=$(PORT) $(PY) scripts/run.py

test: dev-venv
	@scripts/ensure_chromium.sh || true
	$(PY) -m pytest $(PYTEST_ARGS)

# The quick loop while editing: no worker/server processes, no browser, no multi-process torch,
# nothing marked slow (the whole suite is `make test`).
test-fast: dev-venv
	$(PY) -m pytest -m "not e2e and not browser and not distributed and not slow" $(PYTEST_ARGS)

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
