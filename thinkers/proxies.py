"""Models that many tasks share travel by proxy: stored once, counted while tasks use them, evicted once replaced.

A model passed by value is pickled into every task that uses it; a proxy is a small reference that the worker
resolves from the store once and caches. The ledger keeps the store from growing without bound over a long run:
a proxy that is *retired* (its model was replaced) is evicted as soon as the last task using it has returned,
never earlier, so no worker ever resolves a proxy whose data is gone.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)


class ProxyLedger:
    """Reference counts of the proxies a thinker hands to tasks.

    With no store (fast unit tests on in-process queues), objects are handed over as they are and the
    ledger only counts.
    """

    def __init__(self, store: Any | None = None):
        self.store = store
        self._lock = threading.Lock()
        self._users: dict[Any, int] = {}
        self._retired: set[Any] = set()
        self._keys: dict[int, Any] = {}  # id(handle) -> store key
        self._handles: dict[Any, Any] = {}
        self.created = 0
        self.evicted = 0
        self._counter = 0

    def put(self, obj: Any) -> Any:
        """Store an object once and return the handle to pass to tasks (a proxy, or the object without a store)."""
        if self.store is None:
            handle = obj
            with self._lock:
                self._counter += 1
                key = f"local-{self._counter}"
        else:
            from proxystore.store.utils import get_key

            handle = self.store.proxy(obj)
            key = get_key(handle)
        with self._lock:
            self._keys[id(handle)] = key
            self._handles[key] = handle  # holds it, so its id() is not reused while counted
            self._users[key] = 0
            self.created += 1
        return handle

    def _key(self, handle: Any) -> Any:
        key = self._keys.get(id(handle))
        if key is None:
            raise KeyError("not a handle of this ledger")
        return key

    def acquire(self, handle: Any) -> Any:
        """A task is about to use ``handle``: it must outlive that task. Returns the handle."""
        with self._lock:
            self._users[self._key(handle)] += 1
        return handle

    def release(self, handle: Any) -> None:
        """A task that used ``handle`` has returned; evicts it if it was retired and nobody uses it any more."""
        with self._lock:
            key = self._key(handle)
            self._users[key] -= 1
            evict = key in self._retired and self._users[key] <= 0
        if evict:
            self._evict(handle, key)

    def retire(self, handle: Any) -> None:
        """``handle``'s model was replaced: evict it now if unused, else when its last task returns."""
        with self._lock:
            key = self._key(handle)
            self._retired.add(key)
            evict = self._users[key] <= 0
        if evict:
            self._evict(handle, key)

    def _evict(self, handle: Any, key: Any) -> None:
        with self._lock:
            if key not in self._users:
                return
            del self._users[key]
            self._retired.discard(key)
            self._keys.pop(id(handle), None)
            self._handles.pop(key, None)
            self.evicted += 1
        if self.store is not None:
            self.store.evict(key)

    def evict_all(self) -> None:
        """Evict every stored object: the run is over and no task will resolve a proxy again."""
        with self._lock:
            held = [(self._handles[key], key) for key in list(self._users)]
        for handle, key in held:
            self._evict(handle, key)

    @property
    def live(self) -> int:
        """Proxies currently stored."""
        with self._lock:
            return len(self._users)

    def stats(self) -> dict[str, int]:
        """Created, evicted and live proxies: the evidence that nothing accumulates without bound."""
        with self._lock:
            return {"proxies_created": self.created, "proxies_evicted": self.evicted, "proxies_live": len(self._users)}
