"""Injected faults of `pipeline serve`: statuses, dropped and hung connections, broken bodies."""

from __future__ import annotations

import anyio
import httpx
import orjson
import pytest

from serve_helpers import assert_openai_error, post, serving

pytestmark = pytest.mark.anyio


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


@pytest.mark.parametrize("retry_after", [True, False])
async def test_injected_429_retry_after_follows_the_switch(retry_after: bool) -> None:
    """--fail-429 answers carry Retry-After (--fault-retry-after) unless --no-retry-after."""
    async with serving(fail_429=1.0, fault_retry_after=2, retry_after=retry_after) as (_, client):
        refused = await post(client, input="hello")
    assert_openai_error(refused, 429)
    assert refused.headers.get("retry-after") == ("2" if retry_after else None)
