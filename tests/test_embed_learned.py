"""pipeline.embed.learned: the budget a worker paces at, from its config, the server's headers and 429s."""

from __future__ import annotations

import httpx
import pytest

from pipeline.embed.learned import RateModel, ServerLimits
from pipeline.embed.limits import RateLimiter


def test_server_limits_read_from_headers() -> None:
    """x-ratelimit-* headers (any case, OpenAI's durations) become numbers; none at all is None."""
    headers = httpx.Headers({
        "X-RateLimit-Limit-Requests": "500", "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-tokens": "800000",
        "x-ratelimit-remaining-tokens": "bogus", "x-ratelimit-reset-tokens": "1m30s",
    })
    limits = ServerLimits.from_headers(headers)
    assert limits == ServerLimits(500, 800_000, 499, None, 0.12, 90.0)
    assert ServerLimits.from_headers(httpx.Headers({"content-type": "application/json"})) is None


def test_told_limit_paces_when_none_configured() -> None:
    """With nothing configured, the server's x-ratelimit-limit-* is the pace, 1% under it."""
    model = RateModel(None, None)
    assert model.rates() == (None, None) and model.source == "none"
    model.told_by(ServerLimits(limit_requests=240, limit_tokens=100_000), now=0.0)
    assert model.rates() == (pytest.approx(237.6), pytest.approx(99_000)) and model.source == "learned"


def test_configured_budget_rules_its_axis() -> None:
    """A configured axis paces at its number whatever the headers say (their window may not be a minute);
    the other axis follows the server."""
    model = RateModel(100, None)
    model.told_by(ServerLimits(limit_requests=500, limit_tokens=30_000), now=0.0)
    assert model.rates() == (pytest.approx(99), pytest.approx(29_700))
    model.told_by(ServerLimits(limit_requests=10), now=0.0)
    assert model.rates()[0] == pytest.approx(99) and model.source == "configured"


def test_remaining_zero_holds_until_reset() -> None:
    """remaining 0 with a reset time holds every request until then; remaining left does not."""
    model = RateModel(None, None)
    model.told_by(ServerLimits(limit_requests=240, remaining_requests=3, reset_requests=0.0), now=10.0)
    assert model.hold_until < 10.0
    model.told_by(ServerLimits(limit_requests=240, remaining_requests=0, reset_requests=4.5), now=10.0)
    assert model.hold_until == 14.5
    model.told_by(ServerLimits(limit_tokens=1000, remaining_tokens=200, reset_tokens=7.0), now=10.0, next_tokens=300)
    assert model.hold_until == 17.0


def test_budget_found_from_429s_when_nothing_said() -> None:
    """A server that sends no headers: the requests it answered in the last minute before a 429 are its budget."""
    model = RateModel(None, None)
    for i in range(240):
        model.answered(10, 10, now=100.0 + i * 0.01)
    model.refused(None, now=103.0)
    assert model.found == 240 and model.rates()[0] == pytest.approx(237.6)
    model.refused(None, now=110.0)  # refused again at that pace: lower it
    assert model.found == pytest.approx(228)
    for i in range(1000):
        model.answered(10, 10, now=120.0 + i)
    assert model.found > 228  # successes raise it again, slowly


def test_silent_429s_double_the_pause_while_probes_fail() -> None:
    """A 429 without Retry-After pauses 1 s; each refused probe after the pause doubles it; a success resets it."""
    model = RateModel(10_000, None)
    assert model.refused(None, now=0.0) == 1.0
    assert model.refused(None, now=0.5) == 0.5  # in flight together: the same pause, ending at 1.0
    assert model.refused(None, now=1.0) == 2.0
    assert model.refused(None, now=3.0) == 4.0
    model.answered(1, 1, now=7.0)
    assert model.refused(None, now=8.0) == 1.0


def test_429s_under_a_known_budget_lower_the_pace_not_below_half() -> None:
    """With a budget known, each 429 (once a second) lowers the pace by 3%, never below half of it."""
    model = RateModel(600, None)
    for second in range(100):
        model.refused(0.0, now=float(second))
    assert model.scale == RateModel.FLOOR and model.found is None


@pytest.mark.anyio
async def test_rate_limiter_follows_headers_from_the_first_answer(clock) -> None:
    """Nothing configured: after one answer saying 120 a minute, requests go out every half second (1% slower)."""
    limiter = RateLimiter(None, None, clock=clock, sleep=clock.asleep)
    await limiter.observe(ServerLimits(limit_requests=120, remaining_requests=119))
    start = clock()
    for _ in range(121):
        await limiter.reserve(1)
    assert clock() - start == pytest.approx(60.0 / RateModel.MARGIN)


@pytest.mark.anyio
async def test_rate_limiter_share_divides_the_budget(clock) -> None:
    """A worker pacing alone at 1/3 of 600 a minute sends 200 a minute (1% under)."""
    limiter = RateLimiter(600, None, share=1 / 3, clock=clock, sleep=clock.asleep)
    start = clock()
    for _ in range(201):
        await limiter.reserve(1)
    assert clock() - start == pytest.approx(60.0 / RateModel.MARGIN)


def test_a_429_with_retry_after_is_waited_for_not_measured() -> None:
    """A server that says when to come back is waited for; no budget is guessed from random 429s."""
    model = RateModel(None, None)
    for i in range(5):
        model.answered(10, 10, now=float(i))
    assert model.refused(0.01, now=5.0) == 0.01
    assert model.found is None and model.rates() == (None, None)
