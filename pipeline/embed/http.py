"""``provider: http``: batches through an OpenAI-compatible ``POST /v1/embeddings``.

:class:`HttpEmbedder` builds the request body once per batch, sends it
through one pooled ``httpx.AsyncClient`` under the retry policy of
:mod:`pipeline.embed.retry`, and decodes the answer with
:mod:`pipeline.embed.answer`. It returns vectors, records the inputs the
API rejected on their own as failures, or raises :class:`FatalApiError`.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import anyio
import httpx
import numpy as np
import orjson

from pipeline.config import EmbeddingConfig
from pipeline.embed import vectors
from pipeline.embed.answer import Answer, AnswerReader
from pipeline.embed.learned import ServerLimits
from pipeline.embed.limits import Budget, Limiter, make_limiter
from pipeline.embed.retry import Bisector, ConnectFailed, OnRetry, Retrying, Sleep, classify
from pipeline.embed.shared import SharedLimiter
from pipeline.embed.tokens import estimate_tokens
from pipeline.errors import RetryableApiError
from pipeline.logs import get_logger, redact_url
from pipeline.types import Batch, Chunk, EmbeddedBatch


def endpoint(url: str) -> str:
    """The embeddings URL for a base URL, accepting ``…``, ``…/v1`` or the full path."""
    url = url.rstrip("/")
    if url.endswith("/embeddings"):
        return url
    if url.endswith("/v1"):
        return url + "/embeddings"
    return url + "/v1/embeddings"


def request_params(cfg: EmbeddingConfig) -> dict[str, Any]:
    """The body fields every request of ``cfg`` carries besides ``input``."""
    params: dict[str, Any] = {"model": cfg.model}
    if cfg.input_type is not None:
        params["input_type"] = cfg.input_type
    if cfg.embedding_type != "float":
        params["embedding_type"] = cfg.embedding_type
    # "raw" is the spec's default; omit it so OpenAI-style servers accept the body
    if cfg.encoding_format == "base64":
        params["encoding_format"] = "base64"
    if cfg.allow_ignored_params:
        params["allow_ignored_params"] = True
    if cfg.dimensions is not None:
        params["dimensions"] = cfg.dimensions
    return params


class HttpEmbedder:
    """Embeds batches through an OpenAI-compatible ``/v1/embeddings`` endpoint.

    Use as an async context manager (it owns the connection pool). The
    transport, limiter, sleep and random source are injectable for tests.
    """

    def __init__(
        self,
        cfg: EmbeddingConfig,
        *,
        api_key: str | None,
        limiter: Limiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
        on_retry: OnRetry | None = None,
        budget: Budget | None = None,
        world_size: int = 1,
    ) -> None:
        """``budget`` (``run.max_tokens``) refuses requests that could overspend it.

        Without a ``limiter``, one is made from ``cfg`` (shared through
        ``cfg.rate_limit_store`` when set, this worker's ``1 / world_size``
        of the budget while the store is away).
        """
        assert cfg.url is not None
        self.cfg = cfg
        self._url = endpoint(cfg.url)
        self._budget = budget
        self._own_limiter = limiter is None  # made here: closed here
        self.retrying = Retrying(
            cfg.max_attempts,
            limiter=limiter or make_limiter(cfg, self._url, world_size),
            where=redact_url(self._url),  # a key passed as https://user:KEY@host stays out of errors
            max_wait_s=cfg.max_wait_s,
            sleep=sleep or anyio.sleep,
            rng=rng,
            on_retry=on_retry,
        )
        self._bisector: Bisector[Answer] = Bisector()
        self._reader = AnswerReader(cfg.embedding_type, cfg.dimensions)
        self._params = request_params(cfg)
        #: the model the server says answered (its ``model`` field), once an answer came
        self.reported_model: str | None = None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        limits = httpx.Limits(
            max_connections=cfg.concurrency + 2, max_keepalive_connections=cfg.concurrency + 2
        )
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, 10.0)),
            limits=limits,
            transport=transport,
        )

    @property
    def dimensions(self) -> int | None:
        """Stored elements per vector: from ``embedding.dimensions``, else fixed by the first answer."""
        return self._reader.width

    async def __aenter__(self) -> HttpEmbedder:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)
        limiter = self.retrying.limiter
        if self._own_limiter and isinstance(limiter, SharedLimiter):
            await limiter.aclose()

    async def embed(self, batch: Batch) -> EmbeddedBatch:
        """Embed ``batch``, isolating inputs the API rejects on their own."""
        answered, usage, failures = await self._bisector.run(batch.chunks, self._send)
        chunks = tuple(c for part, _ in answered for c in part)
        if len(answered) == 1:
            matrix = answered[0][1].vectors
        elif answered:
            matrix = np.concatenate([answer.vectors for _, answer in answered])
        else:
            dtype = vectors.DTYPES[self.cfg.embedding_type]
            matrix = np.empty((0, self.dimensions or 0), dtype=dtype)
        return EmbeddedBatch.answering(batch, chunks, matrix, usage, batch.failures + tuple(failures))

    async def _send(self, chunks: tuple[Chunk, ...]) -> Answer:
        """One request for ``chunks``, retried, within the token budget."""
        texts = [c.text for c in chunks]
        estimate = sum(estimate_tokens(t) for t in texts)
        body = orjson.dumps({**self._params, "input": texts})
        held = self._budget.reserve(estimate) if self._budget is not None else 0
        try:
            answer, attempts = await self.retrying.send(lambda: self._request(body, len(texts)), estimate)
        except BaseException:
            if self._budget is not None:
                self._budget.settle(held, estimate, None)
            raise
        if self._budget is not None:
            self._budget.settle(held, estimate, answer.total_tokens)
        if answer.model is not None and self.reported_model is None:
            self.reported_model = answer.model
            if answer.model != self.cfg.model:  # an alias, or a proxy routing elsewhere: worth knowing
                get_logger().warning("model_differs", configured=self.cfg.model, reported=answer.model)
        return dataclasses.replace(answer, attempts=attempts)

    async def _request(self, body: bytes, n: int) -> Answer:
        """One attempt; transport failures and non-2xx answers become :class:`ApiError`."""
        timeout = self.cfg.timeout_s
        try:
            # httpx's timeouts bound each read; a body trickling in byte by byte would never end
            with anyio.fail_after(timeout):
                response = await self._client.post(self._url, content=body)
        except TimeoutError as exc:
            raise RetryableApiError(f"timed out after {timeout:g}s (the whole request)") from exc
        except httpx.TimeoutException as exc:
            raise RetryableApiError(f"timed out after {timeout:g}s ({type(exc).__name__})") from exc
        except httpx.ConnectError as exc:
            raise ConnectFailed(redact_url(f"connection failed: {type(exc).__name__}: {exc}")) from exc
        except httpx.TransportError as exc:  # its text may quote the URL: it ends in logs and errors/
            raise RetryableApiError(redact_url(f"connection failed: {type(exc).__name__}: {exc}")) from exc
        server = ServerLimits.from_headers(response.headers)
        if server is not None:  # every answer, 200s included: pace to the server's budget from the first on
            await self.retrying.limiter.observe(server)
        if response.status_code != 200:
            raise classify(response, self.cfg.model)
        try:
            return self._reader.read(response.content, n)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise RetryableApiError(f"malformed response: {exc}", status=200) from exc


__all__ = ["HttpEmbedder", "endpoint", "request_params"]
