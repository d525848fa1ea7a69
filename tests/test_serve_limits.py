"""The rate limits of `pipeline serve`: windows, 429s, and the ``x-ratelimit-*`` headers."""

from __future__ import annotations

import math
import re

import pytest

from pipeline.embed.retry import parse_reset
from pipeline.serve.limits import FixedWindow, SlidingWindow, format_reset
from conftest import FakeClock
from serve_helpers import assert_openai_error, post, serving

pytestmark = pytest.mark.anyio


async def test_rate_limit_429_with_headers() -> None:
    """Past --rpm the server answers 429 with x-ratelimit headers; successes carry them too; --no-retry-after."""
    reset = re.compile(r"^(\d+ms|(\d+h)?(\d+m)?\d+(\.\d{1,3})?s)$")
    async with serving(rpm=2, tpm=1000, retry_after=False) as (_, client):
        first, second, third = [await post(client, input="hello") for _ in range(3)]
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - 4)
    assert_openai_error(third, 429)
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-ratelimit-limit-tokens"] == "1000"
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        assert reset.match(third.headers[name])
    assert parse_reset(third.headers["x-ratelimit-reset-requests"]) > 50
    assert "retry-after" not in third.headers


async def test_rate_limit_retry_after_on_request() -> None:
    """With --retry-after, rate-limit 429s carry Retry-After in whole seconds."""
    async with serving(tpm=5, limit_window_s=30, retry_after=True) as (_, client):
        assert (await post(client, input="x" * 16)).status_code == 200
        refused = await post(client, input="x" * 8)
    assert refused.status_code == 429
    assert 28 <= int(refused.headers["retry-after"]) <= 30


async def test_rate_limit_429_carries_retry_after_by_default() -> None:
    """Without any flag, a rate-limit 429 carries Retry-After: whole seconds until the request fits."""
    async with serving(rpm=1, limit_window_s=30) as (_, client):
        assert (await post(client, input="hello")).status_code == 200
        refused = await post(client, input="hello")
    assert_openai_error(refused, 429)
    assert 28 <= int(refused.headers["retry-after"]) <= 30


def test_rate_window_refusals_do_not_consume_budget() -> None:
    """A refused request does not count; budgets come back as accepted requests leave the window."""
    window = SlidingWindow(rpm=2, tpm=None, window_s=1.0)
    assert window.admit(1, now=0.0).allowed
    assert window.admit(1, now=0.4).allowed
    refused = window.admit(1, now=0.5)
    assert not refused.allowed and refused.wait_s == pytest.approx(0.5)
    assert dict(refused.headers)[b"x-ratelimit-reset-requests"] == b"500ms"
    assert window.admit(1, now=1.0).allowed  # the first left; the refused one never counted
    assert not window.admit(1, now=1.1).allowed


def test_rate_window_tokens() -> None:
    """The token budget admits a request only if its tokens fit, and says when they will."""
    window = SlidingWindow(rpm=None, tpm=100, window_s=60.0)
    assert window.admit(60, now=0.0).allowed
    assert window.admit(30, now=10.0).allowed
    refused = window.admit(50, now=20.0)
    assert not refused.allowed and refused.wait_s == pytest.approx(40.0)
    assert dict(refused.headers)[b"x-ratelimit-remaining-tokens"] == b"10"
    assert window.admit(10, now=20.0).allowed
    assert window.admit(50, now=60.0).allowed


def test_fixed_window_counts_afresh_at_each_boundary() -> None:
    """A fixed window forgets every request at its boundary, where a sliding one would still count them."""
    window = FixedWindow(rpm=2, tpm=None, window_s=10.0)
    assert window.admit(1, now=100.0).allowed
    assert window.admit(1, now=109.0).allowed
    refused = window.admit(1, now=109.5)
    assert not refused.allowed and refused.wait_s == pytest.approx(0.5)
    assert dict(refused.headers)[b"x-ratelimit-reset-requests"] == b"500ms"
    assert window.admit(1, now=110.0).allowed
    assert window.admit(1, now=110.0).allowed
    assert not window.admit(1, now=119.9).allowed


def test_fixed_window_tokens() -> None:
    """The fixed window's token budget refuses what does not fit until the next boundary, then admits it."""
    window = FixedWindow(rpm=None, tpm=100, window_s=60.0)
    assert window.admit(60, now=0.0).allowed
    assert window.admit(30, now=10.0).allowed
    refused = window.admit(50, now=20.0)
    assert not refused.allowed and refused.wait_s == pytest.approx(40.0)
    assert dict(refused.headers)[b"x-ratelimit-remaining-tokens"] == b"10"
    assert window.admit(10, now=20.0).allowed
    assert dict(window.peek(now=30.0))[b"x-ratelimit-remaining-tokens"] == b"0"
    assert window.admit(100, now=60.0).allowed


@pytest.mark.parametrize("mode,after_boundary", [("sliding", [200, 429]), ("fixed", [200, 200])])
async def test_limit_modes_on_a_real_server(clock: FakeClock, mode: str, after_boundary: list[int]) -> None:
    """--limit-mode sliding counts the last window's requests; fixed starts afresh at each boundary."""
    async with serving(clock=clock, rpm=2, limit_window_s=10, limit_mode=mode) as (_, client):
        before = [(await post(client, input="a")).status_code]  # t = 1000, a boundary
        clock.advance(9)
        before += [(await post(client, input="b")).status_code for _ in range(2)]
        clock.advance(1)  # the first request leaves a sliding window; a fixed one starts again
        after = [(await post(client, input="c")).status_code for _ in range(2)]
    assert before == [200, 200, 429]
    assert after == after_boundary


@pytest.mark.parametrize(
    "seconds,text",
    [(51, "51s"), (0.5, "500ms"), (0, "0s"), (0.0001, "1ms"), (1.25, "1.25s"), (1, "1s"), (0.25, "250ms"),
     (60, "1m0s"), (90, "1m30s"), (90.5, "1m30.5s"), (3600, "1h0m0s"), (3725.125, "1h2m5.125s")],
)
def test_format_reset(seconds: float, text: str) -> None:
    """Reset durations are written as OpenAI writes them (``250ms``, ``1.25s``, ``1m30s``), rounded up to the ms."""
    assert format_reset(seconds) == text


@pytest.mark.parametrize("seconds", [0, 0.0004, 0.25, 0.999, 1, 1.5, 59.999, 60, 61.001, 3599.5, 3600, 7322.25])
def test_client_reads_every_reset_the_server_writes(seconds: float) -> None:
    """The HTTP client's parser reads each reset duration back to the server's millisecond."""
    assert parse_reset(format_reset(seconds)) == pytest.approx(math.ceil(seconds * 1000 - 1e-6) / 1000)


async def test_ratelimit_headers_on_every_answer() -> None:
    """With limits set, every answer carries the six x-ratelimit-* headers; only admitted requests count."""
    names = [f"x-ratelimit-{kind}-{axis}" for axis in ("requests", "tokens") for kind in ("limit", "remaining", "reset")]
    async with serving(rpm=5, tpm=1000, models=("m",)) as (_, client):
        answers = {
            "200": await post(client, input="hello"),
            "400": await post(client, input=""),
            "404 model": await client.post("/v1/embeddings", json={"model": "nope", "input": "hi"}),
            "404 route": await client.get("/v1/nothing"),
            "models": await client.get("/v1/models"),
            "health": await client.get("/health"),
        }
    for what, answer in answers.items():
        assert [name for name in names if name not in answer.headers] == [], what
    assert [answers[what].headers["x-ratelimit-remaining-requests"] for what in answers] == ["4"] * len(answers)
    assert [answers[what].headers["x-ratelimit-remaining-tokens"] for what in answers] == ["998"] * len(answers)
    assert answers["400"].headers["x-ratelimit-reset-requests"] == "0s"


async def test_no_ratelimit_headers_leaves_only_429s() -> None:
    """With --no-ratelimit-headers no answer carries x-ratelimit-*; a 429 still says Retry-After."""
    async with serving(rpm=1, ratelimit_headers=False) as (_, client):
        answers = [await post(client, input="hello") for _ in range(2)] + [await client.get("/health")]
    assert [answer.status_code for answer in answers] == [200, 429, 200]
    assert [name for answer in answers for name in answer.headers if name.startswith("x-ratelimit-")] == []
    assert "retry-after" in answers[1].headers
