"""Before batching: what the API need not see.

Two kinds of chunk cost a request slot for nothing if they reach the
batcher as they are:

- a chunk whose id an earlier record (or the dataset) already holds ends as
  a ``duplicate_id`` error row whatever its vector: the :class:`IdRegistry`
  is asked here, in read order (first come, first kept, as the write stage
  used to ask after paying), and the chunk becomes that failure;
- a chunk whose ``content_hash`` a reuse index holds (the dataset's own
  vectors of a changed document, or ``run.reuse_from``) keeps its stored
  vector: it becomes :class:`~pipeline.types.Stored`, which the batcher lets
  ride along without counting it, so requests go out full.

An id is taken by the first record read with it, even when the API then
refuses that record's chunk (its error row can be retried; the later one
stays a duplicate).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import anyio
import numpy as np

from pipeline.stages.ids import IdRegistry
from pipeline.types import Chunk, EmbeddedBatch, Failure, Piece, Stored, Usage


class VectorIndex(Protocol):
    """What triage needs of a reuse index (:class:`~pipeline.dataset.reuse_index.ReuseIndex`,
    :class:`~pipeline.dataset.self_reuse.StoredVectors`)."""

    def lookup(self, hashes: list[str]) -> tuple[np.ndarray, np.ndarray]: ...


class Triage:
    """Turns the chunks of a list of pieces into duplicate-id failures and stored vectors where it can.

    ``ids`` takes the ids (None: not checked); ``indexes`` are asked in
    order, each for the hashes the ones before it lack. Lookups run in
    worker threads under ``limiter``.
    """

    def __init__(self, ids: IdRegistry | None, indexes: Sequence[VectorIndex] = (), *,
                 limiter: anyio.CapacityLimiter | None = None) -> None:
        self.ids = ids
        self.indexes = list(indexes)
        self._limiter = limiter

    @property
    def looks_up(self) -> bool:
        """Whether chunks are looked up (batches then say which have a stored vector)."""
        return bool(self.indexes)

    async def __call__(self, pieces: list[Piece]) -> list[Piece]:
        """``pieces`` with their chunks sorted out (ids in the event loop, vectors in a worker thread)."""
        if self.ids is not None:
            pieces = claim_ids(self.ids, pieces)
        if self.indexes:
            pieces = await anyio.to_thread.run_sync(self.look_up, pieces, limiter=self._limiter)
        return pieces

    def look_up(self, pieces: list[Piece]) -> list[Piece]:
        """``pieces`` with each chunk an index holds turned into :class:`Stored` (blocking)."""
        chunks = _chunks(pieces)
        if not chunks:
            return pieces
        vectors: dict[int, np.ndarray] = {}  # chunk position → its stored vector
        left = list(range(len(chunks)))
        for index in self.indexes:
            if not left:
                break
            found, matrix = index.lookup([chunks[i].content_hash for i in left])
            hits = np.flatnonzero(found).tolist()
            for row, i in enumerate(hits):
                vectors[left[i]] = matrix[row]
            left = [i for i, hit in zip(left, found.tolist()) if not hit]
        return _replace(pieces, {i: Stored(chunks[i], vector) for i, vector in vectors.items()})


def claim_ids(ids: IdRegistry, pieces: list[Piece]) -> list[Piece]:
    """``pieces`` with each chunk whose id is taken turned into its ``duplicate_id`` failure; the other
    chunks take their ids now.

    One :meth:`IdRegistry.check` for the whole list (what the write stage
    asked of an embedded batch), without vectors.
    """
    chunks = _chunks(pieces)
    if not chunks:
        return pieces
    asked = EmbeddedBatch(0, tuple(chunks), np.empty((len(chunks), 0), np.float32), Usage())
    answer = ids.check(asked)
    if answer is asked:
        return pieces
    kept = {id(chunk) for chunk in answer.chunks}
    late = iter(answer.failures)  # in the order of the chunks left out (but those already stored)
    return _replace(pieces, {i: None if ids.stored_again(chunk) else next(late)
                             for i, chunk in enumerate(chunks) if id(chunk) not in kept})


def _chunks(pieces: list[Piece]) -> list[Chunk]:
    """The chunks still to embed of ``pieces``, in order."""
    return [item for piece in pieces if isinstance(piece, tuple) for item in piece if isinstance(item, Chunk)]


def _replace(pieces: list[Piece], instead: dict[int, Stored | Failure | None]) -> list[Piece]:
    """``pieces`` with their ``i``-th chunk still to embed (as :func:`_chunks` counts) replaced by ``instead[i]``
    (None: left out)."""
    if not instead:
        return pieces
    out: list[Piece] = []
    i = 0
    for piece in pieces:
        if not isinstance(piece, tuple):
            out.append(piece)
            continue
        items: list[Chunk | Stored | Failure] = []
        for item in piece:
            if isinstance(item, Chunk):
                item, i = instead.get(i, item), i + 1
                if item is None:
                    continue
            items.append(item)
        out.append(tuple(items))
    return out
