"""Reuse over the dataset itself: a changed document's unchanged chunks keep their vectors.

A run (or a watcher's round) that replaces documents first indexes the
vectors the sink already holds, before anything leaves it, and wraps the
embedder for that round so that only chunks whose text is new reach the
API. A file dataset is indexed whole (a :class:`ReuseIndex` over
``sink.path``: the writer keeps the shard files it retires until the round
ends, so the index can read them); a Postgres table gives the vectors of the
changed (and, for renames, deleted) sources' rows, held in memory as
:class:`StoredVectors`.
"""

from __future__ import annotations

import numpy as np


class StoredVectors:
    """Vectors by content hash, in memory: the same lookups as a :class:`ReuseIndex`."""

    def __init__(self, hashes: list[str], matrix: np.ndarray) -> None:
        self._where: dict[str, int] = {}
        for i, h in enumerate(hashes):
            self._where.setdefault(h, i)
        self._matrix = matrix
        self.dtype = matrix.dtype
        #: stored elements per vector (``dimensions / 8`` for the packed types)
        self.width = int(matrix.shape[1]) if matrix.ndim == 2 else 0
        self.rows = len(hashes)
        self.distinct = len(self._where)

    def lookup(self, hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Which hashes are held, and their vectors in the order of ``hashes`` (the found ones only)."""
        rows = [self._where.get(h, -1) for h in hashes]
        found = np.fromiter((r >= 0 for r in rows), bool, len(rows))
        picked = np.asarray([r for r in rows if r >= 0], dtype=np.int64)
        return found, self._matrix[picked].reshape(len(picked), self.width)

    def contains(self, hashes: list[str]) -> np.ndarray:
        """Which hashes are held."""
        return np.fromiter((h in self._where for h in hashes), bool, len(hashes))

    def close(self) -> None:
        """Let go of the vectors."""
        self._where = {}
        self._matrix = self._matrix[:0]
