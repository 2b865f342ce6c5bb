"""The run's ProxyStore: where models and training data wait for the workers that read them.

The wiring opens it once, after the queues exist, and hands it to the campaign (whose ``ProxyLedger`` puts
objects in and evicts them); at shutdown the campaign evicts what it holds and the wiring closes the store.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from configs.services.queues import AuthRedisConnector


def open_proxy_store(run_dir: Path, name: str, queues: Any | None = None) -> Any:
    """A ProxyStore store for the run's big objects, registered so workers resolve proxies from it.

    With ``queues`` (workers on another site, which cannot read this file system), the store lives in the
    queues' own Redis, which the remote workers reach through the SSH tunnel; otherwise it is a directory in
    the run directory, which every worker of a cluster site sees on the shared file system.
    """
    from proxystore.store import Store

    if queues is not None:
        connector = AuthRedisConnector(queues.hostname, queues.port, password=queues.password)
    else:
        from proxystore.connectors.file import FileConnector

        shutil.rmtree(Path(run_dir) / "proxystore", ignore_errors=True)  # a killed attempt's proxies are unusable
        connector = FileConnector(str(Path(run_dir) / "proxystore"))
    return Store(name, connector, register=True, populate_target=True)


def close_proxy_store(store: Any, run_dir: Path) -> None:
    """Close the store once the campaign has evicted its proxies (never ``clear``: on Redis that empties the queues).

    A file store's directory goes with it: its proxies mean nothing to a later attempt.
    """
    from proxystore.store import unregister_store

    unregister_store(store)
    store.close()
    shutil.rmtree(Path(run_dir) / "proxystore", ignore_errors=True)
