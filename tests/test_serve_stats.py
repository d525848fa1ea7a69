"""The counters of `pipeline serve` (``GET /stats``, ``POST /stats/reset``)."""

from __future__ import annotations

import pytest

from serve_helpers import post, serving

pytestmark = pytest.mark.anyio


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
        "admitted": 2,
        "admitted_tokens": 5,
        "rate_limited": 0,
        "inputs_embedded": 5,
        "unique_inputs_embedded": 3,
        "duplicate_inputs_embedded": 2,
        "prompt_tokens": 5,
        "total_tokens": 5,
    }
    assert after["requests"] == after["inputs_embedded"] == after["unique_inputs_embedded"] == 0
    assert after["responses"] == {}
    assert after["admitted"] == after["admitted_tokens"] == after["rate_limited"] == 0


async def test_stats_count_admitted_and_rate_limited_requests() -> None:
    """/stats tells requests the limits admitted (and their tokens) from their 429s and injected 429s."""
    async with serving(rpm=2, limit_window_s=60) as (_, client):
        statuses = [(await post(client, input="x" * 8)).status_code for _ in range(3)]
        await post(client, input="")  # a 400 is never admitted
        stats = (await client.get("/stats")).json()
    async with serving(fail_429=1.0) as (_, client):
        await post(client, input="hi")
        injected = (await client.get("/stats")).json()
    assert statuses == [200, 200, 429]
    assert (stats["admitted"], stats["admitted_tokens"], stats["rate_limited"]) == (2, 4, 1)
    assert stats["responses"] == {"200": 2, "429": 1, "400": 1}
    assert (injected["admitted"], injected["rate_limited"], injected["responses"]) == (0, 0, {"429": 1})
