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
        "inputs_embedded": 5,
        "unique_inputs_embedded": 3,
        "duplicate_inputs_embedded": 2,
        "prompt_tokens": 5,
        "total_tokens": 5,
    }
    assert after["requests"] == after["inputs_embedded"] == after["unique_inputs_embedded"] == 0
    assert after["responses"] == {}
