"""pipeline.embed.limits: client-side pacing (smooth, within budget, learning the token ratio) and the token budget."""

from __future__ import annotations

import pytest

from pipeline.embed.learned import RateModel
from pipeline.embed.limits import Budget, Limiter, RateLimiter
from pipeline.errors import BudgetExhausted


@pytest.mark.anyio
async def test_requests_are_paced_not_burst(clock) -> None:
    """600 rpm lets about 10 requests a second through, never a minute's worth at once."""
    start = clock()
    limiter = RateLimiter(600, None, clock=clock, sleep=clock.asleep)
    times = []
    for _ in range(1200):
        await limiter.reserve(10)
        times.append(clock() - start)
    assert sum(1 for x in times if x < 0.95) == 10  # the pace from the first request: no burst
    # 1200 requests take two minutes, paced 1% under the budget (slack against a sliding window's jitter)
    assert times[-1] == pytest.approx(1199 * 60 / (600 * RateModel.MARGIN))


@pytest.mark.anyio
async def test_token_budget_follows_reported_usage(clock) -> None:
    """When the server counts twice the estimate, the pace halves to keep within the token budget."""
    start = clock()
    limiter = RateLimiter(None, 60_000, clock=clock, sleep=clock.asleep)
    for _ in range(200):
        reservation = await limiter.reserve(1000)
        await limiter.settle(reservation, 2000)
    # 200 requests × 2000 real tokens at 1000 tokens/s: about 400 s
    assert 390 <= clock() - start <= 410
    assert limiter.ratio == pytest.approx(2.0, rel=0.01)


@pytest.mark.anyio
async def test_backoff_pauses_everyone(clock) -> None:
    """A 429 pauses all later requests for the delay the server gave, and lowers the pace."""
    start = clock()
    limiter = RateLimiter(None, None, clock=clock, sleep=clock.asleep)
    await limiter.backoff(5.0)
    await limiter.reserve(1)
    assert clock() - start == pytest.approx(5.0)
    assert limiter.scale < 1.0


@pytest.mark.anyio
async def test_failed_request_teaches_nothing(clock) -> None:
    """Settling a failed request (no usage) leaves the learned ratio and the pace alone."""
    limiter = RateLimiter(None, 60_000, clock=clock, sleep=clock.asleep)
    await limiter.backoff(0.0)
    scale = limiter.scale
    await limiter.settle(await limiter.reserve(1000), None)
    assert limiter.ratio == 1.0 and limiter.scale == scale


def test_rate_limiter_is_a_limiter(clock) -> None:
    """RateLimiter implements the Limiter protocol the retry policy is written against."""
    limiter: Limiter = RateLimiter(60, 6000, clock=clock, sleep=clock.asleep)
    assert all(callable(getattr(limiter, name)) for name in ("reserve", "settle", "backoff"))


def test_budget_refuses_what_could_overspend() -> None:
    """A reservation that does not fit what is left raises BudgetExhausted; settling frees it."""
    budget = Budget(1000)
    held = budget.reserve(500)  # 550 with the margin
    with pytest.raises(BudgetExhausted):
        budget.reserve(500)
    budget.settle(held, 500, 400)
    assert budget.spent == 400 and budget.reserved == 0


def test_budget_learns_the_ratio() -> None:
    """When usage reports more than estimated, later reservations grow with it."""
    budget = Budget(10**6)
    for _ in range(20):
        budget.settle(budget.reserve(100), 100, 300)
    assert budget.reserve(100) > 300


def test_describe_budget_names_the_budget_and_its_time() -> None:
    """validate's lines: configured and shared (store without its password), and the time the binding axis takes."""
    from pipeline.config import EmbeddingConfig
    from pipeline.embed.limits import describe_budget

    cfg = EmbeddingConfig(url="http://x", requests_per_minute=500, tokens_per_minute=800_000,
                          rate_limit_store="rediss://:s3cret@kv.example:6379")
    lines = describe_budget(cfg, requests=2000, tokens=5_000_000, world_size=4)
    text = "\n".join(lines)
    assert "500 requests/min (configured)" in text and "shared" in text and "1/4" in text
    assert "s3cret" not in text and "6m15s (tokens bind)" in text
    learned = "\n".join(describe_budget(EmbeddingConfig(url="http://x"), requests=10, tokens=10))
    assert "learned" in learned and "unknown until the server tells" in learned
    alone = "\n".join(describe_budget(EmbeddingConfig(url="http://x", requests_per_minute=60), requests=120,
                                      world_size=3))
    assert "not shared" in alone and "2m00s (requests bind)" in alone


@pytest.mark.anyio
async def test_a_429_while_waiting_holds_the_waiting_request(clock) -> None:
    """A request already waiting for its turn when a 429 comes is held for the pause too, not sent into it."""
    refused: list[float] = []

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        if not refused:  # another request is answered 429 while this one waits
            refused.append(clock())
            await limiter.backoff(5.0)

    limiter = RateLimiter(60, None, clock=clock, sleep=sleep)
    start = clock()
    await limiter.reserve(1)
    await limiter.reserve(1)  # its turn is a second later; the 429 comes during that second
    assert refused and clock() >= refused[0] + 5.0 > start + 5.0


@pytest.mark.anyio
async def test_requests_held_by_a_pause_leave_it_at_the_pace(clock) -> None:
    """Requests queued when a 429 comes leave the pause one per turn, not all at once when it ends."""
    import anyio

    sleepers: list[tuple[float, anyio.Event]] = []

    async def sleep(seconds: float) -> None:  # virtual time: woken by the driver below, earliest first
        event = anyio.Event()
        sleepers.append((clock() + seconds, event))
        await event.wait()

    limiter = RateLimiter(60, None, clock=clock, sleep=sleep)
    sent: list[float] = []

    async def request() -> None:
        await limiter.reserve(1)
        sent.append(clock())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(request)
            await anyio.wait_all_tasks_blocked()
            await limiter.backoff(10.0)  # the first one went; a 429 now holds the three queued behind it
            while True:
                await anyio.wait_all_tasks_blocked()
                if len(sent) == 4:
                    break
                sleepers.sort(key=lambda s: s[0])
                wake, event = sleepers.pop(0)
                clock.now = max(clock.now, wake)
                event.set()
    gaps = [b - a for a, b in zip(sent[1:], sent[2:])]
    assert sent[1] >= sent[0] + 10 and all(g >= 60 / (60 * RateModel.MARGIN) - 1e-9 for g in gaps)
