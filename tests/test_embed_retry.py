"""pipeline.embed.retry: classification of answers, the attempts loop and the bisection of rejected batches."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from pipeline.embed.limits import RateLimiter, Reservation
from pipeline.embed.retry import Bisector, ConnectFailed, Retrying, classify, parse_reset
from pipeline.errors import (
    ApiError,
    EndpointUnreachable,
    FatalApiError,
    InputRejected,
    RetryableApiError,
)
from pipeline.types import Chunk, Usage


def chunks(n: int, prefix: str = "text") -> tuple[Chunk, ...]:
    return tuple(
        Chunk(id=f"d{i}", doc_id=f"d{i}", chunk_index=0, text=f"{prefix} {i}", source="f.jsonl",
              location=i + 1, content_hash=str(i))
        for i in range(n)
    )


@dataclass(frozen=True)
class Reply:
    """A stand-in answer: one row per input, one token each."""

    vectors: np.ndarray
    prompt_tokens: int
    usage: Usage = Usage(requests=1, prompt_tokens=1, total_tokens=1)


class RecordingLimiter:
    """A Limiter that lets everything through and remembers what it was told."""

    def __init__(self) -> None:
        self.reserved: list[int] = []
        self.settled: list[int | None] = []
        self.backoffs: list[float] = []

    async def reserve(self, estimate: int) -> Reservation:
        self.reserved.append(estimate)
        return Reservation(estimate, estimate)

    async def settle(self, reservation: Reservation, reported: int | None) -> None:
        self.settled.append(reported)

    async def backoff(self, delay: float | None) -> None:
        self.backoffs.append(delay)

    async def observe(self, server) -> None:
        pass


def failing(*errors: ApiError):
    """A request that raises ``errors`` in turn, then answers."""
    queue = list(errors)

    async def request() -> Reply:
        if queue:
            raise queue.pop(0)
        return Reply(np.zeros((1, 4), np.float32), 7)

    return request


def retrying(limiter: RecordingLimiter, clock, attempts: int = 4, **kw) -> Retrying:
    return Retrying(attempts, limiter=limiter, where="http://host/v1/embeddings", sleep=clock.asleep,
                    rng=random.Random(0), **kw)


def test_parse_reset_formats() -> None:
    """Retry-After and x-ratelimit-reset values parse in seconds and durations."""
    assert parse_reset("2") == 2.0
    assert parse_reset("51s") == 51.0
    assert parse_reset("1m30s") == 90.0
    assert parse_reset("250ms") == 0.25
    assert parse_reset("soon") is None


@pytest.mark.parametrize(
    "status,kind",
    [(400, InputRejected), (413, InputRejected), (422, InputRejected), (401, FatalApiError),
     (403, FatalApiError), (404, FatalApiError), (418, FatalApiError), (408, RetryableApiError),
     (409, RetryableApiError), (425, RetryableApiError), (429, RetryableApiError), (500, RetryableApiError),
     (503, RetryableApiError)],
)
def test_statuses_are_classified(status: int, kind: type) -> None:
    """Each status maps to one class: rejected input, fatal, or worth retrying."""
    response = httpx.Response(status, json={"error": {"message": "nope"}})
    error = classify(response, "m")
    assert type(error) is kind and error.status == status and "nope" in error.message


def test_429_carries_the_longest_reset() -> None:
    """A 429's delay is the longest of Retry-After and the x-ratelimit-reset-* headers."""
    headers = {"retry-after": "1", "x-ratelimit-reset-requests": "250ms", "x-ratelimit-reset-tokens": "6s"}
    error = classify(httpx.Response(429, headers=headers, text="slow down"), "m")
    assert error.retry_after == 6.0 and error.message == "HTTP 429: slow down"


@pytest.mark.anyio
async def test_retries_until_success_honouring_retry_after(clock) -> None:
    """Retryable failures are tried again after the server's delay; the attempts are counted."""
    limiter = RecordingLimiter()
    seen: list[int] = []
    policy = retrying(limiter, clock, on_retry=lambda exc, attempt: seen.append(attempt))
    start = clock()
    request = failing(RetryableApiError("busy", status=503, retry_after=2.0), RetryableApiError("busy", status=503))
    answer, attempts = await policy.send(request, 10)
    assert attempts == 3 and seen == [1, 2] and answer.prompt_tokens == 7
    assert limiter.reserved == [10, 10, 10] and limiter.settled == [None, None, 7]
    assert 2.0 + 0.5 <= clock() - start <= 2.1 + 1.0  # Retry-After, then backoff within [0.5, 1] s


@pytest.mark.anyio
async def test_429_makes_the_limiter_back_off(clock) -> None:
    """A 429 tells the limiter to hold everyone for the server's delay (None when it gave none: the limiter probes)."""
    limiter = RecordingLimiter()
    request = failing(RetryableApiError("slow", status=429, retry_after=3.0), RetryableApiError("slow", status=429))
    await retrying(limiter, clock).send(request, 1)
    assert limiter.backoffs == [3.0, None]


@pytest.mark.anyio
async def test_429s_do_not_use_up_the_attempts(clock) -> None:
    """Twenty 429s in a row, then an answer: max_attempts counts real failures only, and the row is kept."""
    limiter = RecordingLimiter()
    errors = [RetryableApiError("slow", status=429, retry_after=5.0) for _ in range(20)]
    answer, attempts = await retrying(limiter, clock, attempts=2).send(failing(*errors), 1)
    assert attempts == 21 and answer.prompt_tokens == 7 and len(limiter.backoffs) == 20


@pytest.mark.anyio
async def test_real_failures_still_count_between_429s(clock) -> None:
    """5xx failures interleaved with 429s still stop at max_attempts failures."""
    busy = [RetryableApiError("busy", status=503), RetryableApiError("slow", status=429)] * 3
    with pytest.raises(RetryableApiError) as info:
        await retrying(RecordingLimiter(), clock, attempts=3).send(failing(*busy), 1)
    assert info.value.status == 503 and info.value.attempts == 5


@pytest.mark.anyio
async def test_429s_give_up_after_max_wait(clock) -> None:
    """429s are retried for max_wait_s seconds, then the request fails as rate-limited."""
    limiter = RateLimiter(None, None, clock=clock, sleep=clock.asleep)
    errors = [RetryableApiError("slow", status=429, retry_after=10.0) for _ in range(100)]
    policy = Retrying(2, limiter=limiter, where="http://host", max_wait_s=60, clock=clock, sleep=clock.asleep,
                      rng=random.Random(0))
    start = clock()
    with pytest.raises(RetryableApiError) as info:
        await policy.send(failing(*errors), 1)
    assert info.value.status == 429 and 60 <= clock() - start <= 75 and info.value.attempts == 7


@pytest.mark.anyio
@pytest.mark.parametrize("error", [FatalApiError("bad key", status=401), InputRejected("bad input", status=400)])
async def test_fatal_and_rejected_are_not_retried(clock, error: ApiError) -> None:
    """A fatal answer or a rejected input is raised at once, with one attempt counted."""
    limiter = RecordingLimiter()
    with pytest.raises(type(error)) as info:
        await retrying(limiter, clock).send(failing(error), 1)
    assert info.value.attempts == 1 and len(limiter.reserved) == 1


@pytest.mark.anyio
async def test_attempts_exhausted_raise_the_last_error(clock) -> None:
    """After max_attempts retryable failures the last one is raised with its attempts."""
    errors = [RetryableApiError(f"busy {i}", status=503) for i in range(3)]
    with pytest.raises(RetryableApiError, match="busy 2") as info:
        await retrying(RecordingLimiter(), clock, attempts=3).send(failing(*errors), 1)
    assert info.value.attempts == 3 and not isinstance(info.value, FatalApiError)


@pytest.mark.anyio
async def test_no_connection_on_any_attempt_is_unreachable(clock) -> None:
    """A connection that fails on every attempt becomes EndpointUnreachable naming the endpoint."""
    errors = [ConnectFailed("connection failed: refused") for _ in range(3)]
    with pytest.raises(EndpointUnreachable, match="unreachable at http://host/v1/embeddings after 3 attempts"):
        await retrying(RecordingLimiter(), clock, attempts=3).send(failing(*errors), 1)


@pytest.mark.anyio
async def test_an_endpoint_that_answered_once_is_not_unreachable(clock) -> None:
    """When one attempt reached the server, failing to connect afterwards stays a retryable failure."""
    errors = [RetryableApiError("busy", status=503), ConnectFailed("refused"), ConnectFailed("refused")]
    with pytest.raises(ConnectFailed):
        await retrying(RecordingLimiter(), clock, attempts=3).send(failing(*errors), 1)


class Api:
    """A stand-in for the API behind the bisector: refuses any part holding a poisoned input."""

    def __init__(self, poison: str = "POISON", fail: str | None = None) -> None:
        self.poison = poison
        self.fail = fail
        self.calls: list[int] = []

    async def send(self, part: tuple[Chunk, ...]) -> Reply:
        self.calls.append(len(part))
        if any(self.poison in c.text for c in part):
            error: ApiError = InputRejected("bad input", status=400)
            error.attempts = 1
            raise error
        if self.fail and any(self.fail in c.text for c in part):
            error = RetryableApiError("HTTP 503: busy", status=503)
            error.attempts = 3
            raise error
        return Reply(np.arange(len(part), dtype=np.float32)[:, None], len(part))


@pytest.mark.anyio
async def test_bisection_isolates_the_rejected_input() -> None:
    """A rejected batch is split until the bad input is alone; the rest are answered in input order."""
    batch = chunks(6) + chunks(1, "POISON") + chunks(3, "more")
    api = Api()
    answered, usage, failures = await Bisector().run(batch, api.send)
    assert [c for part, _ in answered for c in part] == [c for c in batch if "POISON" not in c.text]
    assert [f.text for f in failures] == ["POISON 0"]
    assert failures[0].error_type == "rejected" and failures[0].status == 400 and failures[0].attempts == 1
    assert usage.requests == len(api.calls)  # every request, refused or answered, is counted


@pytest.mark.anyio
async def test_exhausted_retries_fail_every_input_of_the_part() -> None:
    """A part whose attempts ran out puts each of its inputs in errors/ as api_error."""
    answered, usage, failures = await Bisector().run(chunks(2, "busy"), Api(fail="busy").send)
    assert not answered and [f.error_type for f in failures] == ["api_error", "api_error"]
    assert usage == Usage(requests=3, retries=2) and all(f.attempts == 3 for f in failures)


@pytest.mark.anyio
async def test_everything_rejected_stops_the_run() -> None:
    """When the API refuses every input and never accepted one, the run stops as a config problem."""
    with pytest.raises(FatalApiError, match="rejects every input"):
        await Bisector().run(chunks(16), Api(poison="text").send)


@pytest.mark.anyio
async def test_leading_bad_inputs_under_the_threshold_are_not_systematic() -> None:
    """Two bad inputs at the very start of a run are isolated; the rest is embedded in few requests."""
    api = Api()
    batch = chunks(2, "POISON") + chunks(30)
    answered, _, failures = await Bisector().run(batch, api.send)
    assert [f.text for f in failures] == ["POISON 0", "POISON 1"]
    assert [c for part, _ in answered for c in part] == list(batch[2:])
    assert api.calls == [32, 1, 31, 1, 30]  # one input alone, then the rest, until one is accepted
