"""Client-side pacing of requests and tokens per minute, and the token budget of a run.

:class:`Limiter` is the seam: a request reserves its share before it is
sent, settles with what ``usage`` said once it ended, a 429 makes the
limiter back off, and the ``x-ratelimit-*`` headers of every answer are
handed to it. :class:`RateLimiter` (one process) is the first
implementation; :class:`~pipeline.embed.shared.SharedLimiter` (one budget in
Redis for every worker) the second. The methods are async because a shared
store answers over the network. What the budget is (configured, told by the
server, found from 429s) is :class:`~pipeline.embed.learned.RateModel`'s.

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
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol

import anyio

from pipeline.embed.learned import RateModel, ServerLimits
from pipeline.errors import BudgetExhausted

if TYPE_CHECKING:
    from pipeline.config import EmbeddingConfig

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

    async def backoff(self, delay: float | None) -> None:
        """The server said 429: slow down, and hold every request for ``delay`` seconds (None: it did not say)."""
        ...

    async def observe(self, server: ServerLimits) -> None:
        """An answer (any status) carried ``x-ratelimit-*`` headers: follow what they say."""
        ...


class _Pacer:
    """Spaces out reservations of ``amount`` so that ``rate`` per second holds.

    A generic cell-rate scheduler: ``tat`` is the time at which everything
    reserved so far has been paid for at ``rate``. No burst: each request
    waits for the budget it uses, so a server that counts its budget over a
    sliding second sees the same pace as one that counts per minute.
    """

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.tat = -math.inf

    def reserve(self, amount: float, now: float) -> float:
        """Reserve ``amount`` and return how long to wait before using it."""
        start = max(self.tat, now)
        self.tat = start + amount / self.rate
        return max(0.0, start - now)

    def adjust(self, amount: float) -> None:
        """Correct an earlier reservation by ``amount`` (positive: it cost more)."""
        self.tat += amount / self.rate


class RateLimiter:
    """Paces this process's requests at the rates of a :class:`~pipeline.embed.learned.RateModel`.

    Either configured limit may be ``None``: the limit is then learned from
    the server's ``x-ratelimit-*`` headers, or from its 429s when it sends
    none (see :mod:`pipeline.embed.learned`). Each 429 lowers the pace by a
    few percent (at most once a second, however many requests were refused
    together) and pauses every request; each success raises it again
    slowly. ``share`` is this worker's part of the budget (``1 / world_size``
    when several workers pace alone).
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        share: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.model = RateModel(requests_per_minute, tokens_per_minute, share)
        self._requests: _Pacer | None = None
        self._tokens: _Pacer | None = None
        self._clock = clock
        self._sleep = sleep
        self._last_tokens = 1  # the last reservation's tokens: is what remains enough for the next?
        self._repace()

    @property
    def scale(self) -> float:
        """Share of the budget paced at (below 1 after 429s)."""
        return self.model.scale

    @property
    def ratio(self) -> float:
        """Reported tokens ÷ estimated tokens, learned from ``usage``."""
        return self.model.ratio

    def tokens_for(self, estimate: int) -> int:
        """Estimated tokens corrected by the learned ratio."""
        return self.model.tokens_for(estimate)

    async def reserve(self, estimate: int) -> Reservation:
        """Wait until a request of ``estimate`` (raw) tokens may be sent; hand the result to :meth:`settle`."""
        reserved = self.model.tokens_for(estimate)
        self._last_tokens = reserved
        while True:
            now = self._clock()
            start = max(now, self.model.hold_until)  # nothing goes before a pause ends
            taken = [(p, a) for p, a in ((self._requests, 1), (self._tokens, reserved)) if p is not None]
            wait = max([start - now] + [start - now + pacer.reserve(amount, start) for pacer, amount in taken])
            if wait > 0:
                await self._sleep(wait)
            if self.model.hold_until <= self._clock():
                return Reservation(estimate, reserved)
            # a 429 came while this one waited: queue again after the pause, at the pace, rather than
            # every waiting request going at once when it ends (the turn it had fell inside the pause)

    async def settle(self, reservation: Reservation, reported: int | None) -> None:
        """Learn from an answer: ``reported`` tokens for the estimate (None: the request failed).

        The token budget is corrected by what the reservation got wrong, so
        the pace follows real usage, not the estimate. A failed request keeps
        its reservation: the server may well have counted it.
        """
        if reported is None:
            return
        self.model.answered(reservation.estimate, reported, self._clock())
        self._repace()
        if self._tokens is not None and reported > 0:
            self._tokens.adjust(reported - reservation.tokens)

    async def backoff(self, delay: float | None) -> None:
        """The server said 429: slow down, and pause every request for ``delay`` seconds."""
        self.model.refused(delay, self._clock())
        self._repace()

    async def observe(self, server: ServerLimits) -> None:
        """Follow the budget an answer's ``x-ratelimit-*`` headers told."""
        self.model.told_by(server, self._clock(), self._last_tokens)
        self._repace()

    def _repace(self) -> None:
        """Bring the pacers to the model's rates, keeping what was reserved so far."""
        rates = self.model.rates()
        for name, rate in zip(("_requests", "_tokens"), rates):
            pacer: _Pacer | None = getattr(self, name)
            if rate is None:
                setattr(self, name, None)
            elif pacer is None:
                setattr(self, name, _Pacer(rate))
            else:
                pacer.rate = rate / 60.0


def make_limiter(cfg: EmbeddingConfig, endpoint: str, world_size: int = 1) -> Limiter:
    """The limiter for ``cfg``: one budget in ``cfg.rate_limit_store`` when set, else this process's own."""
    if cfg.rate_limit_store:
        from pipeline.embed.shared import SharedLimiter

        return SharedLimiter(
            cfg.rate_limit_store, endpoint, cfg.model, cfg.requests_per_minute, cfg.tokens_per_minute,
            world_size=world_size,
        )
    return RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute)


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


def describe_budget(
    cfg: EmbeddingConfig, *, requests: int | None = None, tokens: int | None = None, world_size: int = 1
) -> list[str]:
    """Lines for ``validate``: which rate budget applies (configured, learned, shared) and the time it implies.

    ``requests`` and ``tokens`` are the run's estimates; ``world_size`` its ranks.
    """
    from pipeline.logs import format_duration, redact_url

    if cfg.provider != "http":
        return ["rate budget: none (provider: local calls no API)"]
    axes = []
    for name, per_minute in (("requests", cfg.requests_per_minute), ("tokens", cfg.tokens_per_minute)):
        axes.append(f"{per_minute:,.0f} {name}/min (configured)" if per_minute else f"{name}: learned from the server")
    lines = ["rate budget: " + ", ".join(axes)]
    if not cfg.requests_per_minute or not cfg.tokens_per_minute:
        lines.append(
            "  learned: paced to the server's x-ratelimit-limit-* headers from its first answer, "
            "or found from its 429s when it sends none"
        )
    if cfg.rate_limit_store:
        lines.append(
            f"  shared: every worker naming {redact_url(cfg.rate_limit_store)}, this endpoint and model "
            f"paces against this one budget; while the store is away each paces 1/{world_size} of it"
        )
    elif world_size > 1 and (cfg.requests_per_minute or cfg.tokens_per_minute):
        lines.append(
            f"  not shared: each of the {world_size} workers paces at this whole budget; "
            "set embedding.rate_limit_store to share one budget"
        )
    waits = []
    if requests is not None and cfg.requests_per_minute:
        waits.append((requests / cfg.requests_per_minute * 60, "requests"))
    if tokens is not None and cfg.tokens_per_minute:
        waits.append((tokens / cfg.tokens_per_minute * 60, "tokens"))
    if waits:
        seconds, axis = max(waits)
        lines.append(f"  time at this budget: at least {format_duration(seconds)} ({axis} bind)")
    elif requests is not None or tokens is not None:
        lines.append("  time at this budget: unknown until the server tells its limit")
    return lines
