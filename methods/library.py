"""A search space's features, computed once in blocks on the ``ml`` workers and cached on their disk.

A library (QM9, MOSES, a user's file) is identified by a key derived from its content, so two campaigns on the
same file share one cache and a changed file gets a new one. Its molecules are cut into blocks of
:data:`BLOCK` rows; each block's features of each kind are one file, written atomically by whichever worker
computed it. The same blocks are the unit of scoring: one ``ml`` task scores one block, so every message stays
well under a megabyte however large the library is.

The cache lives under :func:`methods.data.cache_dir` *on the worker*: on a cluster that is the shared home (or
``MOLSTEER_CACHE``), so every worker of the site reads what any of them wrote. The thinker asks a worker which
blocks are missing (:func:`missing_blocks`) rather than looking itself, since workers on another site do not
share its file system.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from methods.data import atomic_save, cache_dir

logger = logging.getLogger(__name__)

BLOCK = 16_384
"""Molecules per cached block and per scoring task: 16k drug-like SMILES are about 0.6 MB, results 130 kB."""

KINDS = ("groups", "fingerprints", "graphs")
"""Feature kinds: group counts (``gc``), Morgan fingerprints and composition (``knn``), molecular graphs
(``mpnn``)."""

FEATURES_VERSION = {"groups": 1, "fingerprints": 2, "graphs": 1}
"""Per kind, bumped when that featurization changes, so no stale cache is ever read and the other kinds' caches
stay valid (fingerprints v2 carry each molecule's composition after the bits)."""


@dataclass(frozen=True)
class Library:
    """A handle on a search space small enough to send with every task: its key and size, no molecules."""

    key: str
    size: int

    @property
    def n_blocks(self) -> int:
        """Number of blocks (the last one may be short)."""
        return -(-self.size // BLOCK)

    def block_rows(self, block: int) -> range:
        """Library rows of one block."""
        return range(block * BLOCK, min((block + 1) * BLOCK, self.size))


def _block_path(library: Library, kind: str, block: int) -> Path:
    suffix = "npy" if kind == "fingerprints" else "npz"
    return cache_dir() / "libraries" / library.key / f"{kind}-v{FEATURES_VERSION[kind]}-{block:05d}.{suffix}"


BLOCK_STATE_MIN = 0.5
"""A model keeps per-block state (``knn``'s nearest neighbours) only when it scores at least this fraction of it."""


def block_state_path(library: Library, name: str, block: int) -> Path:
    """Where a model keeps state about one block between rounds (worker side, next to the block's features)."""
    return cache_dir() / "libraries" / library.key / "state" / f"{name}-{block:05d}.npz"


def prune_block_states(library: Library, block: int, keep: int = 4) -> None:
    """Delete all but the ``keep`` newest model states of a block, so campaigns never fill the disk with them."""
    folder = cache_dir() / "libraries" / library.key / "state"
    states = sorted(folder.glob(f"*-{block:05d}.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in states[keep:]:
        old.unlink(missing_ok=True)


def compute_features(kind: str, smiles: list[str]) -> Any:
    """Features of one kind for molecules given as SMILES, in the layout the cache stores."""
    if kind == "groups":
        from methods.features import group_table

        return group_table(smiles)
    if kind == "fingerprints":
        from methods.features import knn_features

        return knn_features(smiles)
    if kind == "graphs":
        from methods.mpnn import featurize

        return featurize(smiles)
    raise ValueError(f"unknown feature kind {kind!r}; choose from {', '.join(KINDS)}")


def missing_blocks(library: Library, kinds: list[str]) -> dict[str, list[int]]:
    """The ``ml`` task that says which blocks of each kind this worker's cache still lacks."""
    return {kind: [b for b in range(library.n_blocks) if not _block_path(library, kind, b).exists()]
            for kind in kinds}


def featurize_block(library: Library, kind: str, block: int, smiles: list[str]) -> dict[str, Any]:
    """The ``ml`` task that computes and caches one block's features (a no-op if another worker already did).

    Returns:
        What was done, for the run's records: kind, block, molecules, seconds (0 when already cached).
    """
    path = _block_path(library, kind, block)
    if len(smiles) != len(library.block_rows(block)):
        raise ValueError(f"block {block} of {library.key} has {len(library.block_rows(block))} molecules, "
                         f"{len(smiles)} given")
    start = time.perf_counter()
    if not path.exists():
        features = compute_features(kind, smiles)
        if kind == "fingerprints":
            atomic_save(path, lambda tmp: np.save(tmp, features))
        else:
            atomic_save(path, features.save)
    return {"kind": kind, "block": block, "molecules": len(smiles), "seconds": time.perf_counter() - start}


@lru_cache(maxsize=256)
def load_block(library: Library, kind: str, block: int) -> Any:
    """One cached block (memory-mapped for fingerprints); kept in the worker process between rounds.

    Raises:
        FileNotFoundError: the block was never featurized on this worker's site.
    """
    path = _block_path(library, kind, block)
    if not path.exists():
        raise FileNotFoundError(f"features {kind} of block {block} of library {library.key} are not cached "
                                f"on {path.parent}; the campaign featurizes the library before scoring")
    if kind == "fingerprints":
        return np.load(path, mmap_mode="r")
    if kind == "groups":
        from methods.features import GroupTable

        return GroupTable.load(path)
    from methods.mpnn import GraphBatch

    return GraphBatch.load(path)


def score_block(model: Any, library: Library, block: int, rows: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``ml`` scoring task: a surrogate's predictions for rows of one cached block.

    Args:
        model: A trained surrogate (:class:`methods.surrogates.Surrogate`), usually as a proxy.
        library: The search space.
        block: Which block.
        rows: Positions inside the block to score (default: all of it).

    Returns:
        float32 mean and standard deviation per row (None for a model without one); float32 halves the message.
    """
    mean, std = model.predict_block(library, block, rows)
    return (np.asarray(mean, dtype=np.float32), None if std is None else np.asarray(std, dtype=np.float32))
