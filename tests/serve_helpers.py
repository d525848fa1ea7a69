"""Helpers shared by the ``tests/test_serve_*.py`` files: a running server and its answers."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import anyio
import httpx
import numpy as np

from pipeline.embed.vectors import decode_base64, decode_raw
from pipeline.serve.app import Server, ServerOptions, running_server


@asynccontextmanager
async def serving(
    clock: Callable[[], float] = anyio.current_time, **options: Any
) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    """A fake-vector server with ``options`` (its rate limits on ``clock``) and a client pointed at it."""
    settings = {"port": 0, "fake": True, "dimensions": 64, **options}
    async with running_server(ServerOptions(**settings), clock=clock) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            with anyio.fail_after(20):
                yield server, client


async def post(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    """POST an embeddings request for model ``m`` with ``body``."""
    return await client.post("/v1/embeddings", json={"model": "m", **body})


def vectors(response: httpx.Response, embedding_type: str = "float") -> np.ndarray:
    """The answer's vectors, in input order."""
    data = sorted(response.json()["data"], key=lambda item: item["index"])
    items = [item["embedding"] for item in data]
    if isinstance(items[0], str):
        return decode_base64(items, embedding_type)
    return decode_raw(items, embedding_type)


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    """Check the status and the OpenAI error body shape; the ``error`` object."""
    assert response.status_code == status
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and isinstance(error["code"], str)
    return error
