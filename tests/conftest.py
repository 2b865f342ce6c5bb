"""Shared fixtures and skip markers that say why a test cannot run.

The suite keeps its state inside the repository: the QM9 cache and the feature caches go to ``.cache/`` (unless
``MOLSTEER_CACHE`` says otherwise), and every test gets the environment back as it found it. Under ``make test``
(``MOLSTEER_REQUIRE_REAL=1``) a missing real component (redis-server, NWChem, xtb's parameter files) fails the
whole session at once instead of skipping the end-to-end layer; a plain ``pytest`` says loudly what it skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MOLSTEER_CACHE", str(ROOT / ".cache" / "molsteer"))  # inherited by every run a test starts

REAL_COMPONENTS = {
    "redis-server": lambda: shutil.which("redis-server") is not None,
    "nwchem": lambda: shutil.which("nwchem") is not None,
    "xtb (Debian's parameter files)": lambda: Path("/usr/share/xtb/param_ipea-xtb.txt").is_file(),
}
"""What the end-to-end layer runs for real; ``make test`` installs all of them."""


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under ``make test``, refuse to run a suite whose end-to-end layer would be skipped."""
    missing = [name for name, present in REAL_COMPONENTS.items() if not present()]
    if missing and os.environ.get("MOLSTEER_REQUIRE_REAL") == "1":
        pytest.exit(f"real components missing: {', '.join(missing)} (make test installs them as root; "
                    "without them the end-to-end tests cannot run)", returncode=3)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """A plain ``pytest`` outside ``make test`` can pass with the end-to-end layer skipped: say so, loudly."""
    missing = [name for name, present in REAL_COMPONENTS.items() if not present()]
    if missing:
        terminalreporter.write_sep("!", f"END-TO-END TESTS SKIPPED: {', '.join(missing)} not installed; "
                                        "this run does not cover the real components (use make test)", red=True)


@pytest.fixture(autouse=True)
def _environment_restored():
    """Whatever a test (or the code it runs, e.g. setting ``XTBPATH``) puts in ``os.environ`` ends with it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)

needs_nwchem = pytest.mark.skipif(shutil.which("nwchem") is None,
                                  reason="NWChem is not installed (make test installs it)")
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed (make test installs it)")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def qm9():
    """The QM9 table (builds the on-disk cache on first use)."""
    from methods.data import load_qm9

    return load_qm9()


@pytest.fixture
def run_py(tmp_path_factory):
    """Start ``run.py`` in the background: ``run_py(*args, log=None, split_stderr=False, env=None)`` returns a
    :class:`tests.runs.Run` (its own process group, every descendant remembered while it lives).

    Whatever ends the test (a failed assertion, a wait that timed out, pytest-timeout), teardown ends every run
    it started that is still alive: SIGTERM to the run's process group, then, after a grace period, SIGKILL to
    the group and to every remembered descendant still there. A safety net only: tests check their runs' clean-up.
    """
    import warnings

    from tests.runs import Runs

    runs = Runs(tmp_path_factory.mktemp("run-py"))
    yield runs.start
    ended = runs.end_all()
    if ended:
        warnings.warn(f"run_py teardown ended what the test's runs left running: {', '.join(ended)}", stacklevel=1)
