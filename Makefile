# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit system-deps clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Debian packages the suite needs: headless Chromium for the browser checks, fonts for `tl pretrain-source`,
# PostgreSQL and Redis for the Celery topology test (tests/deploy/test_celery_topology.py).
system-deps:
	@{ command -v chromium >/dev/null 2>&1 && [ -d /usr/share/fonts/truetype/dejavu ] && \
	   ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1; } || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core postgresql \
	    redis-server >/dev/null; }

lint: $(STAMP)
	$(VENV)/bin/ruff check tl_core tests dags plugins bench
	$(VENV)/bin/mypy tl_core

test: $(STAMP) system-deps lint
	$(VENV)/bin/pytest -q --durations=15

demo: $(STAMP)
	$(PY) -m tl_core.demo

clean:
	rm -rf .tl
