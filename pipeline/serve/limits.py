"""The server's rate limits: request and token budgets per window, and their ``x-ratelimit-*`` headers.

Two ways of counting: :class:`SlidingWindow` holds the budget over any
``window_s`` seconds, as Heroku counts it; :class:`FixedWindow` starts the
counts afresh at every multiple of ``window_s``. ``x-ratelimit-limit-*`` is the budget per window;
``x-ratelimit-reset-*`` is the time until a request like the current one (one
request, the same tokens) would fit that budget: after admitting it for an
accepted request, before for a refused one, ``0s`` when it fits now.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Protocol

Headers = tuple[tuple[bytes, bytes], ...]

LIMIT_MODES: tuple[str, ...] = ("sliding", "fixed")


@dataclass(frozen=True, slots=True)
class RateVerdict:
    """Whether a request fits the budgets, and the ``x-ratelimit-*`` headers to send."""

    allowed: bool
    wait_s: float  # until this request would fit; 0 when allowed
    headers: Headers


class RateWindow(Protocol):
    """Request and token budgets that admit or refuse each request."""

    def admit(self, tokens: int, now: float) -> RateVerdict:
        """Accept the request and count it, or refuse it without counting it."""

    def peek(self, now: float) -> Headers:
        """The headers of an answer that is not counted (an error, another route)."""


class _Window(ABC):
    """What every window shares: admitting, peeking, and writing the headers."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s

    def admit(self, tokens: int, now: float) -> RateVerdict:
        """Accept the request and count it, or refuse it without counting it."""
        self._expire(now)
        waits = self._waits(tokens, now)
        allowed = max(waits) == 0
        if allowed:
            self._count(tokens, now)
            waits = self._waits(tokens, now)
        return RateVerdict(allowed, 0.0 if allowed else max(waits), self._headers(*waits))

    def peek(self, now: float) -> Headers:
        """The headers of an answer that is not counted, as for a one-token request."""
        self._expire(now)
        return self._headers(*self._waits(1, now))

    @abstractmethod
    def _expire(self, now: float) -> None:
        """Forget what no longer counts at ``now``."""

    @abstractmethod
    def _count(self, tokens: int, now: float) -> None:
        """Count an accepted request of ``tokens``."""

    @abstractmethod
    def _used(self) -> tuple[int, int]:
        """Requests and tokens counted against the budgets now."""

    @abstractmethod
    def _waits(self, tokens: int, now: float) -> tuple[float, float]:
        """Seconds until one more request, and until ``tokens`` more, fit their budgets."""

    def _headers(self, request_wait: float, token_wait: float) -> Headers:
        requests, tokens = self._used()
        headers: list[tuple[bytes, bytes]] = []
        if self.rpm is not None:
            headers += [
                (b"x-ratelimit-limit-requests", b"%d" % self.rpm),
                (b"x-ratelimit-remaining-requests", b"%d" % max(0, self.rpm - requests)),
                (b"x-ratelimit-reset-requests", format_reset(request_wait).encode()),
            ]
        if self.tpm is not None:
            headers += [
                (b"x-ratelimit-limit-tokens", b"%d" % self.tpm),
                (b"x-ratelimit-remaining-tokens", b"%d" % max(0, self.tpm - tokens)),
                (b"x-ratelimit-reset-tokens", format_reset(token_wait).encode()),
            ]
        return tuple(headers)


class SlidingWindow(_Window):
    """Budgets over the accepted requests of the last ``window_s`` seconds."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float) -> None:
        super().__init__(rpm, tpm, window_s)
        self._accepted: deque[tuple[float, int]] = deque()  # (time, tokens), oldest first
        self._tokens = 0

    def _expire(self, now: float) -> None:
        while self._accepted and self._accepted[0][0] <= now - self.window_s:
            self._tokens -= self._accepted.popleft()[1]

    def _count(self, tokens: int, now: float) -> None:
        self._accepted.append((now, tokens))
        self._tokens += tokens

    def _used(self) -> tuple[int, int]:
        return len(self._accepted), self._tokens

    def _waits(self, tokens: int, now: float) -> tuple[float, float]:
        request_wait = token_wait = 0.0
        if self.rpm is not None and len(self._accepted) >= self.rpm:
            opens_at = self._accepted[len(self._accepted) - self.rpm][0] + self.window_s
            request_wait = opens_at - now
        if self.tpm is not None and self._tokens + tokens > self.tpm:
            token_wait = self.window_s  # a request above the whole budget never fits
            freed = 0
            for at, spent in self._accepted:
                freed += spent
                if self._tokens - freed + tokens <= self.tpm:
                    token_wait = at + self.window_s - now
                    break
        return request_wait, token_wait


class FixedWindow(_Window):
    """Budgets that start afresh at every multiple of ``window_s`` seconds."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float) -> None:
        super().__init__(rpm, tpm, window_s)
        self._started = -math.inf  # the start of the window being counted
        self._requests = self._tokens = 0

    def _expire(self, now: float) -> None:
        started = math.floor(now / self.window_s) * self.window_s
        if started != self._started:
            self._started = started
            self._requests = self._tokens = 0

    def _count(self, tokens: int, now: float) -> None:
        self._requests += 1
        self._tokens += tokens

    def _used(self) -> tuple[int, int]:
        return self._requests, self._tokens

    def _waits(self, tokens: int, now: float) -> tuple[float, float]:
        next_window = self._started + self.window_s - now
        request_wait = token_wait = 0.0
        if self.rpm is not None and self._requests >= self.rpm:
            request_wait = next_window
        if self.tpm is not None and self._tokens + tokens > self.tpm:
            # a request above the whole budget never fits; say a window, as the sliding one does
            token_wait = next_window if tokens <= self.tpm else self.window_s
        return request_wait, token_wait


def rate_window(mode: str, rpm: int | None, tpm: int | None, window_s: float) -> RateWindow | None:
    """The window that counts ``mode``'s way (one of :data:`LIMIT_MODES`), or None without a budget."""
    if rpm is None and tpm is None:
        return None
    return SlidingWindow(rpm, tpm, window_s) if mode == "sliding" else FixedWindow(rpm, tpm, window_s)


def format_reset(seconds: float) -> str:
    """A duration as OpenAI's ``x-ratelimit-reset-*`` writes it: ``250ms``, ``1s``, ``1.5s``, ``1m30s``."""
    # rounded up to the millisecond so that a client waiting this long is not early
    millis = math.ceil(max(0.0, seconds) * 1000 - 1e-6)
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m" + text
    if hours:
        text = f"{hours}h" + text
    return text
