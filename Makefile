# One-command set-up: `make run` runs the default campaign, `make test` runs the whole suite.
# Both create .venv, install the project and the Debian packages it needs, and are fast when nothing changed.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.molsteer-installed
ARGS ?=

.PHONY: run test setup system-packages cluster-packages lint clean-runs

setup: system-packages $(STAMP)

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "molsteer needs Python 3.11 ('$(PYTHON)' not found); set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# The MOSES library (--search-space moses) is a data file inside the molsets wheel; its dependencies
	# (torch, an old pandas) are not needed to read it, so they are not installed.
	$(PY) -m pip install --quiet --no-deps 'molsets==0.3.1'
	@touch $(STAMP)

# redis-server, nwchem and xtb (for IPEA-xTB's parameter file, which the xtb Python wheel lacks) are programs,
# not Python packages: install them from Debian when we are root,
# otherwise say exactly what to run.
system-packages:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v nwchem >/dev/null 2>&1 || missing="$$missing nwchem"; \
	test -f /usr/share/xtb/param_ipea-xtb.txt || missing="$$missing xtb"; \
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

# What the real-infrastructure tests drive (tests/clusters.py): a single-node Slurm with munge, OpenSSH's sshd in a
# network namespace (ip, unshare) and Open MPI's mpiexec. Installed when we are root; otherwise those tests are
# skipped, each with its reason, and this says what to install. Checked by a program each package provides (also
# in /usr/sbin, which is not on a normal user's PATH).
cluster-packages:
	@extra=""; PATH="$$PATH:/usr/sbin:/sbin"; \
	command -v slurmctld >/dev/null 2>&1 || extra="$$extra slurm-wlm"; \
	command -v munged >/dev/null 2>&1 || extra="$$extra munge"; \
	test -x /usr/sbin/sshd || extra="$$extra openssh-server"; \
	command -v ssh >/dev/null 2>&1 || extra="$$extra openssh-client"; \
	command -v mpiexec >/dev/null 2>&1 || extra="$$extra openmpi-bin"; \
	command -v ip >/dev/null 2>&1 || extra="$$extra iproute2"; \
	command -v unshare >/dev/null 2>&1 || extra="$$extra util-linux"; \
	if [ -n "$$extra" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "Installing Debian packages for the cluster tests:$$extra"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      $$extra >/dev/null; \
	  else \
	    echo "The cluster tests will be skipped without:$$extra (as root: make test installs them)" >&2; \
	    echo "Or run: sudo apt-get update && sudo apt-get install -y --no-install-recommends$$extra" >&2; \
	  fi; \
	fi

run: setup
	$(PY) run.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# MOLSTEER_REQUIRE_REAL=1: a missing redis-server, NWChem or xtb fails the suite instead of skipping the
# end-to-end layer. The documentation site is built strictly: a broken link or a page left out fails.
test: setup cluster-packages
	$(VENV)/bin/ruff check .
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir "$$(mktemp -d)"
	MOLSTEER_REQUIRE_REAL=1 $(PY) -m pytest -ra --durations=15

clean-runs:
	rm -rf runs/*/
