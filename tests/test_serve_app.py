"""`pipeline serve` over HTTP: routes, the key, connections and keep-alive, and the process."""

from __future__ import annotations

import re
import signal
import sys

import anyio
import h11
import httpx
import numpy as np
import openai
import orjson
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from conftest import ROOT
from serve_helpers import assert_openai_error, post, serving, vectors

pytestmark = pytest.mark.anyio


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


async def test_shuffle_keeps_index_mapping() -> None:
    """With --shuffle, data comes out of order but each index still names its input's vector."""
    texts = [f"text {i}" for i in range(40)]
    async with serving() as (_, client):
        plain = vectors(await post(client, input=texts))
    async with serving(shuffle=True, seed=5) as (_, client):
        response = await post(client, input=texts)
    assert [item["index"] for item in response.json()["data"]] != list(range(40))
    np.testing.assert_array_equal(vectors(response), plain)


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


async def test_models_list_in_openai_shape() -> None:
    """``GET /v1/models`` lists the --models names in OpenAI's shape; the SDK's models.list() reads it."""
    async with serving(models=("m", "other")) as (server, client):
        listed = await client.get("/v1/models")
        sdk = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        async with sdk:
            ids = [model.id async for model in sdk.models.list()]
    assert listed.status_code == 200
    assert listed.json() == {
        "object": "list",
        "data": [
            {"id": "m", "object": "model", "created": 0, "owned_by": "pipeline"},
            {"id": "other", "object": "model", "created": 0, "owned_by": "pipeline"},
        ],
    }
    assert ids == ["m", "other"]


async def test_models_list_without_models_names_the_served_model() -> None:
    """Without --models, ``GET /v1/models`` lists the one model served (``fake-{dimensions}`` here)."""
    async with serving() as (_, client):
        listed = await client.get("/models")
    assert [model["id"] for model in listed.json()["data"]] == ["fake-64"]


async def test_model_by_id() -> None:
    """``GET /v1/models/{id}``: a listed id answers its object, another 404s; without --models any id answers."""
    async with serving(models=("m", "org/embedder")) as (server, client):
        known = await client.get("/v1/models/m")
        slashed = await client.get("/v1/models/org/embedder")
        unknown = await client.get("/v1/models/nope")
        sdk = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        async with sdk:
            retrieved = await sdk.models.retrieve("m")
            with pytest.raises(openai.NotFoundError):
                await sdk.models.retrieve("nope")
    assert known.json() == {"id": "m", "object": "model", "created": 0, "owned_by": "pipeline"}
    assert slashed.json()["id"] == "org/embedder"
    assert assert_openai_error(unknown, 404)["code"] == "model_not_found"
    assert retrieved.id == "m"
    async with serving() as (_, client):
        assert (await client.get("/v1/models/anything")).json()["id"] == "anything"


async def test_models_need_the_key_and_get() -> None:
    """With --api-key the model routes need the bearer token; they take GET only."""
    async with serving(api_key="s3cret-key") as (_, client):
        assert_openai_error(await client.get("/v1/models"), 401)
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer s3cret-key"})).status_code == 200
        assert_openai_error(await client.post("/v1/models", headers={"Authorization": "Bearer s3cret-key"}), 405)


async def test_idle_connection_is_closed_after_the_idle_timeout() -> None:
    """A connection that sends nothing is closed by the server once --idle-timeout-s has passed."""
    async with serving(idle_timeout_s=0.2) as (server, _):
        async with await anyio.connect_tcp(server.host, server.port) as stream:
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stream.receive()


async def test_keep_alive_connection_is_closed_when_idle_after_a_request() -> None:
    """After answering, a keep-alive connection left idle is closed; a busy one is not cut short."""
    async with serving(idle_timeout_s=0.3, latency_ms=500) as (server, _):
        async with await anyio.connect_tcp(server.host, server.port) as stream:
            conn = h11.Connection(h11.CLIENT)
            body = orjson.dumps({"model": "m", "input": "hi"})
            headers = [("host", "x"), ("content-type", "application/json"), ("content-length", str(len(body)))]
            await stream.send(
                conn.send(h11.Request(method="POST", target="/v1/embeddings", headers=headers))
                + conn.send(h11.Data(data=body))
                + conn.send(h11.EndOfMessage())
            )
            events: list = []
            while not events or not isinstance(events[-1], h11.EndOfMessage):
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive())
                else:
                    events.append(event)
            assert events[0].status_code == 200  # answered after 500 ms, longer than the idle timeout
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                while True:
                    await stream.receive()
