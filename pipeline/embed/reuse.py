"""``run.reuse_from``: an embedder that takes stored vectors before it asks the API.

The index of the earlier dataset lives in :mod:`pipeline.dataset.reuse_index`;
this wrapper sends only the chunks the index lacks, so that only new or
changed chunks reach the API (and the bill).
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import TYPE_CHECKING, Self

import anyio
import numpy as np

from pipeline.errors import FatalApiError
from pipeline.types import Batch, EmbeddedBatch, Usage

if TYPE_CHECKING:
    from pipeline.dataset.reuse_index import ReuseIndex
    from pipeline.dataset.self_reuse import StoredVectors
    from pipeline.embed import Embedder


class ReusingEmbedder:
    """An :class:`~pipeline.embed.Embedder` that sends only the chunks ``index`` lacks.

    Chunks whose ``content_hash`` is in the index take the stored vector and
    are counted in ``reused``; the others go to ``inner`` as one batch with the
    same ``seq``, ``failures``, ``records`` and ``marks``. The answer keeps the
    chunks in their original order (minus those the inner embedder failed),
    with the inner embedder's usage and failures. A batch wholly reused costs
    no request. Entering it enters ``inner``. Index lookups run in worker
    threads under ``limiter``; a batch looked up already (its ``found``,
    over every index of the chain) is taken as it is.
    """

    def __init__(
        self, inner: Embedder, index: ReuseIndex | StoredVectors, *, limiter: anyio.CapacityLimiter | None = None,
        where: str = "run.reuse_from: the earlier dataset",
    ) -> None:
        self.inner = inner
        self.index = index
        self._limiter = limiter
        #: what ``index`` is, for errors
        self.where = where

    @property
    def dimensions(self) -> int | None:
        """The stored vector width: the inner embedder's once known, else the earlier dataset's."""
        known = self.inner.dimensions
        return known if known is not None else (self.index.width or None)

    @property
    def reported_model(self) -> str | None:
        """The model the inner embedder's server says answered."""
        return self.inner.reported_model

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.__aexit__(*exc)

    async def embed(self, batch: Batch) -> EmbeddedBatch:
        """Vectors for ``batch.chunks``: from the index where it has them, else from ``inner``."""
        chunks = batch.chunks
        if batch.found is not None:  # looked up before batching (pipeline.stages.triage), in every index
            found = batch.found
            stored = batch.stored if batch.stored is not None else np.empty((0, self.index.width), self.index.dtype)
        elif chunks:
            found, stored = await anyio.to_thread.run_sync(
                self.index.lookup, [c.content_hash for c in chunks], limiter=self._limiter
            )
        else:
            found, stored = np.zeros(0, bool), np.empty((0, self.index.width), self.index.dtype)
        reused = int(found.sum())
        if reused == len(chunks):
            return EmbeddedBatch.answering(batch, chunks, stored, Usage(), reused=reused)
        missing = tuple(c for c, hit in zip(chunks, found) if not hit)
        answer = await self.inner.embed(
            Batch(seq=batch.seq, chunks=missing, failures=batch.failures, records=batch.records, marks=batch.marks,
                  found=None if batch.found is None else np.zeros(len(missing), bool))
        )
        fresh = answer.vectors
        # every answer, reused or not: one batch of the other width would mix widths in the dataset
        if self.index.width and len(answer.chunks) and fresh.shape[1] != self.index.width:
            raise FatalApiError(
                f"{self.where} holds vectors {self.index.width} wide, "
                f"the API now returns {fresh.shape[1]}; refusing to mix them"
            )
        if not reused:
            return answer
        return self._merge(batch, found, stored, answer, reused)

    def _merge(
        self, batch: Batch, found: np.ndarray, stored: np.ndarray, answer: EmbeddedBatch, reused: int
    ) -> EmbeddedBatch:
        """Stored and fresh vectors back in batch order, minus the chunks ``inner`` failed."""
        fresh = answer.vectors
        # where each embedded chunk's vector is in `fresh` (ids, in case the inner embedder reorders)
        embedded: dict[str, deque[int]] = defaultdict(deque)
        for i, c in enumerate(answer.chunks):
            embedded[c.id].append(len(stored) + i)
        pick: list[int] = []
        kept = []
        next_stored = 0
        for c, hit in zip(batch.chunks, found):
            if hit:
                pick.append(next_stored)
                next_stored += 1
            elif embedded.get(c.id):
                pick.append(embedded[c.id].popleft())
            else:
                continue  # the inner embedder failed it: it is among answer.failures
            kept.append(c)
        pool = np.concatenate([stored, fresh.astype(self.index.dtype, copy=False).reshape(-1, stored.shape[1])])
        vectors = pool[np.asarray(pick, dtype=np.int64)]
        # an inner ReusingEmbedder (run.reuse_from under the dataset's own vectors) counts its own
        return EmbeddedBatch.answering(batch, tuple(kept), vectors, answer.usage, answer.failures,
                                       reused=reused + answer.reused)
