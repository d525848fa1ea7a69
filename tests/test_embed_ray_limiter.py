"""The job-wide rate budget of a Ray job: the actor's arithmetic and the task's side, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="run.executor: ray needs the ray extra: pip install '.[ray]'")

from pipeline.embed.ray_limiter import LimiterActor, RayLimiter, shared_limiter  # noqa: E402

pytestmark = pytest.mark.anyio


async def test_actor_answers_with_the_wait_instead_of_waiting() -> None:
    """At 60 requests a minute the actor spaces reservations one second apart and returns the wait."""
    actor = LimiterActor(60, None)
    waits = [(await actor.reserve(10))[1] for _ in range(3)]
    assert waits[0] == 0
    assert waits[1] == pytest.approx(1.0, abs=0.05)
    assert waits[2] == pytest.approx(2.0, abs=0.05)


async def test_a_429_pauses_every_reservation() -> None:
    """After a backoff of 5 s the next reservation, from any task, waits about that long."""
    actor = LimiterActor(None, None)
    await actor.backoff(5.0)
    _, wait = await actor.reserve(10)
    assert wait == pytest.approx(5.0, abs=0.05)


class _Method:
    def __init__(self, owner: "_FakeActor", name: str) -> None:
        self.owner, self.name = owner, name

    def remote(self, *args: Any) -> Any:
        if self.owner.dead:
            raise ray.exceptions.RayActorError()
        self.owner.calls.append(self.name)
        return self.owner.coro(getattr(self.owner.real, self.name)(*args))


class _FakeActor:
    """A LimiterActor called like a Ray actor handle (``.method.remote(...)`` is awaitable)."""

    def __init__(self, real: LimiterActor) -> None:
        self.real, self.dead, self.calls = real, False, []

    def __getattr__(self, name: str) -> _Method:
        return _Method(self, name)

    @staticmethod
    async def coro(awaitable: Any) -> Any:
        return await awaitable


async def test_task_sleeps_the_wait_the_actor_gives() -> None:
    """The task's limiter sleeps, locally, as long as the actor says."""
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    limiter = RayLimiter(_FakeActor(LimiterActor(60, None)), lambda: pytest.fail("no fallback"), sleep=sleep)
    for _ in range(2):
        await limiter.reserve(10)
    assert len(slept) == 1 and slept[0] == pytest.approx(1.0, abs=0.05)


async def test_lost_actor_falls_back_to_the_tasks_share() -> None:
    """With the actor gone, a task paces itself at 1/world_size of the budget instead of failing."""
    fake = _FakeActor(LimiterActor(600, None))
    limiter = shared_limiter(fake, 600, 60_000, world_size=4)
    reservation = await limiter.reserve(10)
    await limiter.settle(reservation, 12)
    fake.dead = True
    await limiter.reserve(10)
    fallback = limiter._fallback
    assert fallback is not None
    # a share of the budget, paced 1% under it like every budget
    assert fallback._requests.rate == pytest.approx(150 / 60 * 0.99)  # type: ignore[attr-defined]
    assert fallback._tokens.rate == pytest.approx(15_000 / 60 * 0.99)  # type: ignore[attr-defined]
    await limiter.backoff(0.0)
    assert fake.calls == ["reserve", "settle"]  # nothing more asked of the lost actor
