"""Where `pipeline serve`'s vectors come from: deterministic fakes and the local model."""

from __future__ import annotations

import anyio
import httpx
import numpy as np
import pytest

from pipeline.embed.vectors import EMBEDDING_TYPES, quantize
from pipeline.serve.app import ServerOptions, running_server
from serve_helpers import assert_openai_error, post, serving, vectors

pytestmark = pytest.mark.anyio


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


async def test_local_model_dimensions_bounded_by_its_width() -> None:
    """The local model shortens to ``dimensions`` up to its 256 and refuses more with a 400."""
    async with running_server(ServerOptions(port=0)) as server, httpx.AsyncClient(base_url=server.url) as client:
        with anyio.fail_after(30):
            short = await post(client, input=["the cat sat"], dimensions=128)
            too_wide = await post(client, input=["the cat sat"], dimensions=257)
    assert vectors(short).shape == (1, 128)
    assert_openai_error(too_wide, 400)
