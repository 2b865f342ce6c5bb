# One-command set-up: `make run` runs the default campaign, `make test` runs the whole suite.
# Both create .venv, install the project and the Debian packages it needs, and are fast when nothing changed.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.molsteer-installed
DEB_PACKAGES := redis-server nwchem slurm-wlm munge openssh-server openssh-client openmpi-bin iproute2 util-linux
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

# redis-server, nwchem, Slurm, munge, OpenSSH, Open MPI, ip and unshare are programs, not Python packages: install
# them from Debian when we are root, otherwise say exactly what to run. Each package is checked by a program it provides
# (also in /usr/sbin, which is not on a normal user's PATH).
# The first two keep their recommends (as before); the cluster tools (tests/clusters.py) are installed without.
system-packages:
	@missing=""; extra=""; PATH="$$PATH:/usr/sbin:/sbin"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v nwchem >/dev/null 2>&1 || missing="$$missing nwchem"; \
	command -v slurmctld >/dev/null 2>&1 || extra="$$extra slurm-wlm"; \
	command -v munged >/dev/null 2>&1 || extra="$$extra munge"; \
	test -x /usr/sbin/sshd || extra="$$extra openssh-server"; \
	command -v ssh >/dev/null 2>&1 || extra="$$extra openssh-client"; \
	command -v mpiexec >/dev/null 2>&1 || extra="$$extra openmpi-bin"; \
	command -v ip >/dev/null 2>&1 || extra="$$extra iproute2"; \
	command -v unshare >/dev/null 2>&1 || extra="$$extra util-linux"; \
	if [ -n "$$missing$$extra" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "Installing Debian packages:$$missing$$extra"; \
	    apt-get update -qq || exit 1; \
	    if [ -n "$$missing" ]; then \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	    fi; \
	    if [ -n "$$extra" ]; then \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$extra >/dev/null || exit 1; \
	    fi; \
	  else \
	    echo "molsteer needs these Debian packages:$$missing$$extra" >&2; \
	    cmd="sudo apt-get update"; \
	    if [ -n "$$missing" ]; then cmd="$$cmd && sudo apt-get install -y$$missing"; fi; \
	    if [ -n "$$extra" ]; then cmd="$$cmd && sudo apt-get install -y --no-install-recommends$$extra"; fi; \
	    echo "Run: $$cmd" >&2; \
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
