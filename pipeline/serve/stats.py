"""What the server has answered, counted for tests and benchmarks (``GET /stats``)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.serve.models import text_digest


@dataclass
class Stats:
    """Counters of embeddings requests, served as ``GET /stats``.

    ``responses`` counts answers by status code, with ``dropped``, ``hung``,
    ``malformed`` and ``short`` for those faults (a hung request that is
    answered after all is counted again under its answer). ``admitted``
    counts the requests the rate limits let through (every valid request
    that drew no fault, when no limit is set) and ``admitted_tokens`` their
    tokens; ``rate_limited`` the 429s of the limits (``responses["429"]``
    adds the injected ones). The ``inputs`` and token counters cover
    complete 200 answers only.
    """

    requests: int = 0
    responses: Counter[str] = field(default_factory=Counter)
    admitted: int = 0
    admitted_tokens: int = 0
    rate_limited: int = 0
    inputs_embedded: int = 0
    prompt_tokens: int = 0
    total_tokens: int = 0
    first_embedded_at: float | None = None  # monotonic time of the first complete 200
    last_embedded_at: float | None = None
    _seen: set[bytes] = field(default_factory=set, repr=False)

    def record_embedded(self, texts: list[str], tokens: int) -> None:
        """Count a complete 200 answer."""
        now = time.monotonic()
        if self.first_embedded_at is None:
            self.first_embedded_at = now
        self.last_embedded_at = now
        self.inputs_embedded += len(texts)
        self._seen.update(map(text_digest, texts))
        self.prompt_tokens += tokens
        self.total_tokens += tokens

    def snapshot(self) -> dict[str, Any]:
        """The counters as the JSON object ``GET /stats`` returns."""
        return {
            "requests": self.requests,
            "responses": dict(self.responses),
            "admitted": self.admitted,
            "admitted_tokens": self.admitted_tokens,
            "rate_limited": self.rate_limited,
            "inputs_embedded": self.inputs_embedded,
            "unique_inputs_embedded": len(self._seen),
            "duplicate_inputs_embedded": self.inputs_embedded - len(self._seen),
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.total_tokens,
            # seconds from the first to the last complete 200, for rate figures
            "embedded_span_s": (self.last_embedded_at - self.first_embedded_at)
            if self.first_embedded_at is not None and self.last_embedded_at is not None
            else 0.0,
        }

    def reset(self) -> None:
        """Zero every counter."""
        self.first_embedded_at = self.last_embedded_at = None
        self.requests = self.inputs_embedded = self.prompt_tokens = self.total_tokens = 0
        self.admitted = self.admitted_tokens = self.rate_limited = 0
        self.responses.clear()
        self._seen.clear()
