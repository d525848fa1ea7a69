"""Client-side pacing: smooth, within budget, learning the token ratio."""

from __future__ import annotations

import pytest

from pipeline.embed.limits import RateLimiter


class VirtualTime:
    """A clock and a sleep that only move when slept on."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.anyio
async def test_requests_are_paced_not_burst() -> None:
    """600 rpm lets about 10 requests a second through, never a minute's worth at once."""
    t = VirtualTime()
    limiter = RateLimiter(600, None, clock=t.clock, sleep=t.sleep)
    times = []
    for _ in range(1200):
        await limiter.acquire(10)
        times.append(t.now)
    assert sum(1 for x in times if x < 0.95) == 10  # the pace from the first request: no burst
    assert times[-1] == pytest.approx(119.9)  # 1200 requests take two minutes


@pytest.mark.anyio
async def test_token_budget_follows_reported_usage() -> None:
    """When the server counts twice the estimate, the pace halves to keep within the token budget."""
    t = VirtualTime()
    limiter = RateLimiter(None, 60_000, clock=t.clock, sleep=t.sleep)
    for _ in range(200):
        reserved = await limiter.acquire(1000)
        limiter.record(1000, reserved, 2000)
    # 200 requests × 2000 real tokens at 1000 tokens/s: about 400 s
    assert 390 <= t.now <= 410
    assert limiter.ratio == pytest.approx(2.0, rel=0.01)


@pytest.mark.anyio
async def test_backoff_pauses_everyone() -> None:
    """A 429 pauses all later requests for the delay the server gave."""
    t = VirtualTime()
    limiter = RateLimiter(None, None, clock=t.clock, sleep=t.sleep)
    limiter.backoff(5.0)
    await limiter.acquire(1)
    assert t.now == pytest.approx(5.0)
    assert limiter.throttled == 1
