"""The local embeddings API (``pipeline serve``).

Speaks the API of SPEC.md ("The embeddings API it targets") on a TCP port,
with vectors from the local WordLlama model or deterministic fake vectors,
optional rate limits, and injected faults. It is what the HTTP client is
tested and benchmarked against, and a stand-in endpoint for development.

Use it as ``pipeline serve`` (:func:`add_arguments`, :func:`main`), as
``python -m pipeline.server``, or inside an event loop with :func:`serve` or
:func:`running_server`.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import math
import random
import signal
import sys
import time
import traceback
from collections import Counter, deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from typing import Any, AsyncIterator, Protocol

import anyio
import anyio.abc
import h11
import numpy as np
import orjson

from pipeline.config import MAX_BATCH, MAX_CHARS
from pipeline.errors import ConfigError
from pipeline.embed.local import shared_model
from pipeline.embed.vectors import EMBEDDING_TYPES, encode_base64, quantize

INPUT_TYPES: tuple[str, ...] = ("search_document", "search_query", "classification", "clustering")
ENCODING_FORMATS: tuple[str, ...] = ("raw", "base64")
EMBEDDINGS_PATHS: tuple[bytes, ...] = (b"/v1/embeddings", b"/embeddings")

_KNOWN_FIELDS = frozenset(
    {"model", "input", "input_type", "encoding_format", "embedding_type", "allow_ignored_params"}
)
# OpenAI SDKs send these on every request; rejecting them would break those clients.
_TOLERATED_FIELDS = frozenset({"dimensions", "user"})

#: fault switches in the order their fractions are stacked on one random draw
FAULTS: tuple[str, ...] = ("fail_429", "fail_500", "fail_503", "drop", "hang", "malformed", "short")

DEFAULT_DIMENSIONS = 1024

_JSON = (b"content-type", b"application/json")


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
    retry_after: bool = False  # send Retry-After with rate-limit 429s
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
        if self.limit_window_s <= 0:
            raise ConfigError(f"--limit-window-s must be positive, got {self.limit_window_s}")
        if any(not text for text in self.poison):
            raise ConfigError("--poison needs a non-empty text")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- vectors ---------------------------------------------------------------


class Embedder(Protocol):
    """Where vectors and token counts come from."""

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text, as reported in ``usage``."""

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Float32 vectors, one row per text."""


def text_digest(text: str) -> bytes:
    """An 8-byte hash of a text: the seed of its fake vector, its identity in stats."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


class FakeEmbedder:
    """Deterministic unit vectors: the same text always gets the same vector."""

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self._offsets = np.arange(1, dimensions + 1, dtype=np.uint64) * _GOLDEN

    def count_tokens(self, texts: list[str]) -> list[int]:
        """About four UTF-8 bytes a token, at least one."""
        return [max(1, (len(text.encode("utf-8")) + 3) // 4) for text in texts]

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Vectors from the SplitMix64 stream seeded by each text's digest."""
        seeds = np.frombuffer(b"".join(map(text_digest, texts)), dtype="<u8")
        # SplitMix64 finaliser over seed + i·golden: one vectorised pass for the batch
        x = seeds[:, None] + self._offsets
        x ^= x >> np.uint64(30)
        x *= _MIX1
        x ^= x >> np.uint64(27)
        x *= _MIX2
        x ^= x >> np.uint64(31)
        vectors = (x >> np.uint64(40)).astype(np.float32)  # 24 bits: exact in float32
        vectors *= np.float32(2.0**-23)
        vectors -= np.float32(1.0)  # uniform in [-1, 1)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors


class LocalModelEmbedder:
    """The wordllama model of ``provider: local`` (256 dimensions), served."""

    def __init__(self) -> None:
        self._model = shared_model()

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens as the model's tokenizer counts them, at least one."""
        return self._model.count_tokens(texts)

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-normalised model vectors, computed in a worker thread."""
        return await anyio.to_thread.run_sync(self._model.vectors, texts)


# --- rate limits -----------------------------------------------------------


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


# --- counters --------------------------------------------------------------


@dataclass
class Stats:
    """Counters of embeddings requests, served as ``GET /stats``.

    ``responses`` counts answers by status code, with ``dropped``, ``hung``,
    ``malformed`` and ``short`` for those faults (a hung request that is
    answered after all is counted again under its answer). The ``inputs``
    and token counters cover complete 200 answers only.
    """

    requests: int = 0
    responses: Counter[str] = field(default_factory=Counter)
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
        self.responses.clear()
        self._seen.clear()


# --- requests and replies --------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """A validated ``POST /v1/embeddings`` body."""

    model: str
    texts: list[str]
    input_type: str | None
    encoding_format: str
    embedding_type: str


class BadRequest(Exception):
    """The request body breaks a rule of the API (answered 400)."""

    def __init__(self, message: str, param: str | None, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def parse_request(payload: Any) -> EmbeddingsRequest:
    """Validate a decoded JSON body against the API's rules; raises :class:`BadRequest`."""
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object", None, "invalid_type")
    allow_ignored = payload.get("allow_ignored_params")
    if allow_ignored is not None and not isinstance(allow_ignored, bool):
        raise BadRequest("'allow_ignored_params' must be a boolean", "allow_ignored_params", "invalid_type")
    if not allow_ignored:
        for name in payload:
            if name not in _KNOWN_FIELDS and name not in _TOLERATED_FIELDS:
                raise BadRequest(
                    f"unknown parameter '{name}' (set allow_ignored_params to ignore it)",
                    name,
                    "unknown_parameter",
                )
    model = payload.get("model")
    if model is None:
        raise BadRequest("'model' is required", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string", "model", "invalid_type")
    return EmbeddingsRequest(
        model=model,
        texts=_parse_input(payload.get("input")),
        input_type=_one_of(payload, "input_type", INPUT_TYPES, None),
        encoding_format=_one_of(payload, "encoding_format", ENCODING_FORMATS, "raw"),
        embedding_type=_one_of(payload, "embedding_type", EMBEDDING_TYPES, "float"),
    )


def _parse_input(value: Any) -> list[str]:
    if value is None:
        raise BadRequest("'input' is required", "input", "missing_required_parameter")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise BadRequest("'input' must be a string or a non-empty array of strings", "input", "invalid_type")
    if len(texts) > MAX_BATCH:
        raise BadRequest(
            f"'input' has {len(texts)} items; at most {MAX_BATCH} are allowed", "input", "too_many_inputs"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadRequest(f"input {i} is not a string", "input", "invalid_type")
        if not text:
            raise BadRequest(f"input {i} is empty", "input", "invalid_value")
        if len(text) > MAX_CHARS:
            raise BadRequest(
                f"input {i} has {len(text)} characters; at most {MAX_CHARS} are allowed",
                "input",
                "input_too_long",
            )
    return texts


def _one_of(payload: dict, name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    value = payload.get(name)
    if value is None:
        return default
    if value not in allowed:
        raise BadRequest(
            f"'{name}' must be one of {', '.join(allowed)}; got {orjson.dumps(value).decode()}",
            name,
            "invalid_value",
        )
    return value


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: status, JSON body, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


def error_reply(
    status: int,
    message: str,
    code: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Reply:
    """An OpenAI-style error answer."""
    error = {"message": message, "type": type_, "param": param, "code": code}
    return Reply(status, orjson.dumps({"error": error}), headers)


def embeddings_body(
    vectors: np.ndarray, request: EmbeddingsRequest, order: list[int], tokens: int
) -> bytes:
    """The JSON answer carrying ``vectors`` (already quantised) at the indices in ``order``."""
    if request.encoding_format == "base64":
        items: list[Any] = encode_base64(vectors, request.embedding_type)
    else:
        items = list(vectors)  # numpy rows; orjson writes them as JSON numbers
    data = [{"object": "embedding", "index": i, "embedding": items[i]} for i in order]
    body = {
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


# --- the server ------------------------------------------------------------

_CLIENT_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class Server:
    """A bound server: where it listens (``url``) and what it has answered (``stats``)."""

    def __init__(self, options: ServerOptions, embedder: Embedder, host: str, port: int) -> None:
        self.options = options
        self.host = host
        self.port = port
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.stats = Stats()
        self._embedder = embedder
        self._key = (options.api_key or "").encode("utf-8")
        self._window = (
            RateWindow(options.rpm, options.tpm, options.limit_window_s)
            if options.rpm is not None or options.tpm is not None
            else None
        )
        # separate streams so that latency jitter and shuffling do not move the faults
        self._fault_rng = random.Random(options.seed)
        self._rng = random.Random(options.seed + 1)

    async def handle_connection(self, stream: anyio.abc.ByteStream) -> None:
        """Answer the requests of one connection until either side closes it."""
        conn = h11.Connection(h11.SERVER)
        async with stream:
            try:
                while await self._handle_request(conn, stream):
                    conn.start_next_cycle()
            except _CLIENT_GONE:
                pass

    async def _handle_request(self, conn: h11.Connection, stream: anyio.abc.ByteStream) -> bool:
        """Read and answer one request; whether the connection can carry another."""
        try:
            request = await _next_event(conn, stream)
            if isinstance(request, h11.ConnectionClosed):
                return False
            body = await self._read_body(conn, stream)
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                reply = error_reply(exc.error_status_hint, f"malformed HTTP request: {exc}", "bad_http")
                await _send(conn, stream, reply, b"")
            return False
        started = time.perf_counter()
        try:
            reply = await self._route(request, body, conn, stream)
        except Exception:  # a bug here must not take the other connections down with it
            traceback.print_exc()
            reply = error_reply(500, "internal server error", "internal_error", type_="server_error")
        if self.options.verbose:
            status = reply.status if reply is not None else "closed"
            elapsed_ms = (time.perf_counter() - started) * 1000
            target = request.target.decode("ascii", "replace")
            print(f"{request.method.decode()} {target} {status} {elapsed_ms:.1f}ms", file=sys.stderr)
        if reply is None:
            return False
        await _send(conn, stream, reply, request.method)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _read_body(self, conn: h11.Connection, stream: anyio.abc.ByteStream) -> bytes | None:
        """The request body, or None when it is over the size limit (read and dropped)."""
        if conn.they_are_waiting_for_100_continue:
            await stream.send(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks: list[bytes] = []
        size = 0
        while not isinstance(event := await _next_event(conn, stream), h11.EndOfMessage):
            size += len(event.data)
            if size <= self.options.max_body_bytes:
                chunks.append(event.data)
        # read to the end anyway, so that the client sees the 413 and the connection stays usable
        return b"".join(chunks) if size <= self.options.max_body_bytes else None

    async def _route(
        self, request: h11.Request, body: bytes | None, conn: h11.Connection, stream: anyio.abc.ByteStream
    ) -> Reply | None:
        path = request.target.split(b"?", 1)[0]
        method = request.method
        if path in EMBEDDINGS_PATHS:
            if method != b"POST":
                return _method_not_allowed(b"POST")
            self.stats.requests += 1
            reply = await self._embeddings(request, body, conn, stream)
            if reply is not None and reply.status != 200:
                self.stats.responses[str(reply.status)] += 1
            return reply
        if path == b"/health":
            return Reply(200, b'{"status":"ok"}') if method == b"GET" else _method_not_allowed(b"GET")
        if path == b"/stats":
            if method != b"GET":
                return _method_not_allowed(b"GET")
            return Reply(200, orjson.dumps(self.stats.snapshot()))
        if path == b"/stats/reset":
            if method != b"POST":
                return _method_not_allowed(b"POST")
            self.stats.reset()
            return Reply(200, orjson.dumps(self.stats.snapshot()))
        return error_reply(404, f"no route for {path.decode('ascii', 'replace')}", "not_found")

    async def _embeddings(
        self, http: h11.Request, body: bytes | None, conn: h11.Connection, stream: anyio.abc.ByteStream
    ) -> Reply | None:
        """Answer an embeddings request; None means: close the connection without answering.

        Records 200 answers and the connection-level faults in ``stats``; the
        caller records the other statuses.
        """
        options = self.options
        delay_ms = options.latency_ms + self._rng.uniform(0, options.jitter_ms)
        if delay_ms > 0:
            await anyio.sleep(delay_ms / 1000)
        if options.api_key is not None and not self._authorized(http):
            challenge = ((b"www-authenticate", b"Bearer"),)
            return error_reply(401, "invalid or missing API key", "invalid_api_key", headers=challenge)
        if body is None:
            return error_reply(413, f"the body is over {options.max_body_bytes} bytes", "request_too_large")
        try:
            request = parse_request(orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            return error_reply(400, f"the body is not valid JSON: {exc}", "invalid_json")
        except BadRequest as exc:
            return error_reply(400, exc.message, exc.code, param=exc.param)
        if options.models and request.model not in options.models:
            message = f"model '{request.model}' does not exist"
            return error_reply(404, message, "model_not_found", param="model")
        for i, text in enumerate(request.texts):
            if any(poison in text for poison in options.poison):
                message = f"input {i} contains a forbidden token"
                return error_reply(400, message, "forbidden_input", param="input")

        fault = self._draw_fault()
        if fault == "fail_429":
            retry_after = f"{options.fault_retry_after:g}".encode()
            return error_reply(
                429, "injected rate limit", "rate_limit_exceeded", type_="rate_limit_error",
                headers=((b"retry-after", retry_after),),
            )
        if fault == "fail_500":
            return error_reply(500, "injected server error", "internal_error", type_="server_error")
        if fault == "fail_503":
            return error_reply(503, "injected overload", "service_unavailable", type_="server_error")
        if fault == "drop":
            self.stats.responses["dropped"] += 1
            return None
        if fault == "hang":
            self.stats.responses["hung"] += 1
            if not await _wait_unless_closed(conn, stream, options.hang_s):
                return None

        tokens = sum(self._embedder.count_tokens(request.texts))
        headers: tuple[tuple[bytes, bytes], ...] = ()
        if self._window is not None:
            verdict = self._window.admit(tokens, anyio.current_time())
            headers = verdict.headers
            if not verdict.allowed:
                if options.retry_after:
                    headers += ((b"retry-after", b"%d" % max(1, math.ceil(verdict.wait_s))),)
                return error_reply(
                    429, "rate limit reached; retry later", "rate_limit_exceeded",
                    type_="rate_limit_error", headers=headers,
                )

        floats = await self._embedder.embed(request.texts)
        vectors = quantize(floats, request.embedding_type)
        order = list(range(len(request.texts)))
        if options.shuffle:
            self._rng.shuffle(order)
        if fault == "short":
            self.stats.responses["short"] += 1
            return Reply(200, embeddings_body(vectors, request, order[:-1], tokens), headers)
        answer = embeddings_body(vectors, request, order, tokens)
        if fault == "malformed":
            self.stats.responses["malformed"] += 1
            # a proper prefix of a JSON object is never valid JSON
            return Reply(200, answer[: len(answer) // 2], headers)
        self.stats.responses["200"] += 1
        self.stats.record_embedded(request.texts, tokens)
        return Reply(200, answer, headers)

    def _authorized(self, request: h11.Request) -> bool:
        for name, value in request.headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False

    def _draw_fault(self) -> str | None:
        """One seeded draw per request; each fault owns a slice of [0, 1) as wide as its fraction."""
        draw = self._fault_rng.random()
        edge = 0.0
        for name in FAULTS:
            edge += getattr(self.options, name)
            if draw < edge:
                return name
        return None


def _method_not_allowed(allowed: bytes) -> Reply:
    return error_reply(405, "method not allowed", "method_not_allowed", headers=((b"allow", allowed),))


async def _next_event(conn: h11.Connection, stream: anyio.abc.ByteStream) -> Any:
    """The next h11 event, reading from the stream as needed."""
    while (event := conn.next_event()) is h11.NEED_DATA:
        try:
            data = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            data = b""  # h11 turns this into ConnectionClosed or a protocol error
        conn.receive_data(data)
    return event


async def _wait_unless_closed(conn: h11.Connection, stream: anyio.abc.ByteStream, seconds: float) -> bool:
    """Wait ``seconds``; False as soon as the client closes the connection."""
    # watching the socket frees a hung request's resources when the client gives up
    with anyio.move_on_after(seconds):
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return False
            conn.receive_data(data)  # a pipelined request: h11 keeps it for the next cycle
    return True


async def _send(conn: h11.Connection, stream: anyio.abc.ByteStream, reply: Reply, method: bytes) -> None:
    headers = [_JSON, (b"content-length", b"%d" % len(reply.body)), *reply.headers]
    reason = HTTPStatus(reply.status).phrase.encode()
    chunks = [conn.send(h11.Response(status_code=reply.status, headers=headers, reason=reason))]
    if reply.body and method != b"HEAD":
        chunks += conn.send_with_data_passthrough(h11.Data(data=reply.body))
    chunks.append(conn.send(h11.EndOfMessage()))
    await stream.send(b"".join(chunks))


# --- entry points ----------------------------------------------------------


async def serve(
    options: ServerOptions, *, task_status: anyio.abc.TaskStatus[Server] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Bind, report the :class:`Server` through ``task_status``, and serve until cancelled."""
    listener, server = await _bind(options)
    async with listener:
        task_status.started(server)
        await listener.serve(server.handle_connection)


async def _bind(options: ServerOptions) -> tuple[anyio.abc.Listener[anyio.abc.SocketStream], Server]:
    """Load the vectors' source and open the listening socket; ConfigError when the port is taken."""
    embedder: Embedder = (
        FakeEmbedder(options.dimensions) if options.fake else await anyio.to_thread.run_sync(LocalModelEmbedder)
    )
    try:
        listener = await anyio.create_tcp_listener(local_host=options.host, local_port=options.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}") from exc
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    return listener, Server(options, embedder, options.host, port)


@asynccontextmanager
async def running_server(options: ServerOptions) -> AsyncIterator[Server]:
    """A server running in the background of the current event loop, stopped on exit."""
    async with anyio.create_task_group() as tg:
        server = await tg.start(serve, options)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


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
    p("--limit-window-s", type=float, default=d.limit_window_s, help="length of the sliding rate-limit window")
    p("--retry-after", action="store_true", help="send Retry-After with rate-limit 429s")
    p("--seed", type=int, default=d.seed, help="seed of the fault, jitter and shuffle draws")
    fraction = "fraction of embeddings requests that"
    p("--fail-429", type=float, default=0.0, help=f"{fraction} get 429 with Retry-After")
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


def main(ns: argparse.Namespace) -> int:
    """Run ``pipeline serve`` until SIGINT or SIGTERM; the exit code.

    Raises ConfigError for bad flags or a port that cannot be bound.
    """
    anyio.run(_serve_until_signal, options_from_args(ns))
    return 0


async def _serve_until_signal(options: ServerOptions) -> None:
    # the handlers are in place before the listening line, so a signal sent on seeing it ends cleanly
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        listener, server = await _bind(options)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, server.handle_connection)
            print(f"pipeline serve listening on {server.url}", flush=True)
            async for _ in signals:
                break
            tg.cancel_scope.cancel()

