"""Reuse over the dataset itself: a changed document's unchanged chunks keep their vectors.

A rerun that replaces a document indexes the dataset's ``content_hash``
column before it changes anything (a :class:`ReuseIndex` over ``sink.path``)
and hands the index to the embedder, so that only the chunks whose text is
new reach the API. The writer keeps the files it retires until it closes,
so the index can read them all run long. With ``run.reuse_from`` as well,
:class:`ChainedIndex` asks the dataset itself first, then the earlier one.
"""

from __future__ import annotations

import numpy as np

from pipeline.dataset.reuse_index import ReuseIndex


class ChainedIndex:
    """Two reuse indexes asked in turn: a hash missing from the first is looked up in the second."""

    def __init__(self, first: ReuseIndex, second: ReuseIndex) -> None:
        self.first = first
        self.second = second
        self.width = first.width or second.width
        self.dtype = first.dtype
        self.rows = first.rows + second.rows
        self.distinct = first.distinct + second.distinct

    def lookup(self, hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Which hashes either index holds, and their vectors in order (see :meth:`ReuseIndex.lookup`)."""
        found, stored = self.first.lookup(hashes)
        missing = np.flatnonzero(~found)
        if not missing.size:
            return found, stored
        more, extra = self.second.lookup([hashes[i] for i in missing])
        if not more.any():
            return found, stored
        out = np.empty((int(found.sum()) + int(more.sum()), stored.shape[1] or extra.shape[1]), self.dtype)
        both = found.copy()
        both[missing[more]] = True
        rows = np.flatnonzero(both)
        from_first = np.isin(rows, np.flatnonzero(found))
        out[from_first] = stored
        out[~from_first] = extra
        return both, out

    def contains(self, hashes: list[str]) -> np.ndarray:
        """Which hashes either index holds (prefixes only, see :meth:`ReuseIndex.contains`)."""
        return self.first.contains(hashes) | self.second.contains(hashes)

    def close(self) -> None:
        """Close both."""
        try:
            self.first.close()
        finally:
            self.second.close()
