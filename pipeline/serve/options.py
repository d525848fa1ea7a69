"""What ``pipeline serve`` can be told: :class:`ServerOptions` and its command-line flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

from pipeline.errors import ConfigError
from pipeline.serve.limits import LIMIT_MODES

#: fault switches in the order their fractions are stacked on one random draw
FAULTS: tuple[str, ...] = ("fail_429", "fail_500", "fail_503", "drop", "hang", "malformed", "short")

DEFAULT_DIMENSIONS = 1024


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Everything ``pipeline serve`` can be told; fractions are of embeddings requests."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0 = an ephemeral port
    api_key: str | None = field(default=None, repr=False)  # None = no authentication
    models: tuple[str, ...] = ()  # empty = any model name is accepted
    fake: bool = False  # deterministic fake vectors instead of the local model
    dimensions: int = DEFAULT_DIMENSIONS  # of fake vectors; the local model has its own (256)
    shuffle: bool = False  # return ``data`` in a random order
    latency_ms: float = 0.0
    jitter_ms: float = 0.0  # uniform extra latency, 0..jitter_ms
    rpm: int | None = None
    tpm: int | None = None
    limit_window_s: float = 60.0
    limit_mode: str = "sliding"  # how the window counts: sliding or fixed (see LIMIT_MODES)
    ratelimit_headers: bool = True  # x-ratelimit-* on every answer when rpm or tpm is set
    retry_after: bool = True  # send Retry-After with every 429 (the OpenAI SDK gives up early without it)
    seed: int = 0
    fail_429: float = 0.0
    fault_retry_after: float = 1.0  # Retry-After of injected 429s, seconds
    fail_500: float = 0.0
    fail_503: float = 0.0
    drop: float = 0.0
    hang: float = 0.0
    hang_s: float = 3600.0
    malformed: float = 0.0
    short: float = 0.0
    poison: tuple[str, ...] = ()  # a batch with an input containing one of these gets 400
    max_body_bytes: int = 4 * 1024 * 1024
    idle_timeout_s: float = 75.0  # close a keep-alive connection idle this long
    verbose: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {self.port}")
        if self.dimensions <= 0 or self.dimensions % 8:
            raise ConfigError(f"--dimensions must be a positive multiple of 8, got {self.dimensions}")
        for name in (*FAULTS, "latency_ms", "jitter_ms", "hang_s", "fault_retry_after"):
            value = getattr(self, name)
            if value < 0 or (name in FAULTS and value > 1):
                bounds = "between 0 and 1" if name in FAULTS else "at least 0"
                raise ConfigError(f"{_flag(name)} must be {bounds}, got {value}")
        if sum(getattr(self, name) for name in FAULTS) > 1:
            raise ConfigError("the fault fractions (--fail-*, --drop, ...) add up to more than 1")
        for name in ("rpm", "tpm", "max_body_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{_flag(name)} must be at least 1, got {value}")
        for name in ("limit_window_s", "idle_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_flag(name)} must be positive, got {getattr(self, name)}")
        if self.limit_mode not in LIMIT_MODES:
            raise ConfigError(f"--limit-mode must be one of {', '.join(LIMIT_MODES)}, got {self.limit_mode!r}")
        if any(not text for text in self.poison):
            raise ConfigError("--poison needs a non-empty text")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pipeline serve`` flags to ``parser``."""
    d = ServerOptions()
    p = parser.add_argument
    p("--host", default=d.host, help=f"address to listen on (default {d.host})")
    p("--port", type=int, default=d.port, help=f"port to listen on, 0 for any free one (default {d.port})")
    p("--api-key", help="require 'Authorization: Bearer KEY' (default: no authentication)")
    p("--models", action="append", metavar="NAME[,NAME...]", help="accept only these models (404 otherwise)")
    p("--fake", action="store_true", help="deterministic fake vectors instead of the local WordLlama model")
    p("--dimensions", type=int, help=f"of --fake vectors, a multiple of 8 (default {DEFAULT_DIMENSIONS})")
    p("--shuffle", action="store_true", help="return data in a random order")
    p("--latency-ms", type=float, default=d.latency_ms, help="delay before each answer")
    p("--jitter-ms", type=float, default=d.jitter_ms, help="uniform random extra delay, 0..N ms")
    p("--rpm", type=int, help="requests allowed per window (429 past it)")
    p("--tpm", type=int, help="tokens allowed per window (429 past it)")
    p("--limit-window-s", type=float, default=d.limit_window_s,
      help=f"length of the rate-limit window, seconds (default {d.limit_window_s:g})")
    p("--limit-mode", choices=LIMIT_MODES, default=d.limit_mode,
      help="sliding: the budget holds over any window; fixed: counts start afresh at each window boundary "
      f"(default {d.limit_mode})")
    p("--ratelimit-headers", action=argparse.BooleanOptionalAction, default=d.ratelimit_headers,
      help="send x-ratelimit-* headers on every answer when --rpm or --tpm is set; "
      "--no-ratelimit-headers omits them (default: send)")
    p("--retry-after", action=argparse.BooleanOptionalAction, default=d.retry_after,
      help="send Retry-After with every 429; --no-retry-after omits it (default: send)")
    p("--seed", type=int, default=d.seed, help="seed of the fault, jitter and shuffle draws")
    fraction = "fraction of embeddings requests that"
    p("--fail-429", type=float, default=0.0, help=f"{fraction} get 429")
    p("--fault-retry-after", type=float, default=d.fault_retry_after, help="Retry-After of --fail-429, seconds")
    p("--fail-500", type=float, default=0.0, help=f"{fraction} get 500")
    p("--fail-503", type=float, default=0.0, help=f"{fraction} get 503")
    p("--drop", type=float, default=0.0, help=f"{fraction} see the connection closed without an answer")
    p("--hang", type=float, default=0.0, help=f"{fraction} wait --hang-s before being answered")
    p("--hang-s", type=float, default=d.hang_s, help="how long --hang requests wait")
    p("--malformed", type=float, default=0.0, help=f"{fraction} get 200 with a body that is not JSON")
    p("--short", type=float, default=0.0, help=f"{fraction} get 200 with one vector missing")
    p("--poison", action="append", default=[], metavar="TEXT", help="400 for batches with an input containing TEXT")
    p("--max-body-bytes", type=int, default=d.max_body_bytes, help="larger bodies get 413")
    p("--idle-timeout-s", type=float, default=d.idle_timeout_s,
      help=f"close a keep-alive connection idle this long, seconds (default {d.idle_timeout_s:g})")
    p("--verbose", action="store_true", help="log one line per request to stderr")


def options_from_args(ns: argparse.Namespace) -> ServerOptions:
    """The options the parsed flags describe; raises ConfigError when they do not fit."""
    if ns.dimensions is not None and not ns.fake:
        raise ConfigError("--dimensions applies to --fake vectors only (the local model has 256)")
    models = tuple(name.strip() for item in ns.models or () for name in item.split(",") if name.strip())
    special = ("models", "dimensions", "poison")
    values = {f.name: getattr(ns, f.name) for f in fields(ServerOptions) if f.name not in special}
    return ServerOptions(
        **values,
        models=models,
        dimensions=DEFAULT_DIMENSIONS if ns.dimensions is None else ns.dimensions,
        poison=tuple(ns.poison),
    )
