"""What a worker knows of the rate it may use: the configured budget, what the server says, what 429s taught.

:class:`RateModel` is the knowledge both limiters pace by (the local
:class:`~pipeline.embed.limits.RateLimiter` and the shared
:class:`~pipeline.embed.shared.SharedLimiter`). It holds no clock of its
own: every call is given ``now``.

- A configured budget (``requests_per_minute``, ``tokens_per_minute``) is
  the pace on its axis, and an upper bound: 429s and a spent
  ``x-ratelimit-remaining-*`` only ever slow it down.
- On an axis with nothing configured, ``x-ratelimit-limit-*`` on any answer
  (Heroku and OpenAI send them on every one) is the server's budget per
  minute: the pace follows it from the first answer on.
- ``x-ratelimit-remaining-*`` at 0 holds every request until
  ``x-ratelimit-reset-*``.
- A server that says nothing (no headers, no ``Retry-After``) is found out
  from its 429s: the requests it answered in the last minute before the
  first 429 are its budget per minute; later 429s lower that (multiplicative decrease), successes raise
  it slowly (additive increase). While the server refuses without saying
  how long, the pause doubles at each refused probe.
- Tokens are not known before a call: the estimate is corrected by the
  ratio of reported to estimated tokens, learned from ``usage``.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Mapping

WINDOW_S = 60.0  # the budgets here are per minute, as Heroku and OpenAI count them
_RESET = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")


def parse_reset(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` or ``x-ratelimit-reset-*`` value.

    Accepts plain seconds (``"2"``, ``"0.5"``) and durations like ``"51s"``,
    ``"1m30s"``, ``"250ms"``. Returns ``None`` for anything else.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    m = _RESET.match(value)
    if not m or not any(m.groups()):
        return None
    h, mins, s, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mins * 60 + s + ms / 1000


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one answer's ``x-ratelimit-*`` headers said (None: not sent)."""

    limit_requests: float | None = None
    limit_tokens: float | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> ServerLimits | None:
        """The limits in ``headers`` (case-insensitive mapping), or None when it has none."""
        values = {
            f"{kind}_{axis}": (parse_reset if kind == "reset" else _number)(headers.get(f"x-ratelimit-{kind}-{axis}"))
            for kind in ("limit", "remaining", "reset")
            for axis in ("requests", "tokens")
        }
        if all(v is None for v in values.values()):
            return None
        return cls(**values)


class RateModel:
    """The requests and tokens per minute this worker may use now, learned as it goes.

    ``share`` is this worker's part of every budget (1 alone or with a
    shared store; ``1 / world_size`` when falling back to pacing alone).
    """

    MARGIN = 0.99  # pace just under the budget: jitter against a sliding window, token estimates
    DECREASE = 0.97  # the pace after a 429, as a share of the pace before
    INCREASE = 0.0003  # added back to the share after each success
    FLOOR = 0.5  # never slower than half the budget because of 429s
    FOUND_DECREASE = 0.95  # a budget found from 429s alone, after a further 429
    FOUND_INCREASE = 0.0002  # ... and its growth per success, as a share of itself
    PROBE_S = 1.0  # the first pause after a 429 that said nothing of when to come back
    PROBE_MAX_S = 32.0

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None, share: float = 1.0) -> None:
        self.configured = (requests_per_minute, tokens_per_minute)
        self.share = share
        self.told: tuple[float | None, float | None] = (None, None)  # x-ratelimit-limit-*
        self.found: float | None = None  # requests per minute found from 429s
        self.scale = 1.0  # share of the budget paced at, lowered by 429s
        self.ratio = 1.0  # reported tokens ÷ estimated tokens
        self.hold_until = -math.inf  # no request before this (remaining at 0, or a pause)
        self._answered: deque[float] = deque()  # times of the last minute's successes
        self._last_decrease = -math.inf
        self._probe_s = 0.0  # the pause after the last 429 that said nothing (0: none pending)

    def rates(self, share: float | None = None) -> tuple[float | None, float | None]:
        """Requests and tokens per minute to pace at now (None: no known limit on that axis).

        ``share`` overrides this worker's share (1.0: the whole budget, as a shared store paces it).
        """
        share = self.share if share is None else share
        found = (self.found, None)
        rates: list[float | None] = []
        for configured, told, learned in zip(self.configured, self.told, found):
            # configured: the user's number rules (a server's window may not be a minute);
            # else what the server told, else what its 429s showed
            known = [configured] if configured is not None else [r for r in (told, learned) if r is not None]
            # Paced exactly at a sliding window's limit, each request once the window is full races the
            # one sent a window earlier, and jitter loses half the races: the margin is that slack (and,
            # for tokens, room for what a batch's estimate gets wrong until usage corrects it).
            rates.append(min(known) * share * self.scale * self.MARGIN if known else None)
        return rates[0], rates[1]

    @property
    def source(self) -> str:
        """Where the budget comes from: ``configured``, ``learned`` or ``none`` (yet)."""
        if any(self.configured):
            return "configured"
        return "learned" if any(self.told) or self.found is not None else "none"

    def tokens_for(self, estimate: int) -> int:
        """Estimated tokens corrected by the learned ratio."""
        return max(1, math.ceil(estimate * self.ratio))

    def answered(self, estimate: int, reported: int, now: float) -> None:
        """A request of ``estimate`` tokens was answered, ``reported`` per ``usage``."""
        self._answered.append(now)
        while self._answered and self._answered[0] <= now - WINDOW_S:
            self._answered.popleft()
        self._probe_s = 0.0
        if self.scale < 1.0:
            self.scale = min(1.0, self.scale + self.INCREASE)
        if self.found is not None:
            self.found *= 1 + self.FOUND_INCREASE
        if estimate > 0 and reported > 0:
            # a slow-moving average: one odd batch must not swing the pace
            self.ratio += 0.2 * (reported / estimate - self.ratio)

    def told_by(self, server: ServerLimits, now: float, next_tokens: int = 1) -> None:
        """An answer said ``server``: follow its budget, and hold while it has none left."""
        self.told = (
            server.limit_requests if server.limit_requests else self.told[0],
            server.limit_tokens if server.limit_tokens else self.told[1],
        )
        if server.remaining_requests is not None and server.remaining_requests < 1 and server.reset_requests:
            self.hold_until = max(self.hold_until, now + server.reset_requests)
        if server.remaining_tokens is not None and server.remaining_tokens < next_tokens and server.reset_tokens:
            self.hold_until = max(self.hold_until, now + server.reset_tokens)

    def refused(self, delay: float | None, now: float) -> float:
        """The server said 429 (``delay``: when to come back, if it said): the pause for everyone, seconds."""
        if now - self._last_decrease >= 1.0:  # many requests refused together are one signal
            self._last_decrease = now
            if self.found is not None:
                self.found *= self.FOUND_DECREASE
            elif delay is None and self.configured[0] is None and self.told[0] is None and self._answered:
                # it said nothing at all: what it let through in the last minute is its budget
                # (a server that says when to come back is simply waited for)
                self.found = float(len(self._answered))
            else:
                self.scale = max(self.FLOOR, self.scale * self.DECREASE)
        if delay is None:
            # nothing said: wait, then probe, doubling the wait while probes are refused
            if self.hold_until > now:  # refused while already held: sent before the pause, the same signal
                return self.hold_until - now
            self._probe_s = min(self.PROBE_MAX_S, max(self.PROBE_S, 2 * self._probe_s))
            delay = self._probe_s
        self.hold_until = max(self.hold_until, now + delay)
        return delay
