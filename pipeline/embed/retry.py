"""The request retry policy: what a failed request means, how long to wait, when to give up.

Failures are classified once, here, from status codes and exception classes:

- 408, 409, 425, 5xx, timeouts, connection errors, malformed or short
  bodies → :class:`RetryableApiError`, retried with capped exponential
  backoff and jitter, honouring ``Retry-After``, up to ``max_attempts``;
- 429 → :class:`RetryableApiError` too, but it means "wait", not "failed":
  the limiter holds every request (``Retry-After``, ``x-ratelimit-reset-*``)
  and the request is sent again, for up to ``max_wait_s`` of 429s in a row;
- 400, 413, 422 → :class:`InputRejected`: :class:`Bisector` splits the batch
  until the bad input is alone, and only that one becomes a failure; when
  the API never accepted anything and refuses a few inputs alone, the key or
  the model is wrong and the run stops;
- 401, 403, 404 → :class:`FatalApiError`, and a connection that fails on
  every attempt → :class:`EndpointUnreachable`: the run stops.
"""

from __future__ import annotations

import random
import time
from typing import Awaitable, Callable, Generic, Protocol, TypeVar

import anyio
import httpx
import numpy as np
import orjson

from pipeline.embed.learned import parse_reset
from pipeline.embed.limits import Limiter
from pipeline.errors import ApiError, EndpointUnreachable, FatalApiError, InputRejected, RetryableApiError
from pipeline.types import Chunk, Failure, Usage

Sleep = Callable[[float], Awaitable[None]]
OnRetry = Callable[[ApiError, int], None]

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
REJECTED_STATUS = frozenset({400, 413, 422})
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
SYSTEMATIC_REJECTIONS = 3  # lone inputs refused, with no success ever, that make a config error


class ConnectFailed(RetryableApiError):
    """No connection could be made: the request never reached the server."""


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


class Reported(Protocol):
    """An answer that says how many prompt tokens it cost."""

    @property
    def prompt_tokens(self) -> int: ...


R = TypeVar("R", bound=Reported)


class Retrying:
    """Sends one request until it succeeds, paced by a :class:`Limiter`.

    A failure is tried again after the delay the server asked for, else
    after capped exponential backoff with jitter, up to ``max_attempts``
    failures in all. A 429 is not a failure: it means "wait", so it makes
    the limiter hold everyone and the request is sent again when the limiter
    lets it, for up to ``max_wait_s`` seconds of 429s; only then does the
    request fail. ``where`` names the endpoint in the unreachable error.
    The clock, sleep and random source are injectable for tests.
    """

    def __init__(
        self,
        max_attempts: int,
        *,
        limiter: Limiter,
        where: str,
        max_wait_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = anyio.sleep,
        rng: random.Random | None = None,
        on_retry: OnRetry | None = None,
    ) -> None:
        self.max_attempts = max_attempts
        self.max_wait_s = max_wait_s
        self.limiter = limiter
        self._where = where
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_retry = on_retry

    async def send(self, request: Callable[[], Awaitable[R]], estimate: int) -> tuple[R, int]:
        """The answer of ``request`` (about ``estimate`` tokens) and the requests it took.

        Raises the last :class:`ApiError` with ``attempts`` set (every
        request sent, 429s included), or :class:`EndpointUnreachable` when no
        attempt could connect.
        """
        attempt = failed = 0
        limited_since: float | None = None  # when the 429s in a row began
        unreachable = True  # every attempt so far failed to connect
        while True:
            attempt += 1
            reservation = await self.limiter.reserve(estimate)
            try:
                answer = await request()
            except ApiError as exc:
                await self.limiter.settle(reservation, None)
                exc.attempts = attempt
                if isinstance(exc, (FatalApiError, InputRejected)):
                    raise
                unreachable = unreachable and isinstance(exc, ConnectFailed)
                if exc.status == 429:
                    await self.limiter.backoff(exc.retry_after)
                    now = self._clock()
                    limited_since = now if limited_since is None else limited_since
                    if now - limited_since >= self.max_wait_s:
                        raise
                    if self._on_retry is not None:
                        self._on_retry(exc, attempt)
                    # the limiter holds every request until the server's time; a little jitter spreads them
                    await self._sleep(self._rng.uniform(0, 0.05))
                    continue
                limited_since = None
                failed += 1
                if failed >= self.max_attempts:
                    if unreachable:
                        raise EndpointUnreachable(
                            f"embedding API unreachable at {self._where} after {attempt} attempts: "
                            f"{exc.message}"
                        ) from exc
                    raise
                if self._on_retry is not None:
                    self._on_retry(exc, attempt)
                await self._sleep(self.delay(failed, exc.retry_after))
                continue
            await self.limiter.settle(reservation, answer.prompt_tokens)
            return answer, attempt

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """``retry_after`` when the server gave one, else capped exponential backoff with jitter."""
        if retry_after is not None:  # the server said when: no need to guess
            return retry_after + self._rng.uniform(0, 0.1)
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
        return self._rng.uniform(ceiling / 2, ceiling)


class Sent(Protocol):
    """What :class:`Bisector` needs back from one request: the vectors and their usage."""

    @property
    def vectors(self) -> np.ndarray: ...

    @property
    def usage(self) -> Usage: ...


S = TypeVar("S", bound=Sent)


class Bisector(Generic[S]):
    """Splits a rejected batch until each input the API refuses is alone; the rest are embedded.

    One per embedder: it remembers across batches whether the API ever
    accepted a request, so that an API refusing everything (a wrong model,
    input_type or embedding_type) stops the run instead of failing every row.
    """

    def __init__(self) -> None:
        self.accepted = 0  # requests answered with vectors, ever
        self.lone_rejections = 0  # single inputs the API refused

    async def run(
        self, chunks: tuple[Chunk, ...], send: Callable[[tuple[Chunk, ...]], Awaitable[S]]
    ) -> tuple[list[tuple[tuple[Chunk, ...], S]], Usage, list[Failure]]:
        """Send ``chunks``: the answered parts in input order, the usage of every request, the failures."""
        usage = Usage()
        answered: list[tuple[tuple[Chunk, ...], S]] = []
        failures: list[Failure] = []
        pending = [chunks] if chunks else []
        while pending:
            part = pending.pop(0)
            try:
                answer = await send(part)
            except InputRejected as exc:
                usage = usage + Usage(requests=exc.attempts, retries=exc.attempts - 1)
                if len(part) > 1:
                    pending[:0] = self._split(part)
                    continue
                self._rejected_alone(exc)
                failures.append(Failure.of(part[0], "rejected", exc.message, status=exc.status, attempts=exc.attempts))
                continue
            except RetryableApiError as exc:  # attempts exhausted: the rows go to errors/
                usage = usage + Usage(requests=exc.attempts, retries=exc.attempts - 1)
                failures.extend(
                    Failure.of(c, "api_error", exc.message, status=exc.status, attempts=exc.attempts) for c in part
                )
                continue
            self.accepted += 1
            usage = usage + answer.usage
            answered.append((part, answer))
        return answered, usage, failures

    def _split(self, part: tuple[Chunk, ...]) -> list[tuple[Chunk, ...]]:
        """The two parts to send instead of ``part``, first one first."""
        if self.accepted == 0:
            # Nothing was ever accepted: maybe every request is refused (a wrong key or model
            # behind a proxy that answers 400). One input alone, then the rest, tells within a
            # handful of requests, where bisecting would go log2(n) deep before the first verdict.
            return [part[:1], part[1:]]
        mid = len(part) // 2  # bisect: the bad input ends up alone
        return [part[:mid], part[mid:]]

    def _rejected_alone(self, exc: InputRejected) -> None:
        self.lone_rejections += 1
        if self.accepted == 0 and self.lone_rejections >= SYSTEMATIC_REJECTIONS:
            # nothing was ever accepted: the request, not the inputs, is wrong
            raise FatalApiError(
                f"embedding API rejects every input ({exc.status}) and never accepted one: {exc.message}; "
                "the key or embedding.model may be wrong (or input_type, embedding_type, encoding_format)",
                status=exc.status,
            ) from exc
