"""One rate budget for every task of a Ray job: a named actor behind the :class:`Limiter` seam.

:class:`LimiterActor` holds the job's one :class:`~pipeline.embed.limits.RateLimiter`
(``requests_per_minute`` / ``tokens_per_minute`` for the whole job, not per
task); each task's :class:`RayLimiter` implements the
:class:`~pipeline.embed.limits.Limiter` seam by calling it. The actor only
computes: a reservation comes back with how long to wait, and the task
sleeps, so a thousand waiting requests are a thousand timers spread over the
tasks rather than a thousand coroutines parked in one actor. A 429 seen by
one task pauses them all, as it pauses every request of one process.

If the actor is lost (its node died), a task goes on pacing locally at its
share of the budget (``1 / world_size``) rather than stopping or running
unpaced.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

import anyio
import ray

from pipeline.embed.learned import ServerLimits
from pipeline.embed.limits import Limiter, RateLimiter, Reservation
from pipeline.logs import get_logger


class LimiterActor:
    """The job's :class:`RateLimiter`, to run as a Ray actor (``ray.remote(LimiterActor)``).

    Its methods are async, so Ray runs it as an async actor; none of them
    suspends, so each call is atomic with respect to the others.
    """

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self._wait = 0.0  # what the reservation being made would have slept, in all
        self._limiter = RateLimiter(requests_per_minute, tokens_per_minute, sleep=self._note_wait,
                                    clock=lambda: time.monotonic() + self._wait)

    async def _note_wait(self, delay: float) -> None:
        # the limiter's "sleep": add the wait up for the caller instead of waiting here; the
        # limiter's clock moves with it, so a reservation that waits out a pause ends
        self._wait += delay

    async def reserve(self, estimate: int) -> tuple[Reservation, float]:
        """Hold the share of a request of ``estimate`` tokens; (the reservation, seconds to wait)."""
        self._wait = 0.0
        reservation = await self._limiter.reserve(estimate)
        wait, self._wait = self._wait, 0.0
        return reservation, wait

    async def settle(self, reservation: Reservation, reported: int | None) -> None:
        """The request ended: ``reported`` tokens per ``usage`` (None: it failed)."""
        await self._limiter.settle(reservation, reported)

    async def backoff(self, delay: float | None) -> None:
        """A task was answered 429: every task holds its requests for ``delay`` seconds (None: the limiter's choice)."""
        await self._limiter.backoff(delay)

    async def observe(self, server: ServerLimits) -> None:
        """A task's answer told the server's budget (``x-ratelimit-*``): every task follows it."""
        await self._limiter.observe(server)


class RayLimiter:
    """The :class:`Limiter` of one task: asks the job's :class:`LimiterActor`, falls back to ``fallback``."""

    def __init__(
        self,
        actor: Any,
        fallback: Callable[[], Limiter],
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._actor = actor
        self._fallback_factory = fallback
        self._fallback: Limiter | None = None
        self._sleep = sleep

    async def reserve(self, estimate: int) -> Reservation:
        """Wait until the job's budget lets a request of about ``estimate`` tokens go."""
        if self._fallback is None:
            try:
                reservation, wait = await self._actor.reserve.remote(estimate)
            except ray.exceptions.RayError as exc:
                self._lose(exc)
            else:
                if wait > 0:
                    await self._sleep(wait)
                return reservation
        assert self._fallback is not None
        return await self._fallback.reserve(estimate)

    async def settle(self, reservation: Reservation, reported: int | None) -> None:
        """Tell the job's budget what the request cost."""
        await self._call("settle", reservation, reported)

    async def backoff(self, delay: float | None) -> None:
        """The server said 429: every task of the job holds for ``delay`` seconds."""
        await self._call("backoff", delay)

    async def observe(self, server: ServerLimits) -> None:
        """An answer told the server's budget: the job's limiter follows it."""
        await self._call("observe", server)

    async def _call(self, name: str, *args: Any) -> None:
        if self._fallback is None:
            try:
                await getattr(self._actor, name).remote(*args)
                return
            except ray.exceptions.RayError as exc:
                self._lose(exc)
        assert self._fallback is not None
        await getattr(self._fallback, name)(*args)

    def _lose(self, exc: BaseException) -> None:
        get_logger().warning("rate_limiter_lost", error=type(exc).__name__,
                             hint="pacing this task alone at its share of the budget")
        self._fallback = self._fallback_factory()


def shared_limiter(actor: Any, requests_per_minute: float | None, tokens_per_minute: float | None,
                   world_size: int) -> RayLimiter:
    """The :class:`RayLimiter` of one task of ``world_size``, on ``actor``'s budget."""

    def share(limit: float | None) -> float | None:
        return limit / world_size if limit else None

    return RayLimiter(actor, lambda: RateLimiter(share(requests_per_minute), share(tokens_per_minute)))
