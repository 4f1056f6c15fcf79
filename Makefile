# The two commands: `make up` runs the main job, `make test` runs the tests.
# Both install what the project needs first, into the project's own virtual environment
# .venv/ (made with $(PY), Python >= 3.11; re-installed when setup.cfg changes), so they
# work the same on a fresh machine and in CI whatever python3 comes first on the PATH.
#   make up ARGS="--port 8001 --workers 4"   passes options to `hadis up`
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install.stamp
ARGS ?=

.PHONY: install up test lint imports services system-deps bench clean-venv

$(BIN)/python:
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "make: $(PY) is Python $$($(PY) -c 'import platform; print(platform.python_version())'); HADIS-Celery needs 3.11 or newer (make PY=python3.11 ...)"; exit 1; }
	@$(PY) -m venv $(VENV) || \
	  { echo "make: could not create $(VENV) with $(PY) -m venv (on Debian: apt-get install python3-venv)"; exit 1; }

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

services:
	bash scripts/services.sh

system-deps:
	bash scripts/system-deps.sh

up: install services
	$(BIN)/python -m hadis_celery.cli up $(ARGS)

lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/lint-imports

test: install services system-deps lint
	$(BIN)/python -m pytest -q $(ARGS)

bench: install services
	for b in router planner simulate plus backends frontdoor testbed; do $(BIN)/python -m bench.$$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
