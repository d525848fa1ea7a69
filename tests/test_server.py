"""The local embeddings API (`pipeline serve`) on a loopback port."""

from __future__ import annotations

import argparse
import base64
import re
import signal
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import h11
import httpx
import numpy as np
import orjson
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from pipeline.errors import ConfigError
from pipeline.serve.app import (
    RateWindow,
    Server,
    ServerOptions,
    add_arguments,
    format_reset,
    options_from_args,
    running_server,
)
from pipeline.embed.vectors import DTYPES, EMBEDDING_TYPES, decode_base64, decode_raw, quantize, width

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio (the backend production uses)."""
    return "asyncio"


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    """A fake-vector server with ``options`` and a client pointed at it."""
    settings = {"port": 0, "fake": True, "dimensions": 64, **options}
    async with running_server(ServerOptions(**settings)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            with anyio.fail_after(20):
                yield server, client


async def post(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/embeddings", json={"model": "m", **body})


def vectors(response: httpx.Response, embedding_type: str = "float") -> np.ndarray:
    """The answer's vectors, in input order."""
    data = sorted(response.json()["data"], key=lambda item: item["index"])
    items = [item["embedding"] for item in data]
    if isinstance(items[0], str):
        return decode_base64(items, embedding_type)
    return decode_raw(items, embedding_type)


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and isinstance(error["code"], str)
    return error


# --- answers ---------------------------------------------------------------


@pytest.mark.parametrize("encoding_format", ["raw", "base64"])
@pytest.mark.parametrize("embedding_type", EMBEDDING_TYPES)
async def test_every_type_and_encoding_decodes(embedding_type: str, encoding_format: str) -> None:
    """Each embedding type in each encoding decodes to its dtype and width; equal texts, equal vectors."""
    async with serving() as (_, client):
        response = await post(
            client, input=["alpha", "beta", "alpha"], embedding_type=embedding_type, encoding_format=encoding_format
        )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == "m"
    assert [item["object"] for item in body["data"]] == ["embedding"] * 3
    matrix = vectors(response, embedding_type)
    assert matrix.dtype == DTYPES[embedding_type]
    assert matrix.shape == (3, width(embedding_type, 64))
    np.testing.assert_array_equal(matrix[0], matrix[2])
    assert not np.array_equal(matrix[0], matrix[1])


async def test_base64_is_little_endian_float32() -> None:
    """base64 float vectors are the little-endian float32 bytes of the raw vectors."""
    async with serving() as (_, client):
        raw = await post(client, input="some text")
        b64 = await post(client, input="some text", encoding_format="base64")
    packed = base64.b64decode(b64.json()["data"][0]["embedding"])
    np.testing.assert_array_equal(np.frombuffer(packed, "<f4"), np.asarray(raw.json()["data"][0]["embedding"], "<f4"))


async def test_types_quantise_the_same_unit_vector() -> None:
    """Fake float vectors are unit length and every other type is their quantisation."""
    async with serving() as (_, client):
        floats = vectors(await post(client, input=["x", "y"]))
        np.testing.assert_allclose(np.linalg.norm(floats, axis=1), 1.0, rtol=1e-5)
        for embedding_type in EMBEDDING_TYPES[1:]:
            answer = await post(client, input=["x", "y"], embedding_type=embedding_type, encoding_format="base64")
            np.testing.assert_array_equal(vectors(answer, embedding_type), quantize(floats, embedding_type))


async def test_same_text_same_vector_across_requests_and_servers() -> None:
    """A text's fake vector depends on the text only, not on its batch, position or server."""
    async with serving() as (_, client):
        first = vectors(await post(client, input=["one", "two"]))
        second = vectors(await post(client, input=["zero", "two", "one"]))
    async with serving(seed=9) as (_, client):
        third = vectors(await post(client, input="one"))
    np.testing.assert_array_equal(first[0], second[2])
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[0], third[0])


async def test_usage_counts_tokens_per_input() -> None:
    """Usage sums about one token per four UTF-8 bytes, at least one per input."""
    async with serving() as (_, client):
        response = await post(client, input=["a", "x" * 9, "é" * 4])
    assert response.json()["usage"] == {"prompt_tokens": 1 + 3 + 2, "total_tokens": 6}


async def test_local_model() -> None:
    """Without --fake the bundled WordLlama model answers with 256-dimensional unit vectors."""
    async with running_server(ServerOptions(port=0)) as server, httpx.AsyncClient(base_url=server.url) as client:
        with anyio.fail_after(30):
            response = await post(client, input=["the cat sat", "the cat sat", "stock markets fell"])
    matrix = vectors(response)
    assert matrix.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(matrix[0], matrix[1])
    assert response.json()["usage"]["prompt_tokens"] > 3


async def test_bare_embeddings_path_and_health() -> None:
    """``/embeddings`` works like ``/v1/embeddings``, and ``/health`` answers 200."""
    async with serving() as (_, client):
        assert (await client.post("/embeddings", json={"model": "m", "input": "hi"})).status_code == 200
        assert (await client.get("/health")).status_code == 200


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    """One TCP connection carries request after request."""
    async with serving() as (server, _):
        with anyio.fail_after(10):
            async with await anyio.connect_tcp(server.host, server.port) as stream:
                conn = h11.Connection(h11.CLIENT)
                for text in ("first", "second", "third"):
                    body = orjson.dumps({"model": "m", "input": text})
                    headers = [("host", "x"), ("content-type", "application/json"), ("content-length", str(len(body)))]
                    await stream.send(
                        conn.send(h11.Request(method="POST", target="/v1/embeddings", headers=headers))
                        + conn.send(h11.Data(data=body))
                        + conn.send(h11.EndOfMessage())
                    )
                    events = []
                    while not events or not isinstance(events[-1], h11.EndOfMessage):
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            conn.receive_data(await stream.receive())
                        else:
                            events.append(event)
                    assert events[0].status_code == 200
                    conn.start_next_cycle()
        assert server.stats.snapshot()["responses"] == {"200": 3}


# --- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"model": "m", "input": ["t"] * 97}, id="97 inputs"),
        pytest.param({"model": "m", "input": ["x" * 2049]}, id="2049 characters"),
        pytest.param({"model": "m", "input": ""}, id="empty string"),
        pytest.param({"model": "m", "input": ["ok", ""]}, id="empty item"),
        pytest.param({"model": "m", "input": []}, id="empty array"),
        pytest.param({"model": "m", "input": ["ok", 3]}, id="non-string item"),
        pytest.param({"model": "m"}, id="no input"),
        pytest.param({"input": "hi"}, id="no model"),
        pytest.param({"model": 5, "input": "hi"}, id="model not a string"),
        pytest.param({"model": "m", "input": "hi", "embedding_type": "float16"}, id="bad embedding_type"),
        pytest.param({"model": "m", "input": "hi", "encoding_format": "float"}, id="bad encoding_format"),
        pytest.param({"model": "m", "input": "hi", "input_type": "query"}, id="bad input_type"),
        pytest.param({"model": "m", "input": "hi", "allow_ignored_params": "yes"}, id="non-bool allow_ignored_params"),
        pytest.param({"model": "m", "input": "hi", "truncate": "END"}, id="unknown field"),
        pytest.param(["m", "hi"], id="not an object"),
    ],
)
async def test_invalid_bodies_get_400(body: Any) -> None:
    """Every rule of the API's request table is enforced with a 400 and an OpenAI error body."""
    async with serving() as (_, client):
        response = await client.post("/v1/embeddings", json=body)
    assert assert_openai_error(response, 400)["type"] == "invalid_request_error"


async def test_body_that_is_not_json_gets_400() -> None:
    """A body that is not JSON gets 400."""
    async with serving() as (_, client):
        response = await client.post("/v1/embeddings", content=b"{not json")
    assert_openai_error(response, 400)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"input": ["x" * 2048] * 96}, id="96 inputs of 2048 characters"),
        pytest.param({"truncate": "END", "allow_ignored_params": True}, id="allow_ignored_params"),
        pytest.param({"dimensions": 64, "user": "u1"}, id="OpenAI SDK fields"),
        pytest.param({"input_type": None, "encoding_format": None, "embedding_type": None}, id="nulls"),
        pytest.param({"input_type": "search_query"}, id="input_type"),
    ],
)
async def test_valid_edge_bodies_get_200(extra: dict) -> None:
    """Limits are inclusive, allow_ignored_params admits unknown fields, OpenAI's extras pass."""
    async with serving() as (_, client):
        response = await client.post("/v1/embeddings", json={"model": "m", "input": "hi", **extra})
    assert response.status_code == 200


async def test_api_key() -> None:
    """With --api-key, a missing or wrong bearer token gets 401 whose body never shows the key."""
    async with serving(api_key="s3cret-key") as (_, client):
        missing = await post(client, input="hi")
        wrong = await client.post(
            "/v1/embeddings", json={"model": "m", "input": "hi"}, headers={"Authorization": "Bearer nope"}
        )
        right = await client.post(
            "/v1/embeddings", json={"model": "m", "input": "hi"}, headers={"Authorization": "Bearer s3cret-key"}
        )
    for response in (missing, wrong):
        assert_openai_error(response, 401)
        assert b"s3cret" not in response.content
    assert right.status_code == 200


async def test_unknown_model_path_and_method() -> None:
    """Unknown models (with --models), unknown paths and wrong methods get 404, 404 and 405."""
    async with serving(models=("m", "other")) as (_, client):
        assert (await post(client, input="hi")).status_code == 200
        unknown = await client.post("/v1/embeddings", json={"model": "nope", "input": "hi"})
        assert assert_openai_error(unknown, 404)["param"] == "model"
        assert_openai_error(await client.get("/v1/nothing"), 404)
        assert_openai_error(await client.get("/v1/embeddings"), 405)


async def test_body_over_limit_gets_413_and_connection_survives() -> None:
    """A body over the size limit gets 413, and the next request is still answered."""
    async with serving(max_body_bytes=1000) as (_, client):
        assert_openai_error(await post(client, input="x" * 2000), 413)
        assert (await post(client, input="small")).status_code == 200


async def test_poison_rejects_the_whole_batch_naming_the_input() -> None:
    """A batch with an input containing a poison text gets 400 naming the input; others pass."""
    async with serving(poison=("BAD",)) as (_, client):
        rejected = await post(client, input=["a", "b", "c", "a BAD one", "e"])
        assert (await post(client, input=["a", "b"])).status_code == 200
    assert assert_openai_error(rejected, 400)["message"] == "input 3 contains a forbidden token"


# --- order, faults and limits ------------------------------------------------


async def test_shuffle_keeps_index_mapping() -> None:
    """With --shuffle, data comes out of order but each index still names its input's vector."""
    texts = [f"text {i}" for i in range(40)]
    async with serving() as (_, client):
        plain = vectors(await post(client, input=texts))
    async with serving(shuffle=True, seed=5) as (_, client):
        response = await post(client, input=texts)
    assert [item["index"] for item in response.json()["data"]] != list(range(40))
    np.testing.assert_array_equal(vectors(response), plain)


@pytest.mark.parametrize("fault,status", [("fail_429", 429), ("fail_500", 500), ("fail_503", 503)])
async def test_status_faults(fault: str, status: int) -> None:
    """--fail-429/500/503 at 1.0 answer every request with that status; 429 carries Retry-After."""
    async with serving(**{fault: 1.0, "fault_retry_after": 0.5}) as (server, client):
        response = await post(client, input="hi")
    assert_openai_error(response, status)
    assert response.headers.get("retry-after") == ("0.5" if status == 429 else None)
    assert server.stats.snapshot()["responses"] == {str(status): 1}


async def test_drop_closes_without_answer() -> None:
    """--drop closes the connection without sending any response."""
    async with serving(drop=1.0) as (server, client):
        with pytest.raises(httpx.RemoteProtocolError):
            await post(client, input="hi")
    assert server.stats.snapshot()["responses"] == {"dropped": 1}


async def test_hang_outlasts_the_client_timeout() -> None:
    """--hang keeps the request unanswered past the client's timeout."""
    async with serving(hang=1.0, hang_s=60) as (server, client):
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/embeddings", json={"model": "m", "input": "hi"}, timeout=0.3)
    assert server.stats.snapshot()["responses"] == {"hung": 1}


async def test_hang_is_answered_after_hang_s() -> None:
    """A hung request is answered normally once --hang-s has passed."""
    async with serving(hang=1.0, hang_s=0.2) as (server, client):
        started = anyio.current_time()
        response = await post(client, input="hi")
        assert anyio.current_time() - started >= 0.2
    assert response.status_code == 200
    assert server.stats.snapshot()["responses"] == {"hung": 1, "200": 1}


async def test_malformed_body() -> None:
    """--malformed answers 200 with a body that is not JSON."""
    async with serving(malformed=1.0) as (server, client):
        response = await post(client, input=["a", "b"])
    assert response.status_code == 200
    with pytest.raises(ValueError):
        orjson.loads(response.content)
    assert server.stats.snapshot()["inputs_embedded"] == 0


async def test_short_body() -> None:
    """--short answers 200 with one vector fewer than inputs."""
    async with serving(short=1.0) as (_, client):
        response = await post(client, input=["a", "b", "c"])
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2


async def test_faults_follow_their_fractions() -> None:
    """Fractions below 1 fault about that share of requests, the same ones for the same seed."""

    async def statuses(seed: int) -> list[int]:
        async with serving(fail_500=0.25, fail_503=0.25, seed=seed) as (_, client):
            return [(await post(client, input="hi")).status_code for _ in range(200)]

    first = await statuses(1)
    assert first == await statuses(1)
    assert 30 < first.count(500) < 70 and 30 < first.count(503) < 70


async def test_rate_limit_429_with_headers() -> None:
    """Past --rpm the server answers 429 with x-ratelimit headers; successes carry them too."""
    reset = re.compile(r"^\d+(\.\d{1,3})?s$")
    async with serving(rpm=2, tpm=1000) as (_, client):
        first, second, third = [await post(client, input="hello") for _ in range(3)]
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - 4)
    assert_openai_error(third, 429)
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-ratelimit-limit-tokens"] == "1000"
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        assert reset.match(third.headers[name])
    assert float(third.headers["x-ratelimit-reset-requests"][:-1]) > 50
    assert "retry-after" not in third.headers


async def test_rate_limit_retry_after_on_request() -> None:
    """With --retry-after, rate-limit 429s carry Retry-After in whole seconds."""
    async with serving(tpm=5, limit_window_s=30, retry_after=True) as (_, client):
        assert (await post(client, input="x" * 16)).status_code == 200
        refused = await post(client, input="x" * 8)
    assert refused.status_code == 429
    assert 28 <= int(refused.headers["retry-after"]) <= 30


def test_rate_window_refusals_do_not_consume_budget() -> None:
    """A refused request does not count; budgets come back as accepted requests leave the window."""
    window = RateWindow(rpm=2, tpm=None, window_s=1.0)
    assert window.admit(1, now=0.0).allowed
    assert window.admit(1, now=0.4).allowed
    refused = window.admit(1, now=0.5)
    assert not refused.allowed and refused.wait_s == pytest.approx(0.5)
    assert dict(refused.headers)[b"x-ratelimit-reset-requests"] == b"0.5s"
    assert window.admit(1, now=1.0).allowed  # the first left; the refused one never counted
    assert not window.admit(1, now=1.1).allowed


def test_rate_window_tokens() -> None:
    """The token budget admits a request only if its tokens fit, and says when they will."""
    window = RateWindow(rpm=None, tpm=100, window_s=60.0)
    assert window.admit(60, now=0.0).allowed
    assert window.admit(30, now=10.0).allowed
    refused = window.admit(50, now=20.0)
    assert not refused.allowed and refused.wait_s == pytest.approx(40.0)
    assert dict(refused.headers)[b"x-ratelimit-remaining-tokens"] == b"10"
    assert window.admit(10, now=20.0).allowed
    assert window.admit(50, now=60.0).allowed


@pytest.mark.parametrize("seconds,text", [(51, "51s"), (0.5, "0.5s"), (0, "0s"), (0.0001, "0.001s"), (1.25, "1.25s")])
def test_format_reset(seconds: float, text: str) -> None:
    """Reset durations read like ``51s`` or ``0.5s``, rounded up to the millisecond."""
    assert format_reset(seconds) == text


# --- stats -------------------------------------------------------------------


async def test_stats_count_requests_inputs_duplicates_and_tokens() -> None:
    """/stats counts requests, answers by status, inputs, distinct inputs and tokens; reset zeroes them."""
    async with serving() as (_, client):
        await post(client, input=["a", "b"])
        await post(client, input=["a", "c", "c"])
        await post(client, input=[])
        stats = (await client.get("/stats")).json()
        assert (await client.post("/stats/reset")).status_code == 200
        after = (await client.get("/stats")).json()
    assert stats.pop("embedded_span_s") >= 0
    assert stats == {
        "requests": 3,
        "responses": {"200": 2, "400": 1},
        "inputs_embedded": 5,
        "unique_inputs_embedded": 3,
        "duplicate_inputs_embedded": 2,
        "prompt_tokens": 5,
        "total_tokens": 5,
    }
    assert after["requests"] == after["inputs_embedded"] == after["unique_inputs_embedded"] == 0
    assert after["responses"] == {}


async def test_verbose_logs_one_line_per_request(capsys: pytest.CaptureFixture[str]) -> None:
    """--verbose writes one line per request to stderr and nothing to stdout; quiet by default."""
    async with serving() as (_, client):
        await post(client, input="hi")
    assert capsys.readouterr() == ("", "")
    async with serving(verbose=True) as (_, client):
        await post(client, input="hi")
        await client.get("/health")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[0].startswith("POST /v1/embeddings 200 ")
    assert len(err.splitlines()) == 2


# --- options and the command line -------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"dimensions": 12},
        {"fail_500": 1.5},
        {"fail_500": 0.6, "drop": 0.6},
        {"rpm": 0},
        {"limit_window_s": 0},
        {"port": 70000},
        {"poison": ("",)},
    ],
)
def test_bad_options_are_config_errors(options: dict) -> None:
    """Options that cannot work raise ConfigError."""
    with pytest.raises(ConfigError):
        ServerOptions(**options)


def test_flags_become_options() -> None:
    """The serve flags map onto ServerOptions, with --models split on commas and --poison repeatable."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(
        "--port 0 --fake --dimensions 32 --models a,b --models c --poison X --poison Y "
        "--rpm 10 --limit-window-s 1 --fail-500 0.1 --shuffle --api-key sekrit-9".split()
    )
    options = options_from_args(ns)
    assert options.models == ("a", "b", "c") and options.poison == ("X", "Y")
    assert (options.port, options.dimensions, options.rpm, options.limit_window_s) == (0, 32, 10, 1.0)
    assert options.fake and options.shuffle and options.fail_500 == 0.1 and options.api_key == "sekrit-9"
    assert "sekrit" not in repr(options)
    assert options_from_args(parser.parse_args([])) == ServerOptions()
    with pytest.raises(ConfigError):
        options_from_args(parser.parse_args(["--dimensions", "32"]))


async def test_module_runs_as_a_process_and_stops_on_sigterm() -> None:
    """``python -m pipeline.serve`` prints its URL, answers, and exits 0 on SIGTERM."""
    command = [sys.executable, "-m", "pipeline.serve", "--port", "0", "--fake"]
    async with await anyio.open_process(command, cwd=ROOT) as process:
        with anyio.fail_after(30):
            line = (await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 200)).decode()
            match = re.fullmatch(r"pipeline serve listening on (http://127\.0\.0\.1:\d+)", line)
            assert match, line
            async with httpx.AsyncClient(base_url=match[1]) as client:
                assert (await post(client, input="hi")).status_code == 200
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


@pytest.mark.anyio
async def test_local_model_answers_256_dimensions() -> None:
    """Without --fake the server embeds with the packaged wordllama model, offline."""
    async with running_server(ServerOptions(port=0)) as server:
        async with httpx.AsyncClient() as client:
            with anyio.fail_after(30):
                response = await client.post(
                    f"{server.url}/v1/embeddings", json={"model": "m", "input": ["hello", "bonjour"]}
                )
    body = response.json()
    assert response.status_code == 200
    assert len(body["data"][0]["embedding"]) == 256
    assert body["usage"]["prompt_tokens"] >= 2
