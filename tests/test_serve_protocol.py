"""The rules of the embeddings API as `pipeline serve` enforces them, and its answer bodies."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import openai
import pytest

from pipeline.embed.vectors import DTYPES, EMBEDDING_TYPES, quantize, width
from serve_helpers import assert_openai_error, post, serving, vectors

pytestmark = pytest.mark.anyio


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


async def test_encoding_format_float_is_raw() -> None:
    """``encoding_format: "float"`` (OpenAI's name, the SDK's explicit choice) answers JSON numbers like raw."""
    async with serving() as (_, client):
        raw = await post(client, input=["a", "b"], encoding_format="raw")
        floats = await post(client, input=["a", "b"], encoding_format="float")
    assert floats.status_code == 200
    assert floats.json()["data"] == raw.json()["data"]


async def test_openai_sdk_float_and_base64() -> None:
    """The official OpenAI SDK gets the same vectors with encoding_format float and with its base64 default."""
    async with serving() as (server, _):
        sdk = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        async with sdk:
            as_floats = await sdk.embeddings.create(model="m", input=["a", "b"], encoding_format="float")
            default = await sdk.embeddings.create(model="m", input=["a", "b"])
    floats = np.asarray([item.embedding for item in as_floats.data], np.float32)
    np.testing.assert_array_equal(floats, np.asarray([item.embedding for item in default.data], np.float32))
    assert floats.shape == (2, 64)


async def test_dimensions_truncate_and_renormalise_before_quantising() -> None:
    """``dimensions`` keeps the first values of each vector at unit length; integer types quantise that."""
    async with serving() as (server, client):
        full = vectors(await post(client, input=["a", "b"]))
        short = vectors(await post(client, input=["a", "b"], dimensions=16))
        packed = await post(client, input=["a", "b"], dimensions=16, embedding_type="binary", encoding_format="base64")
        sdk = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        async with sdk:
            from_sdk = await sdk.embeddings.create(model="m", input=["a"], dimensions=32)
    head = full[:, :16]
    np.testing.assert_allclose(short, head / np.linalg.norm(head, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(vectors(packed, "binary"), quantize(short, "binary"))
    assert vectors(packed, "binary").shape == (2, 2)
    assert len(from_sdk.data[0].embedding) == 32


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"dimensions": 65}, id="above the model's width"),
        pytest.param({"dimensions": 0}, id="zero"),
        pytest.param({"dimensions": -8}, id="negative"),
        pytest.param({"dimensions": "16"}, id="a string"),
        pytest.param({"dimensions": 16.5}, id="not whole"),
        pytest.param({"dimensions": True}, id="a boolean"),
        pytest.param({"dimensions": 12, "embedding_type": "binary"}, id="binary, not a multiple of 8"),
        pytest.param({"dimensions": 20, "embedding_type": "ubinary"}, id="ubinary, not a multiple of 8"),
    ],
)
async def test_bad_dimensions_get_400(extra: dict) -> None:
    """A ``dimensions`` the model cannot give gets 400 with an OpenAI error body naming the parameter."""
    async with serving() as (_, client):
        response = await post(client, input="hi", **extra)
    error = assert_openai_error(response, 400)
    assert error["param"] == "dimensions" and error["type"] == "invalid_request_error"


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
        pytest.param({"model": "m", "input": "hi", "encoding_format": "hex"}, id="bad encoding_format"),
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
