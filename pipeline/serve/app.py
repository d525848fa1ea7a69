"""HTTP for ``pipeline serve``: connections (h11 over anyio), routing, and the entry points.

Use it as ``pipeline serve`` (:func:`add_arguments`, :func:`main`), as
``python -m pipeline.serve``, or inside an event loop with :func:`serve` or
:func:`running_server`.
"""

from __future__ import annotations

import argparse
import hmac
import math
import random
import signal
import sys
import time
import traceback
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from http import HTTPStatus
from typing import Any, AsyncIterator, Callable
from urllib.parse import unquote

import anyio
import anyio.abc
import h11
import orjson

from pipeline.embed.vectors import quantize
from pipeline.errors import ConfigError
from pipeline.serve.faults import FaultDraw, status_fault_reply
from pipeline.serve.limits import Headers, rate_window
from pipeline.serve.models import FakeModel, VectorModel, WordLlamaModel, shortened
from pipeline.serve.options import ServerOptions, add_arguments, options_from_args
from pipeline.serve.protocol import (
    BadRequest,
    EmbeddingsRequest,
    Reply,
    embeddings_body,
    error_reply,
    method_not_allowed,
    model_body,
    models_list_body,
    parse_request,
    unauthorized,
)
from pipeline.serve.stats import Stats

__all__ = ["Server", "ServerOptions", "add_arguments", "main", "running_server", "serve"]

EMBEDDINGS_PATHS: tuple[bytes, ...] = (b"/v1/embeddings", b"/embeddings")
MODELS_PATHS: tuple[bytes, ...] = (b"/v1/models", b"/models")
MODEL_PREFIXES: tuple[bytes, ...] = (b"/v1/models/", b"/models/")

_JSON = (b"content-type", b"application/json")

Clock = Callable[[], float]

_CLIENT_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class Server:
    """A bound server: where it listens (``url``) and what it has answered (``stats``)."""

    def __init__(
        self, options: ServerOptions, model: VectorModel, host: str, port: int, clock: Clock = anyio.current_time
    ) -> None:
        self.options = options
        self._clock = clock  # the rate windows' time, injected so tests can step it
        self.host = host
        self.port = port
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.stats = Stats()
        self._model = model
        self._key = (options.api_key or "").encode("utf-8")
        self._window = rate_window(options.limit_mode, options.rpm, options.tpm, options.limit_window_s)
        # separate streams so that latency jitter and shuffling do not move the faults
        self._draw_fault = FaultDraw(options)
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
        request: Any = None
        try:
            # an idle keep-alive connection is closed after a while, as servers do, so that
            # clients that never hang up cannot hold thousands of sockets open
            with anyio.move_on_after(self.options.idle_timeout_s):
                request = await _next_event(conn, stream)
            if not isinstance(request, h11.Request):  # closed by the client, or idle too long
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
        await _send(conn, stream, self._with_rate_headers(reply), request.method)
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
                return method_not_allowed(b"POST")
            self.stats.requests += 1
            reply = await self._embeddings(request, body, conn, stream)
            if reply is not None and reply.status != 200:
                self.stats.responses[str(reply.status)] += 1
            return reply
        if path in MODELS_PATHS or path.startswith(MODEL_PREFIXES):
            if method != b"GET":
                return method_not_allowed(b"GET")
            return self._models(path) if self._authorized(request) else unauthorized()
        if path == b"/health":
            return Reply(200, b'{"status":"ok"}') if method == b"GET" else method_not_allowed(b"GET")
        if path == b"/stats":
            if method != b"GET":
                return method_not_allowed(b"GET")
            return Reply(200, orjson.dumps(self.stats.snapshot()))
        if path == b"/stats/reset":
            if method != b"POST":
                return method_not_allowed(b"POST")
            self.stats.reset()
            return Reply(200, orjson.dumps(self.stats.snapshot()))
        return error_reply(404, f"no route for {path.decode('ascii', 'replace')}", "not_found")

    def _models(self, path: bytes) -> Reply:
        """``GET /v1/models`` and ``GET /v1/models/{id}``, in OpenAI's shapes."""
        names = self.options.models or (self._model.name,)
        if path in MODELS_PATHS:
            return Reply(200, models_list_body(names))
        name = unquote(path.split(b"/models/", 1)[1].decode("ascii", "replace"))
        # without --models every name is served, so every name exists
        if not name or (self.options.models and name not in self.options.models):
            return error_reply(404, f"model '{name}' does not exist", "model_not_found", param="model")
        return Reply(200, model_body(name))

    async def _embeddings(
        self, http: h11.Request, body: bytes | None, conn: h11.Connection, stream: anyio.abc.ByteStream
    ) -> Reply | None:
        """Answer an embeddings request; None means: close the connection without answering.

        Records 200 answers and the connection-level faults in ``stats``; the
        caller records the other statuses.
        """
        delay_ms = self.options.latency_ms + self._rng.uniform(0, self.options.jitter_ms)
        if delay_ms > 0:
            await anyio.sleep(delay_ms / 1000)
        request = self._accept(http, body)
        if isinstance(request, Reply):
            return request
        fault = self._draw_fault()
        if (injected := status_fault_reply(fault, self.options)) is not None:
            return injected
        if fault == "drop":
            self.stats.responses["dropped"] += 1
            return None
        if fault == "hang":
            self.stats.responses["hung"] += 1
            if not await _wait_unless_closed(conn, stream, self.options.hang_s):
                return None
        tokens = sum(self._model.count_tokens(request.texts))
        admitted = self._admit(tokens)
        if isinstance(admitted, Reply):
            return admitted
        return await self._answer(request, tokens, fault, admitted)

    def _accept(self, http: h11.Request, body: bytes | None) -> EmbeddingsRequest | Reply:
        """The request, if it passes the key, size, API, model and poison checks; else their error."""
        options = self.options
        if not self._authorized(http):
            return unauthorized()
        if body is None:
            return error_reply(413, f"the body is over {options.max_body_bytes} bytes", "request_too_large")
        try:
            request = parse_request(orjson.loads(body), self._model.dimensions)
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
        return request

    def _admit(self, tokens: int) -> Headers | Reply:
        """The rate-limit headers of an admitted request, or the 429 of a refused one."""
        headers: Headers = ()
        if self._window is not None:
            verdict = self._window.admit(tokens, self._clock())
            headers = verdict.headers if self.options.ratelimit_headers else ()
            if not verdict.allowed:
                self.stats.rate_limited += 1
                if self.options.retry_after:
                    headers += ((b"retry-after", b"%d" % max(1, math.ceil(verdict.wait_s))),)
                return error_reply(
                    429, "rate limit reached; retry later", "rate_limit_exceeded",
                    type_="rate_limit_error", headers=headers,
                )
        self.stats.admitted += 1
        self.stats.admitted_tokens += tokens
        return headers

    async def _answer(self, request: EmbeddingsRequest, tokens: int, fault: str | None, headers: Headers) -> Reply:
        """The 200 answer with the request's vectors, or its ``short`` or ``malformed`` fault."""
        floats = await self._model.embed(request.texts)
        if request.dimensions is not None:
            floats = shortened(floats, request.dimensions)
        vectors = quantize(floats, request.embedding_type)
        order = list(range(len(request.texts)))
        if self.options.shuffle:
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

    def _with_rate_headers(self, reply: Reply) -> Reply:
        """``reply`` with the ``x-ratelimit-*`` headers every answer carries when limits are set."""
        if self._window is None or not self.options.ratelimit_headers:
            return reply
        if any(name.startswith(b"x-ratelimit-") for name, _ in reply.headers):
            return reply  # an admitted or refused request: its own verdict's headers
        return replace(reply, headers=reply.headers + self._window.peek(self._clock()))

    def _authorized(self, request: h11.Request) -> bool:
        """Whether the request may pass: no --api-key, or its bearer token is the key."""
        if self.options.api_key is None:
            return True
        for name, value in request.headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False


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
    options: ServerOptions,
    *,
    clock: Clock = anyio.current_time,
    task_status: anyio.abc.TaskStatus[Server] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Bind, report the :class:`Server` through ``task_status``, and serve until cancelled."""
    listener, server = await _bind(options, clock)
    async with listener:
        task_status.started(server)
        await listener.serve(server.handle_connection)


async def _bind(
    options: ServerOptions, clock: Clock = anyio.current_time
) -> tuple[anyio.abc.Listener[anyio.abc.SocketStream], Server]:
    """Load the vectors' source and open the listening socket; ConfigError when the port is taken."""
    model: VectorModel = (
        FakeModel(options.dimensions) if options.fake else await anyio.to_thread.run_sync(WordLlamaModel)
    )
    try:
        listener = await anyio.create_tcp_listener(local_host=options.host, local_port=options.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}") from exc
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    return listener, Server(options, model, options.host, port, clock)


@asynccontextmanager
async def running_server(options: ServerOptions, *, clock: Clock = anyio.current_time) -> AsyncIterator[Server]:
    """A server running in the background of the current event loop, stopped on exit.

    ``clock`` is the time its rate limits count by (the event loop's by default).
    """
    async with anyio.create_task_group() as tg:
        server = await tg.start(partial(serve, options, clock=clock))
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


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

