# One-command set-up: `make run` runs the default campaign, `make test` runs the whole suite.
# Both create .venv, install the project and the Debian packages it needs, and are fast when nothing changed.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.molsteer-installed
DEB_PACKAGES := redis-server nwchem
ARGS ?=

.PHONY: run test setup system-packages lint clean-runs

setup: system-packages $(STAMP)

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "molsteer needs Python 3.11 ('$(PYTHON)' not found); set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# redis-server and nwchem are programs, not Python packages: install them from Debian when we are root,
# otherwise say exactly what to run.
system-packages:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v nwchem >/dev/null 2>&1 || missing="$$missing nwchem"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "Installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "molsteer needs these Debian packages:$$missing" >&2; \
	    echo "Run: sudo apt-get update && sudo apt-get install -y$$missing" >&2; \
	    exit 1; \
	  fi; \
	fi

run: setup
	$(PY) run.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -ra --durations=15

clean-runs:
	rm -rf runs/*/
