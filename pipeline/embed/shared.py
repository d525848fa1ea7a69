"""One rate budget for every worker, kept in Redis (``embedding.rate_limit_store``).

:class:`SharedLimiter` is the :class:`~pipeline.embed.limits.Limiter` seam's
second implementation. Every worker naming the same store, endpoint and
model reserves its requests and tokens in the same cells: a generic
cell-rate algorithm run atomically in Redis by a Lua script, on Redis's own
clock (dynos' clocks differ). A reservation is corrected by what ``usage``
reported; a 429 pauses every worker. The budget itself (configured, told by
the server's headers, found from 429s) is this worker's
:class:`~pipeline.embed.learned.RateModel`.

Keys are ``pipeline:rate:{hash}:*`` with a hash of the endpoint and model:
no URL, no credentials. When the store cannot be reached, the worker paces
alone at its share of the budget (budget ÷ ``world_size``), says so once,
and goes back to the store when it answers again: the store never stops a
run.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import anyio

from pipeline.embed.learned import RateModel, ServerLimits
from pipeline.embed.limits import Clock, RateLimiter, Reservation, Sleep
from pipeline.logs import get_logger, redact_url

# KEYS: request cell, token cell, pause. ARGV: seconds per request, seconds per token, tokens.
# Returns how long the caller waits before sending (seconds, as a string: Lua numbers become integers).
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local start = math.max(now, tonumber(redis.call('GET', KEYS[3]) or '0'))
local wait = start - now
local function take(key, cost)
  if cost <= 0 then return end
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), start)
  local ttl = math.ceil((tat + cost - now + 60) * 1000)
  redis.call('SET', key, string.format('%.6f', tat + cost), 'PX', ttl)
  wait = math.max(wait, tat - now)
end
take(KEYS[1], tonumber(ARGV[1]))
take(KEYS[2], tonumber(ARGV[2]) * tonumber(ARGV[3]))
return string.format('%.6f', wait)
"""

# KEYS: a cell. ARGV: seconds to add (negative: the reservation was too large).
ADJUST = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
redis.call('SET', KEYS[1], string.format('%.6f', tonumber(v) + tonumber(ARGV[1])), 'KEEPTTL')
return 1
"""

# KEYS: pause. ARGV: seconds from now during which no worker sends.
PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local till = now + tonumber(ARGV[1])
if till > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], string.format('%.6f', till), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return 1
"""

STORE_TIMEOUT_S = 2.0  # a store slower than this is treated as gone for now
RECONNECT_S = 5.0  # how often a worker pacing alone tries the store again


def store_keys(endpoint: str, model: str) -> tuple[str, str, str]:
    """The request cell, token cell and pause keys of ``endpoint`` and ``model``: hashed, no credentials."""
    digest = hashlib.sha256(f"{redact_url(endpoint)}\0{model}".encode()).hexdigest()[:20]
    prefix = f"pipeline:rate:{digest}"
    return f"{prefix}:requests", f"{prefix}:tokens", f"{prefix}:pause"


def connect(url: str) -> Any:
    """An asyncio Redis client for ``url``; ``rediss://`` accepts a self-signed certificate (Heroku's)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: dict[str, Any] = {
        "socket_timeout": STORE_TIMEOUT_S,
        "socket_connect_timeout": STORE_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),  # a failed call falls back at once; the limiter retries later
    }
    if url.startswith("rediss://"):
        # Heroku Key-Value Store serves TLS with a self-signed certificate
        options.update(ssl_cert_reqs=None, ssl_check_hostname=False)
    return aioredis.Redis.from_url(url, **options)


class SharedLimiter:
    """Paces every worker naming the same store, endpoint and model against one budget.

    ``world_size`` sets the share this worker paces at alone while the store
    is unreachable. The clock and sleep are injectable for tests; the store
    keeps its own clock.
    """

    def __init__(
        self,
        store_url: str,
        endpoint: str,
        model: str,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        world_size: int = 1,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        from redis.exceptions import RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._redis = connect(store_url)
        self._keys = store_keys(endpoint, model)
        self._reserve = self._redis.register_script(RESERVE)
        self._adjust = self._redis.register_script(ADJUST)
        self._pause = self._redis.register_script(PAUSE)
        # alone: this worker's share, used while the store is away; its model is the one budget we know
        self.alone = RateLimiter(
            requests_per_minute, tokens_per_minute, share=1 / world_size, clock=clock, sleep=sleep
        )
        self._clock = clock
        self._sleep = sleep
        self._away_since: float | None = None  # when the store stopped answering (None: it answers)
        self._retry_at = -math.inf

    @property
    def model(self) -> RateModel:
        """What this worker knows of the budget."""
        return self.alone.model

    @property
    def shared(self) -> bool:
        """Whether reservations go to the store now (False: pacing alone)."""
        return self._away_since is None

    async def reserve(self, estimate: int) -> Reservation:
        """Wait until the shared budget lets a request of about ``estimate`` tokens go."""
        tokens = self.model.tokens_for(estimate)
        while True:
            if not self._store_usable():
                return await self.alone.reserve(estimate)
            hold = self.model.hold_until - self._clock()
            if hold > 0:  # a 429, or the server said its budget is spent until then
                await self._sleep(hold)
            per_request, per_token = self._intervals()
            try:
                wait = float(await self._call(self._reserve, self._keys, [per_request, per_token, tokens]))
            except self._errors as exc:
                self._went_away(exc)
                return await self.alone.reserve(estimate)
            self._came_back()
            if wait > 0:
                await self._sleep(wait)
            if self.model.hold_until <= self._clock():
                return Reservation(estimate, tokens)
            # a 429 came while this one waited: take a turn again after the pause

    async def settle(self, reservation: Reservation, reported: int | None) -> None:
        """Learn from the answer, and correct the shared token cell by what ``usage`` reported."""
        await self.alone.settle(reservation, reported)
        _, per_token = self._intervals()
        if reported is None or not reported or not per_token or not self._store_usable():
            return
        try:
            await self._call(self._adjust, [self._keys[1]], [(reported - reservation.tokens) * per_token])
        except self._errors as exc:
            self._went_away(exc)

    async def backoff(self, delay: float | None) -> None:
        """The server said 429: slow down, and pause every worker."""
        await self.alone.backoff(delay)
        pause = self.model.hold_until - self._clock()
        if pause <= 0 or not self._store_usable():
            return
        try:
            await self._call(self._pause, [self._keys[2]], [pause])
        except self._errors as exc:
            self._went_away(exc)

    async def observe(self, server: ServerLimits) -> None:
        """Follow the budget an answer's headers told (the server's budget is every worker's)."""
        await self.alone.observe(server)

    async def aclose(self) -> None:
        """Close the connection to the store."""
        await self._redis.aclose()

    def _intervals(self) -> tuple[float, float]:
        """Seconds per request and per token of the whole budget (0: no limit on that axis)."""
        requests, tokens = self.model.rates(share=1.0)
        return (60.0 / requests if requests else 0.0), (60.0 / tokens if tokens else 0.0)

    async def _call(self, script: Any, keys: list[str] | tuple[str, ...], args: list[float]) -> Any:
        with anyio.fail_after(STORE_TIMEOUT_S + 1):
            return await script(keys=list(keys), args=args)

    def _store_usable(self) -> bool:
        return self._away_since is None or self._clock() >= self._retry_at

    def _went_away(self, exc: BaseException) -> None:
        now = self._clock()
        self._retry_at = now + RECONNECT_S
        if self._away_since is None:
            self._away_since = now
            get_logger().warning(
                "rate_limit_store_unreachable", error=type(exc).__name__, share=f"1/{round(1 / self.model.share)}"
            )

    def _came_back(self) -> None:
        if self._away_since is not None:
            get_logger().info("rate_limit_store_back", away_s=round(self._clock() - self._away_since, 1))
            self._away_since = None
