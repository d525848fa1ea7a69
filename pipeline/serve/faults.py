"""Injected faults: which embeddings request gets which, and the error answers they give."""

from __future__ import annotations

import random

from pipeline.serve.options import FAULTS, ServerOptions
from pipeline.serve.protocol import Reply, error_reply


class FaultDraw:
    """One seeded draw per request; each fault owns a slice of [0, 1) as wide as its fraction."""

    def __init__(self, options: ServerOptions) -> None:
        self._fractions = [(name, getattr(options, name)) for name in FAULTS]
        self._rng = random.Random(options.seed)

    def __call__(self) -> str | None:
        """The fault of the next request (one of :data:`FAULTS`), or None."""
        draw = self._rng.random()
        edge = 0.0
        for name, fraction in self._fractions:
            edge += fraction
            if draw < edge:
                return name
        return None


def status_fault_reply(fault: str | None, options: ServerOptions) -> Reply | None:
    """The error answer of a fault that is only a status (429, 500, 503); None for the others."""
    if fault == "fail_429":
        retry_after = ((b"retry-after", f"{options.fault_retry_after:g}".encode()),)
        return error_reply(
            429, "injected rate limit", "rate_limit_exceeded", type_="rate_limit_error",
            headers=retry_after if options.retry_after else (),
        )
    if fault == "fail_500":
        return error_reply(500, "injected server error", "internal_error", type_="server_error")
    if fault == "fail_503":
        return error_reply(503, "injected overload", "service_unavailable", type_="server_error")
    return None
