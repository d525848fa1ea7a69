"""Embedders: turn a :class:`~pipeline.types.Batch` into an :class:`~pipeline.types.EmbeddedBatch`.

:class:`Embedder` is the seam the job's embed stage uses; :func:`make_embedder`
builds one from ``embedding:``. ``http`` speaks ``POST /v1/embeddings``
(``answer`` reads its answers, ``retry`` is the request retry policy),
``local`` runs the packaged wordllama model, ``reuse`` takes vectors from an
earlier dataset first; ``limits`` paces requests (the :class:`Limiter` seam)
and keeps ``run.max_tokens``, ``learned`` knows the budget (configured, told
by the server, found from 429s), ``shared`` keeps one budget for every
worker in Redis; ``vectors`` holds the codecs, ``tokens`` the
token estimate. Heavy modules are imported only when an embedder is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Self

if TYPE_CHECKING:
    import random

    import anyio
    import httpx

    from pipeline.config import EmbeddingConfig
    from pipeline.dataset.reuse_index import ReuseIndex
    from pipeline.embed.limits import Budget, Limiter
    from pipeline.embed.retry import OnRetry, Sleep
    from pipeline.types import Batch, EmbeddedBatch


class Embedder(Protocol):
    """What the embed stage needs from a provider.

    ``embed`` raises :class:`~pipeline.errors.FatalApiError` (and subclasses)
    to stop the run, and :class:`~pipeline.errors.BudgetExhausted` when
    ``run.max_tokens`` would be passed; everything else an input can cause
    comes back as failures in the answer.
    """

    @property
    def dimensions(self) -> int | None:
        """Stored elements per vector (``dimensions / 8`` for the packed types), once known."""
        ...

    @property
    def reported_model(self) -> str | None:
        """The model the server says answered (its ``model`` field), once an answer came."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def embed(self, batch: Batch) -> EmbeddedBatch:
        """Vectors for ``batch.chunks``; rejected inputs as failures."""
        ...


def make_embedder(
    cfg: EmbeddingConfig,
    api_key: str | None,
    *,
    reuse: ReuseIndex | None = None,
    on_retry: OnRetry | None = None,
    budget: Budget | None = None,
    limiter: Limiter | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    cpu_limiter: anyio.CapacityLimiter | None = None,
    sleep: Sleep | None = None,
    rng: random.Random | None = None,
    world_size: int = 1,
) -> Embedder:
    """The embedder for ``cfg.provider``, wrapped to take vectors from ``reuse`` first when given.

    ``limiter`` paces requests (default: :func:`~pipeline.embed.limits.make_limiter`'s,
    one budget shared through ``cfg.rate_limit_store`` when set, of which this
    worker paces ``1 / world_size`` while the store is away); ``cpu_limiter`` bounds the worker threads of the
    reuse lookups; ``transport``, ``sleep`` and ``rng`` are for tests.
    """
    embedder: Embedder
    if cfg.provider == "local":
        from pipeline.embed.local import LocalEmbedder

        embedder = LocalEmbedder(cfg, budget=budget)
    else:
        from pipeline.embed.http import HttpEmbedder

        embedder = HttpEmbedder(
            cfg, api_key=api_key, limiter=limiter, transport=transport, sleep=sleep, rng=rng,
            on_retry=on_retry, budget=budget, world_size=world_size,
        )
    if reuse is not None:
        from pipeline.embed.reuse import ReusingEmbedder

        embedder = ReusingEmbedder(embedder, reuse, limiter=cpu_limiter)
    return embedder
