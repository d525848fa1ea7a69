"""The server's rate limits: request and token budgets over a window, and their headers."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateVerdict:
    """Whether a request fits the budgets, and the ``x-ratelimit-*`` headers to send."""

    allowed: bool
    wait_s: float  # until this request would fit; 0 when allowed
    headers: tuple[tuple[bytes, bytes], ...]


class RateWindow:
    """Request and token budgets over a sliding window of accepted requests.

    ``x-ratelimit-reset-*`` is the time until a request like the current one
    (one request, the same tokens) would fit that budget: after admitting it
    for an accepted request, before for a refused one.
    """

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self._accepted: deque[tuple[float, int]] = deque()  # (time, tokens), oldest first
        self._tokens = 0

    def admit(self, tokens: int, now: float) -> RateVerdict:
        """Accept the request and count it, or refuse it without counting it."""
        while self._accepted and self._accepted[0][0] <= now - self.window_s:
            self._tokens -= self._accepted.popleft()[1]
        waits = self._waits(tokens, now)
        allowed = max(waits) == 0
        if allowed:
            self._accepted.append((now, tokens))
            self._tokens += tokens
            waits = self._waits(tokens, now)
        return RateVerdict(allowed, 0.0 if allowed else max(waits), self._headers(*waits))

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

    def _headers(self, request_wait: float, token_wait: float) -> tuple[tuple[bytes, bytes], ...]:
        headers: list[tuple[bytes, bytes]] = []
        if self.rpm is not None:
            headers += [
                (b"x-ratelimit-limit-requests", b"%d" % self.rpm),
                (b"x-ratelimit-remaining-requests", b"%d" % max(0, self.rpm - len(self._accepted))),
                (b"x-ratelimit-reset-requests", format_reset(request_wait).encode()),
            ]
        if self.tpm is not None:
            headers += [
                (b"x-ratelimit-limit-tokens", b"%d" % self.tpm),
                (b"x-ratelimit-remaining-tokens", b"%d" % max(0, self.tpm - self._tokens)),
                (b"x-ratelimit-reset-tokens", format_reset(token_wait).encode()),
            ]
        return tuple(headers)


def format_reset(seconds: float) -> str:
    """A duration as ``x-ratelimit-reset-*`` writes it: ``51s``, ``0.5s``, ``0s``."""
    # rounded up to the millisecond so that a client waiting this long is not early
    millis = math.ceil(max(0.0, seconds) * 1000 - 1e-6)
    return f"{millis / 1000:.3f}".rstrip("0").rstrip(".") + "s"
