"""The embeddings API: turn a :class:`Batch` into an :class:`EmbeddedBatch`.

:class:`HttpEmbedder` speaks ``POST /v1/embeddings`` (Heroku Managed
Inference, or any OpenAI-compatible server) through one pooled
``httpx.AsyncClient``; :class:`LocalEmbedder` runs the embedded model. Both
retry nothing the caller can see: an embedder returns vectors, records the
inputs the API rejected on their own as failures, or raises
:class:`FatalApiError`.

Failures are classified once, here, from status codes and exception classes:

- 408, 409, 429, 5xx, timeouts, connection errors, malformed or short
  bodies → :class:`RetryableApiError`, retried with capped exponential
  backoff and jitter, honouring ``Retry-After`` and ``x-ratelimit-reset-*``;
- 400, 413, 422 → :class:`InputRejected`: the batch is bisected until the
  bad input is alone, and only that one becomes a failure;
- 401, 403, 404 and an endpoint still unreachable after every attempt →
  :class:`FatalApiError`: the run stops.
"""

from __future__ import annotations

import random
import re
from typing import Any, Awaitable, Callable, Protocol

import anyio
import httpx
import numpy as np
import orjson

from pipeline.embed import vectors
from pipeline.config import EmbeddingConfig
from pipeline.errors import ApiError, FatalApiError, InputRejected, RetryableApiError
from pipeline.embed.local import shared_model
from pipeline.embed.limits import Budget, RateLimiter
from pipeline.types import Batch, Chunk, EmbeddedBatch, Failure, Usage

Sleep = Callable[[float], Awaitable[None]]

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
REJECTED_STATUS = frozenset({400, 413, 422})
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
SYSTEMATIC_REJECTIONS = 8  # lone inputs refused, with no success ever, that make a config error


class Embedder(Protocol):
    """What the embed stage needs from a provider."""

    async def embed(self, batch: Batch) -> EmbeddedBatch:
        """Vectors for ``batch.chunks``; rejected inputs as failures."""
        ...


def estimate_tokens(text: str) -> int:
    """A rough token count before the call (learned against ``usage`` later)."""
    return len(text) // 4 + 1


def endpoint(url: str) -> str:
    """The embeddings URL for a base URL, accepting ``…``, ``…/v1`` or the full path."""
    url = url.rstrip("/")
    if url.endswith("/embeddings"):
        return url
    if url.endswith("/v1"):
        return url + "/embeddings"
    return url + "/v1/embeddings"


_RESET = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")


def parse_reset(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` or ``x-ratelimit-reset-*`` value.

    Accepts plain seconds (``"2"``, ``"0.5"``) and durations like ``"51s"``,
    ``"1m30s"``, ``"250ms"``. Returns ``None`` for anything else.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    m = _RESET.match(value)
    if not m or not any(m.groups()):
        return None
    h, mins, s, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mins * 60 + s + ms / 1000


def retry_delay(response: httpx.Response) -> float | None:
    """How long the server asked us to wait, from its headers, if it said."""
    headers = response.headers
    delays = [parse_reset(headers.get("retry-after"))]
    if response.status_code == 429:
        # the axis that refused us has the longer reset; the other one's is about 0
        for axis in ("requests", "tokens"):
            delays.append(parse_reset(headers.get(f"x-ratelimit-reset-{axis}")))
    known = [d for d in delays if d is not None]
    return max(known) if known else None


def _error_message(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("error")
        if message:
            return str(message)[:500]
    except Exception:
        pass
    text = response.text.strip().replace("\n", " ")
    return text[:200] or response.reason_phrase


def classify(response: httpx.Response, model: str) -> ApiError:
    """The exception for a non-2xx response."""
    status = response.status_code
    message = _error_message(response)
    if status in (401, 403):
        word = "rejected the key" if status == 401 else "refused access"
        return FatalApiError(f"embedding API {word} ({status}): {message}", status=status)
    if status == 404:
        return FatalApiError(
            f"embedding API answered 404: model {model!r} or the URL is wrong: {message}",
            status=status,
        )
    if status in REJECTED_STATUS:
        return InputRejected(message, status=status)
    if status in RETRYABLE_STATUS or status >= 500:
        return RetryableApiError(
            f"HTTP {status}: {message}", status=status, retry_after=retry_delay(response)
        )
    return FatalApiError(f"embedding API answered {status}: {message}", status=status)


class HttpEmbedder:
    """Embeds batches through an OpenAI-compatible ``/v1/embeddings`` endpoint.

    Use as an async context manager (it owns the connection pool). The
    transport, sleep and random source are injectable for tests.
    """

    def __init__(
        self,
        cfg: EmbeddingConfig,
        *,
        api_key: str | None,
        limiter: RateLimiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = anyio.sleep,
        rng: random.Random | None = None,
        on_retry: Callable[[ApiError, int], None] | None = None,
        budget: Budget | None = None,
    ) -> None:
        """``budget`` (``run.max_tokens``) refuses requests that could overspend it."""
        assert cfg.url is not None
        self._budget = budget
        self.cfg = cfg
        self._url = endpoint(cfg.url)
        self._limiter = limiter or RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_retry = on_retry
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
        self.dimensions: int | None = None  # stored width, fixed by the first answer
        self._successes = 0  # requests answered with vectors, ever
        self._lone_rejections = 0  # single inputs the API refused
        self._params: dict[str, Any] = {"model": cfg.model}
        if cfg.input_type is not None:
            self._params["input_type"] = cfg.input_type
        if cfg.embedding_type != "float":
            self._params["embedding_type"] = cfg.embedding_type
        self._params["encoding_format"] = "base64" if cfg.encoding_format == "base64" else "float"
        if cfg.encoding_format == "raw":
            # "raw" is the spec's default; omit it so OpenAI-style servers accept the body
            del self._params["encoding_format"]
        if cfg.allow_ignored_params:
            self._params["allow_ignored_params"] = True
        if cfg.dimensions is not None:
            self._params["dimensions"] = cfg.dimensions

    async def __aenter__(self) -> HttpEmbedder:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)

    async def embed(self, batch: Batch) -> EmbeddedBatch:
        """Embed ``batch``, isolating inputs the API rejects on their own."""
        usage = Usage()
        kept: list[tuple[Chunk, ...]] = []
        parts: list[np.ndarray] = []
        failures: list[Failure] = list(batch.failures)
        pending = [batch.chunks] if batch.chunks else []
        while pending:
            chunks = pending.pop(0)
            try:
                matrix, part_usage = await self._request_with_retries(chunks)
            except InputRejected as exc:
                usage = usage + Usage(requests=exc.attempts, retries=exc.attempts - 1)
                if len(chunks) > 1:  # bisect: the bad input ends up alone
                    mid = len(chunks) // 2
                    pending[:0] = [chunks[:mid], chunks[mid:]]
                    continue
                self._lone_rejections += 1
                if self._successes == 0 and self._lone_rejections >= SYSTEMATIC_REJECTIONS:
                    # nothing was ever accepted: the request, not the inputs, is wrong
                    raise FatalApiError(
                        f"embedding API rejects every input ({exc.status}): {exc.message}; "
                        "check embedding.model, input_type, embedding_type and encoding_format",
                        status=exc.status,
                    ) from exc
                failures.append(_failure(chunks[0], "rejected", exc.message, exc.status, exc.attempts))
                continue
            except RetryableApiError as exc:  # attempts exhausted: the rows go to errors/
                usage = usage + Usage(requests=exc.attempts, retries=exc.attempts - 1)
                failures.extend(
                    _failure(c, "api_error", exc.message, exc.status, exc.attempts) for c in chunks
                )
                continue
            usage = usage + part_usage
            kept.append(chunks)
            parts.append(matrix)
        chunks_out = tuple(c for part in kept for c in part)
        if parts:
            matrix = parts[0] if len(parts) == 1 else np.concatenate(parts)
        else:
            matrix = np.empty((0, self.dimensions or 0), dtype=vectors.DTYPES[self.cfg.embedding_type])
        return EmbeddedBatch(
            seq=batch.seq,
            chunks=chunks_out,
            vectors=matrix,
            usage=usage,
            failures=tuple(failures),
            records=batch.records,
            marks=batch.marks,
        )

    async def _request_with_retries(self, chunks: tuple[Chunk, ...]) -> tuple[np.ndarray, Usage]:
        texts = [c.text for c in chunks]
        estimate = sum(estimate_tokens(t) for t in texts)
        body = orjson.dumps({**self._params, "input": texts})
        held = self._budget.reserve(estimate) if self._budget is not None else 0
        try:
            matrix, usage = await self._attempts(body, len(texts), estimate)
        except BaseException:
            if self._budget is not None:
                self._budget.settle(held, estimate, None)
            raise
        if self._budget is not None:
            self._budget.settle(held, estimate, usage.total_tokens)
        return matrix, usage

    async def _attempts(self, body: bytes, n: int, estimate: int) -> tuple[np.ndarray, Usage]:
        attempt = 0
        while True:
            attempt += 1
            reserved = await self._limiter.acquire(estimate)
            try:
                matrix, prompt, total = await self._request(body, n)
            except ApiError as exc:
                exc.attempts = attempt
                if isinstance(exc, FatalApiError):
                    raise
                if isinstance(exc, InputRejected):
                    raise
                if exc.status == 429:
                    self._limiter.backoff(exc.retry_after if exc.retry_after is not None else 1.0)
                if attempt >= self.cfg.max_attempts:
                    if exc.status is None and isinstance(exc.__cause__, httpx.ConnectError):
                        raise FatalApiError(
                            f"embedding API unreachable at {self._url} after {attempt} attempts: "
                            f"{exc.message}"
                        ) from exc
                    raise
                if self._on_retry is not None:
                    self._on_retry(exc, attempt)
                await self._sleep(self._backoff(attempt, exc.retry_after))
                continue
            self._successes += 1
            self._limiter.record(estimate, reserved, prompt)
            return matrix, Usage(requests=attempt, retries=attempt - 1, prompt_tokens=prompt, total_tokens=total)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """``retry_after`` when the server gave one, else capped exponential backoff with jitter."""
        if retry_after is not None:  # the server said when: no need to guess
            return retry_after + self._rng.uniform(0, 0.1)
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    async def _request(self, body: bytes, n: int) -> tuple[np.ndarray, int, int]:
        try:
            response = await self._client.post(self._url, content=body)
        except httpx.TimeoutException as exc:
            raise RetryableApiError(f"timed out after {self.cfg.timeout_s:g}s ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise RetryableApiError(f"connection failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise classify(response, self.cfg.model)
        try:
            return self._decode(response.content, n)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise RetryableApiError(f"malformed response: {exc}", status=200) from exc

    def _decode(self, content: bytes, n: int) -> tuple[np.ndarray, int, int]:
        """Vectors in input order, prompt and total tokens; ``ValueError`` if malformed."""
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ValueError("body is not JSON") from exc
        data = body["data"]
        if not isinstance(data, list) or len(data) != n:
            raise ValueError(f"expected {n} vectors, got {len(data) if isinstance(data, list) else 'none'}")
        order = [item["index"] for item in data]
        if sorted(order) != list(range(n)):
            raise ValueError("vector indexes do not match the inputs")
        items = [None] * n
        for item, i in zip(data, order):
            items[i] = item["embedding"]
        etype = self.cfg.embedding_type
        if all(isinstance(x, str) for x in items):
            matrix = vectors.decode_base64(items, etype)  # type: ignore[arg-type]
        elif all(isinstance(x, list) for x in items):
            matrix = vectors.decode_raw(items, etype)
        else:
            raise ValueError("embeddings are neither base64 strings nor number lists")
        if self.dimensions is None:
            self.dimensions = matrix.shape[1]
        elif matrix.shape[1] != self.dimensions:
            raise ValueError(f"vectors have {matrix.shape[1]} values, earlier ones {self.dimensions}")
        usage = body.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        total = int(usage.get("total_tokens") or prompt)
        return matrix, prompt, total


def _failure(chunk: Chunk, error_type: str, message: str, status: int | None, attempts: int) -> Failure:
    return Failure(
        id=chunk.id,
        doc_id=chunk.doc_id,
        chunk_index=chunk.chunk_index,
        text=chunk.text,
        source=chunk.source,
        location=chunk.location,
        error_type=error_type,
        message=message,
        status=status,
        attempts=attempts,
    )


class LocalEmbedder:
    """Embeds batches with the in-process wordllama model (no network)."""

    def __init__(self, cfg: EmbeddingConfig, *, budget: Budget | None = None, **_: Any) -> None:
        """Load the packaged model; ``budget`` counts its tokens like the API's."""
        self.cfg = cfg
        self._budget = budget
        self._model = shared_model()
        self.dimensions = vectors.width(cfg.embedding_type, self._model.dimensions)

    async def __aenter__(self) -> LocalEmbedder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def embed(self, batch: Batch) -> EmbeddedBatch:
        """Vectors for every chunk, computed in a worker thread."""
        if batch.chunks:
            texts = [c.text for c in batch.chunks]
            estimate = sum(estimate_tokens(t) for t in texts)
            held = self._budget.reserve(estimate) if self._budget is not None else 0
            floats, tokens = await anyio.to_thread.run_sync(self._model.embed, texts)
            if self._budget is not None:
                self._budget.settle(held, estimate, tokens)
            matrix = vectors.quantize(floats, self.cfg.embedding_type)
            usage = Usage(requests=1, prompt_tokens=tokens, total_tokens=tokens)
        else:
            matrix = np.empty((0, self.dimensions), dtype=vectors.DTYPES[self.cfg.embedding_type])
            usage = Usage()
        return EmbeddedBatch(
            seq=batch.seq,
            chunks=batch.chunks,
            vectors=matrix,
            usage=usage,
            failures=batch.failures,
            records=batch.records,
            marks=batch.marks,
        )


def make_embedder(cfg: EmbeddingConfig, api_key: str | None, **kwargs: Any) -> HttpEmbedder | LocalEmbedder:
    """The embedder for ``cfg.provider``."""
    if cfg.provider == "local":
        return LocalEmbedder(cfg, **kwargs)
    return HttpEmbedder(cfg, api_key=api_key, **kwargs)
