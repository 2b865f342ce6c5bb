"""Shared fixtures and skip markers that say why a test cannot run."""

from __future__ import annotations

import shutil
import socket

import pytest

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
