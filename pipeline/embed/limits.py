"""Client-side pacing of requests and tokens per minute, and the token budget of a run.

:class:`Limiter` is the seam: a request reserves its share before it is
sent, settles with what ``usage`` said once it ended, and a 429 makes the
limiter back off. :class:`RateLimiter` (one process) is the first
implementation; a store shared by several workers implements the same three
calls. The methods are async because a shared store answers over the network.

:class:`RateLimiter` paces reservations evenly (a generic cell-rate
scheduler) instead of bursting a whole minute's budget at start, so a server
that enforces its limit per second still rarely says 429. Tokens are not
known before a call: the caller passes an estimate and later reports what
``usage`` said, and the limiter learns the ratio between the two so that the
budget is used fully whatever the language. When the server says 429 anyway,
:meth:`RateLimiter.backoff` pauses every request, not just the one that was
refused. (``aiolimiter`` is not used here: its leaky bucket bursts a whole
period's budget at start and has no way to correct a reservation, adapt the
pace or pause everyone after a 429.)

:class:`Budget` is ``run.max_tokens``: it refuses a request that could take
spending past the limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

import anyio

from pipeline.errors import BudgetExhausted

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one request reserved: its raw token estimate and the tokens held for it."""

    estimate: int
    tokens: int


class Limiter(Protocol):
    """Paces requests against a rate budget (requests and tokens per minute)."""

    async def reserve(self, estimate: int) -> Reservation:
        """Wait until a request of about ``estimate`` tokens may be sent, and hold its share."""
        ...

    async def settle(self, reservation: Reservation, reported: int | None) -> None:
        """The request ended: ``reported`` tokens per ``usage`` (None: it failed)."""
        ...

    async def backoff(self, delay: float) -> None:
        """The server said 429: slow down, and hold every request for ``delay`` seconds."""
        ...


class _Pacer:
    """Spaces out reservations of ``amount`` so that ``rate`` per second holds.

    A generic cell-rate scheduler: ``tat`` is the time at which everything
    reserved so far has been paid for at ``rate``. A reservation may go up to
    ``burst_s`` seconds ahead of that. The default is no burst at all: each
    request waits for the budget it uses, so a server that counts its budget
    over a sliding second sees the same pace as one that counts per minute.
    """

    def __init__(self, per_minute: float, burst_s: float = 0.0) -> None:
        self.rate = per_minute / 60.0
        self.burst_s = burst_s
        self.tat = -math.inf

    def reserve(self, amount: float, now: float) -> float:
        """Reserve ``amount`` and return how long to wait before using it."""
        start = max(self.tat, now)
        self.tat = start + amount / self.rate
        return max(0.0, start - self.burst_s - now)

    def adjust(self, amount: float) -> None:
        """Correct an earlier reservation by ``amount`` (positive: it cost more)."""
        self.tat += amount / self.rate


class RateLimiter:
    """Paces requests under ``requests_per_minute`` and ``tokens_per_minute``.

    Either limit may be ``None`` (no client-side limit on that axis). The
    pace adapts to the server: each 429 lowers it by a few percent (at most
    once a second, however many requests were refused together) and pauses
    every request until the server's reset time; each success raises it
    again slowly, back up to the configured budget. The effect is a pace
    that settles just under what the server really allows, which is the
    configured budget less whatever the server's windowing and network
    jitter cost.
    """

    DECREASE = 0.97  # the pace after a 429, as a share of the pace before
    INCREASE = 0.0003  # added back to the share after each success
    FLOOR = 0.5  # never slower than half the configured budget

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self._requests = _Pacer(requests_per_minute) if requests_per_minute else None
        self._tokens = _Pacer(tokens_per_minute) if tokens_per_minute else None
        self._base = {id(p): p.rate for p in self._pacers}
        self._clock = clock
        self._sleep = sleep
        self._pause_until = -math.inf
        self._last_decrease = -math.inf
        self.scale = 1.0  # share of the configured budget we pace at
        self.ratio = 1.0  # reported tokens ÷ estimated tokens, learned

    @property
    def _pacers(self) -> list[_Pacer]:
        return [p for p in (self._requests, self._tokens) if p is not None]

    def tokens_for(self, estimate: int) -> int:
        """Estimated tokens corrected by the learned ratio."""
        return max(1, math.ceil(estimate * self.ratio))

    async def reserve(self, estimate: int) -> Reservation:
        """Wait until a request of ``estimate`` (raw) tokens may be sent; hand the result to :meth:`settle`."""
        now = self._clock()
        wait = max(0.0, self._pause_until - now)
        reserved = self.tokens_for(estimate)
        if self._requests is not None:
            wait = max(wait, self._requests.reserve(1, now))
        if self._tokens is not None:
            wait = max(wait, self._tokens.reserve(reserved, now))
        if wait > 0:
            await self._sleep(wait)
        return Reservation(estimate, reserved)

    async def settle(self, reservation: Reservation, reported: int | None) -> None:
        """Learn from an answer: ``reported`` tokens for the estimate (None: the request failed).

        The token budget is corrected by what the reservation got wrong, so
        the pace follows real usage, not the estimate. A failed request keeps
        its reservation: the server may well have counted it.
        """
        if reported is None:
            return
        estimate = reservation.estimate
        if self.scale < 1.0:
            self._set_scale(self.scale + self.INCREASE)
        if estimate <= 0 or reported <= 0:
            return
        # a slow-moving average: one odd batch must not swing the pace
        self.ratio += 0.2 * (reported / estimate - self.ratio)
        if self._tokens is not None:
            self._tokens.adjust(reported - reservation.tokens)

    async def backoff(self, delay: float) -> None:
        """The server said 429: slow down, and pause every request for ``delay`` seconds."""
        now = self._clock()
        if now - self._last_decrease >= 1.0:
            self._last_decrease = now
            self._set_scale(self.scale * self.DECREASE)
        self._pause_until = max(self._pause_until, now + delay)
        for pacer in self._pacers:
            # requests reserved from now on queue up after the pause, at the pace
            pacer.tat = max(pacer.tat, self._pause_until)

    def _set_scale(self, scale: float) -> None:
        self.scale = min(1.0, max(self.FLOOR, scale))
        for pacer in self._pacers:
            pacer.rate = self._base[id(pacer)] * self.scale


class Budget:
    """``run.max_tokens``: refuses a request that could take spending past the limit.

    Each request reserves its estimated tokens (corrected by the ratio of
    reported to estimated tokens seen so far, plus a margin) before it is
    sent, and settles with what ``usage`` reported; a request whose
    reservation does not fit what is left is refused.
    """

    MARGIN = 1.1  # reserve 10% more than the corrected estimate: stop before, not after

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0
        self.reserved = 0
        self.ratio = 1.0

    def reserve(self, estimate: int) -> int:
        """Reserve the tokens of a request; raises :class:`BudgetExhausted` when they do not fit."""
        cost = math.ceil(estimate * self.ratio * self.MARGIN)
        if self.spent + self.reserved + cost > self.limit:
            raise BudgetExhausted(
                f"{self.spent:,} tokens spent, {self.reserved:,} in flight, the next request needs about {cost:,}"
            )
        self.reserved += cost
        return cost

    def settle(self, reserved: int, estimate: int, reported: int | None) -> None:
        """The request ended: ``reported`` tokens were spent (None: it failed)."""
        self.reserved -= reserved
        if reported:
            self.spent += reported
            if estimate > 0:
                self.ratio += 0.3 * (reported / estimate - self.ratio)
