# The two commands: `make up` runs the main job, `make test` runs the tests.
# Both install what the project needs first (once, re-done when setup.cfg changes).
PY ?= python3
STAMP := .install.stamp

.PHONY: install up test lint services system-deps bench

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

services:
	bash scripts/services.sh

system-deps:
	bash scripts/system-deps.sh

up: install services
	$(PY) -m hadis_celery.cli up

test: install services system-deps
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: install services
	for b in router planner simulate plus backends frontdoor testbed; do $(PY) -m bench.$$b; done
