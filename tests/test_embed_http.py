"""pipeline.embed.http: the HTTP embedder against a real `pipeline serve` on a loopback port."""

from __future__ import annotations

import json
import random
import threading
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import AsyncIterator, Iterator

import anyio
import anyio.abc
import httpx
import numpy as np
import orjson
import pybase64
import pytest
import structlog.testing
from conftest import run_cli

from pipeline.config import EmbeddingConfig
from pipeline.embed.http import HttpEmbedder
from pipeline.embed.limits import RateLimiter
from pipeline.errors import ApiError, EndpointUnreachable, FatalApiError
from pipeline.serve.app import ServerOptions, running_server
from pipeline.types import Batch, Chunk
from pipeline.embed.vectors import DTYPES

pytestmark = pytest.mark.anyio


def chunks(n: int, prefix: str = "text") -> tuple[Chunk, ...]:
    return tuple(
        Chunk(id=f"d{i}", doc_id=f"d{i}", chunk_index=0, text=f"{prefix} number {i} ünïcødé 日本語",
              source="f.jsonl", location=i + 1, content_hash=str(i))
        for i in range(n)
    )


async def no_sleep(_: float) -> None:
    await anyio.lowlevel.checkpoint()


def embedding_config(url: str, **kw) -> EmbeddingConfig:
    return EmbeddingConfig(url=url, **kw)


async def embed(options: ServerOptions, batch: Batch, key: str | None = None, **kw):
    """Embed ``batch`` through a fresh server; FatalApiError is re-raised bare."""
    fatal: FatalApiError | None = None
    async with running_server(options) as server:
        cfg = embedding_config(server.url, **kw)
        async with HttpEmbedder(cfg, api_key=key, sleep=no_sleep, rng=random.Random(0)) as client:
            with anyio.fail_after(20):
                try:
                    result = await client.embed(batch)
                except FatalApiError as exc:
                    fatal = exc
        stats = server.stats.snapshot()
    if fatal is not None:
        raise fatal
    return result, stats


@pytest.mark.parametrize("encoding", ["raw", "base64"])
@pytest.mark.parametrize("etype,width", [("float", 64), ("int8", 64), ("uint8", 64), ("binary", 8), ("ubinary", 8)])
async def test_every_type_and_encoding(etype: str, width: int, encoding: str) -> None:
    """All five embedding types, in both encodings, decode to the right dtype and width."""
    batch = Batch(seq=0, chunks=chunks(5))
    result, _ = await embed(ServerOptions(port=0, fake=True, dimensions=64), batch,
                            embedding_type=etype, encoding_format=encoding)
    assert result.vectors.dtype == DTYPES[etype]
    assert result.vectors.shape == (5, width)
    assert result.usage.requests == 1 and result.usage.prompt_tokens > 0


async def test_vectors_follow_index_not_position() -> None:
    """With data shuffled by the server, each vector still lands on its own text."""
    batch = Batch(seq=0, chunks=chunks(96))
    plain, _ = await embed(ServerOptions(port=0, fake=True, dimensions=32), batch)
    shuffled, _ = await embed(ServerOptions(port=0, fake=True, dimensions=32, shuffle=True, seed=3), batch)
    np.testing.assert_array_equal(plain.vectors, shuffled.vectors)
    assert len({row.tobytes() for row in plain.vectors}) == 96


@pytest.mark.parametrize("fault", ["fail_500", "fail_503", "fail_429", "drop", "malformed", "short"])
async def test_transient_faults_are_retried(fault: str) -> None:
    """5xx, 429, dropped connections, malformed and short bodies are retried until they succeed."""
    options = ServerOptions(port=0, fake=True, dimensions=16, seed=1, fault_retry_after=0, **{fault: 0.5})
    result, stats = await embed(options, Batch(seq=0, chunks=chunks(4)), max_attempts=30)
    assert result.vectors.shape == (4, 16) and not result.failures
    assert result.usage.requests == stats["requests"]
    assert result.usage.retries == stats["requests"] - 1


async def test_hang_times_out_and_retries() -> None:
    """A request that hangs past timeout_s counts as a failed attempt."""
    options = ServerOptions(port=0, fake=True, dimensions=16, hang=1.0, hang_s=30)
    result, stats = await embed(options, Batch(seq=0, chunks=chunks(2)), timeout_s=0.2, max_attempts=2)
    assert not len(result.chunks) and len(result.failures) == 2
    assert {f.error_type for f in result.failures} == {"api_error"}
    assert all(f.attempts == 2 for f in result.failures)


async def test_poison_input_is_isolated() -> None:
    """A 400 for a batch is bisected until only the bad input fails; the rest are embedded."""
    batch = Batch(seq=0, chunks=chunks(10) + chunks(1, prefix="POISON"))
    result, _ = await embed(ServerOptions(port=0, fake=True, dimensions=16, poison=("POISON",)), batch)
    assert len(result.chunks) == 10
    assert [f.text for f in result.failures] == [batch.chunks[-1].text]
    assert result.failures[0].status == 400 and result.failures[0].error_type == "rejected"


async def test_rejected_key_is_fatal_and_never_echoed() -> None:
    """401 stops with FatalApiError whose message names the status but not the key."""
    with pytest.raises(FatalApiError) as info:
        await embed(ServerOptions(port=0, fake=True, api_key="right-key"), Batch(seq=0, chunks=chunks(1)),
                    key="wrong-key-123")
    assert "401" in str(info.value) and "wrong-key-123" not in str(info.value)


async def test_unknown_model_is_fatal() -> None:
    """404 for the model stops the run with a message naming the model."""
    with pytest.raises(FatalApiError, match="no-such-model"):
        await embed(ServerOptions(port=0, fake=True, models=("m1",)), Batch(seq=0, chunks=chunks(1)),
                    model="no-such-model")


async def test_unreachable_endpoint_is_fatal() -> None:
    """A refused connection on every attempt becomes a fatal 'unreachable' error."""
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()  # nothing listens there now
        cfg = embedding_config(f"http://127.0.0.1:{port}", max_attempts=2)
        async with HttpEmbedder(cfg, api_key=None, sleep=no_sleep) as client:
            with pytest.raises(EndpointUnreachable, match="unreachable"):
                await client.embed(Batch(seq=0, chunks=chunks(1)))


async def test_everything_rejected_is_fatal() -> None:
    """When the API refuses every input and never accepted one, the run stops as a config problem."""
    with pytest.raises(FatalApiError, match="rejects every input"):
        await embed(ServerOptions(port=0, fake=True, poison=("text",)), Batch(seq=0, chunks=chunks(16)))


async def test_429_slows_the_whole_client() -> None:
    """A 429 lowers the client's pace and pauses it; successes bring the pace back."""
    options = ServerOptions(port=0, fake=True, dimensions=8, fail_429=0.5, seed=5, fault_retry_after=0)
    throttled: list[int] = []

    def on_retry(exc: ApiError, attempt: int) -> None:
        if exc.status == 429:
            throttled.append(attempt)

    async with running_server(options) as server:
        cfg = embedding_config(server.url, requests_per_minute=60_000, max_attempts=20)
        limiter = RateLimiter(cfg.requests_per_minute, None)
        async with HttpEmbedder(cfg, api_key=None, limiter=limiter, sleep=no_sleep, rng=random.Random(0),
                                on_retry=on_retry) as client:
            with anyio.fail_after(20):
                for seq in range(12):
                    await client.embed(Batch(seq=seq, chunks=chunks(3)))
    assert throttled and limiter.scale < 1.0


async def test_unreachable_error_hides_the_url_userinfo() -> None:
    """A key passed in the URL (https://user:KEY@host) never appears in the unreachable error."""
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()
        cfg = embedding_config(f"http://proxyuser:SECRET-KEY-42@127.0.0.1:{port}", max_attempts=2)
        async with HttpEmbedder(cfg, api_key=None, sleep=no_sleep) as client:
            with pytest.raises(EndpointUnreachable) as info:
                await client.embed(Batch(seq=0, chunks=chunks(1)))
    message = str(info.value)
    assert f"http://***@127.0.0.1:{port}/v1/embeddings" in message and "SECRET-KEY-42" not in message


@asynccontextmanager
async def trickling_server(pause_s: float) -> AsyncIterator[str]:
    """A loopback HTTP server that answers 200 with a body sent one byte every ``pause_s`` seconds."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += await stream.receive()
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                await stream.send(head)
                for _ in range(100000):  # each byte arrives well within a per-read timeout
                    await stream.send(b" ")
                    await anyio.sleep(pause_s)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the client gave up on us

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def test_timeout_bounds_the_whole_request() -> None:
    """A server trickling its body a byte at a time times out after timeout_s, as a retryable failure."""
    async with trickling_server(pause_s=0.1) as url:
        cfg = embedding_config(url, timeout_s=1, max_attempts=2)
        async with HttpEmbedder(cfg, api_key=None, sleep=no_sleep) as client:
            with anyio.fail_after(20):
                result = await client.embed(Batch(seq=0, chunks=chunks(2)))
    assert not len(result.chunks) and [f.error_type for f in result.failures] == ["api_error", "api_error"]
    assert all(f.attempts == 2 and "timed out" in f.message for f in result.failures)


async def test_systematic_rejection_stops_after_a_handful() -> None:
    """A server refusing every input with 400 (a proxy's answer to a wrong key or model) stops the run
    within a handful of requests, naming the key and the model as likely causes."""
    options = ServerOptions(port=0, fake=True, dimensions=8, poison=("text",))
    async with running_server(options) as server:
        async with HttpEmbedder(embedding_config(server.url), api_key=None, sleep=no_sleep) as client:
            with anyio.fail_after(20), pytest.raises(FatalApiError, match="rejects every input") as info:
                await client.embed(Batch(seq=0, chunks=chunks(96)))
        requests = server.stats.snapshot()["requests"]
    assert "key" in str(info.value) and "embedding.model" in str(info.value)
    assert requests <= 6  # the batch, then one input alone and the rest, three times


async def test_one_bad_input_first_is_not_systematic() -> None:
    """A bad input at the very start of the run is isolated alone; the run goes on."""
    batch = Batch(seq=0, chunks=chunks(1, prefix="POISON") + chunks(95))
    result, _ = await embed(ServerOptions(port=0, fake=True, dimensions=16, poison=("POISON",)), batch)
    assert len(result.chunks) == 95 and [f.text for f in result.failures] == [batch.chunks[0].text]


def answer_body(request: httpx.Request, rows: np.ndarray, dtype: str = "<f4", model: str | None = None) -> bytes:
    """An answer to ``request`` carrying ``rows`` as base64 of ``dtype`` values, echoing its model."""
    sent = orjson.loads(request.content)
    data = [{"object": "embedding", "index": i, "embedding": pybase64.b64encode(row.astype(dtype).tobytes()).decode()}
            for i, row in enumerate(rows[: len(sent["input"])])]
    return orjson.dumps({"object": "list", "data": data, "model": model or sent["model"],
                         "usage": {"prompt_tokens": 4, "total_tokens": 4}})


def floats(n: int, d: int) -> np.ndarray:
    rows = np.random.default_rng(n * d).standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


async def test_non_finite_vectors_are_retried_then_failed() -> None:
    """NaN in an answer is retried like a malformed body; when it persists the rows fail, never stored."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        rows = floats(4, 16)
        if len(calls) in (1, 3, 4):  # the first batch succeeds at its second attempt; the second never
            rows[0, 0] = np.nan
        return httpx.Response(200, content=answer_body(request, rows))

    cfg = embedding_config("http://api.test", max_attempts=2)
    async with HttpEmbedder(cfg, api_key=None, sleep=no_sleep, transport=httpx.MockTransport(handler)) as client:
        retried = await client.embed(Batch(seq=0, chunks=chunks(4)))
        failed = await client.embed(Batch(seq=1, chunks=chunks(4)))
    assert retried.vectors.shape == (4, 16) and np.isfinite(retried.vectors).all()
    assert retried.usage.retries == 1 and not retried.failures
    assert not len(failed.chunks) and {f.error_type for f in failed.failures} == {"api_error"}
    assert all("not finite" in f.message and f.attempts == 2 for f in failed.failures)


def ignoring_server(request: httpx.Request) -> httpx.Response:
    """Like infinity-emb: float32 vectors of 64 dimensions whatever embedding_type or dimensions asked."""
    return httpx.Response(200, content=answer_body(request, floats(96, 64)))


@pytest.mark.parametrize("etype,encoding", [("int8", "base64"), ("binary", "base64"), ("int8", "raw"),
                                            ("ubinary", "raw")])
async def test_server_ignoring_embedding_type_stops_the_run(etype: str, encoding: str) -> None:
    """float32 answered where int8 or packed bits were asked is a FatalApiError, not vectors."""

    def handler(request: httpx.Request) -> httpx.Response:
        if encoding == "base64":
            return ignoring_server(request)
        sent = orjson.loads(request.content)
        data = [{"index": i, "embedding": row} for i, row in enumerate(floats(len(sent["input"]), 64).tolist())]
        return httpx.Response(200, json={"data": data, "model": sent["model"], "usage": {"prompt_tokens": 1}})

    cfg = embedding_config("http://api.test", embedding_type=etype, encoding_format=encoding)
    async with HttpEmbedder(cfg, api_key=None, sleep=no_sleep, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(FatalApiError, match=f"where {etype} .* due; the server seems to ignore embedding_type"):
            await client.embed(Batch(seq=0, chunks=chunks(8)))


async def test_server_ignoring_dimensions_stops_the_run() -> None:
    """embedding.dimensions: 32 answered with 64-wide vectors is a FatalApiError naming both widths."""
    cfg = embedding_config("http://api.test", dimensions=32)
    transport = httpx.MockTransport(ignoring_server)
    async with HttpEmbedder(cfg, api_key=None, sleep=no_sleep, transport=transport) as client:
        assert client.dimensions == 32
        with pytest.raises(FatalApiError, match="256 bytes where 128 are due .*embedding.dimensions: 32"):
            await client.embed(Batch(seq=0, chunks=chunks(4)))


@contextmanager
def float32_server() -> Iterator[str]:
    """A loopback HTTP server answering float32 base64 vectors whatever was asked; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            content = self.rfile.read(int(self.headers["Content-Length"]))
            reply = answer_body(httpx.Request("POST", "http://x", content=content), floats(96, 64))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_run_against_a_server_ignoring_embedding_type_exits_3_and_writes_nothing(tmp_path: Path) -> None:
    """`pipeline run` with embedding_type: int8 against a float32-only server exits 3, writing no row."""
    (tmp_path / "in").mkdir()
    lines = [json.dumps({"id": f"r{i}", "text": f"record number {i}"}) for i in range(50)]
    (tmp_path / "in" / "docs.jsonl").write_text("\n".join(lines) + "\n")
    with float32_server() as url:
        job = tmp_path / "job.yaml"
        job.write_text(f"source:\n  path: {tmp_path / 'in'}\nembedding:\n  url: {url}\n  embedding_type: int8\n"
                       f"sink:\n  path: {tmp_path / 'out'}\nlogging:\n  format: logfmt\n")
        result = run_cli("run", str(job))
    assert result.returncode == 3, result.stderr
    assert "where int8 values are due" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("data/*"))


async def test_reported_model_is_kept_and_a_difference_warned_once() -> None:
    """The model the server says answered is exposed; one warning when it differs from embedding.model."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=answer_body(request, floats(96, 16), model="other-model-v2"))

    cfg = embedding_config("http://api.test", model="my-model")
    with structlog.testing.capture_logs() as logs:
        async with HttpEmbedder(cfg, api_key=None, transport=httpx.MockTransport(handler)) as client:
            assert client.reported_model is None
            for seq in range(3):
                await client.embed(Batch(seq=seq, chunks=chunks(2)))
    assert client.reported_model == "other-model-v2"
    warned = [e for e in logs if e["event"] == "model_differs"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"
    assert (warned[0]["configured"], warned[0]["reported"]) == ("my-model", "other-model-v2")


async def test_reported_model_from_pipeline_serve() -> None:
    """Against pipeline serve, which echoes the model, the reported model is the configured one."""
    async with running_server(ServerOptions(port=0, fake=True, dimensions=8)) as server:
        cfg = embedding_config(server.url, model="m-echo")
        with structlog.testing.capture_logs() as logs:
            async with HttpEmbedder(cfg, api_key=None) as client:
                await client.embed(Batch(seq=0, chunks=chunks(2)))
    assert client.reported_model == "m-echo" and not [e for e in logs if e["event"] == "model_differs"]
