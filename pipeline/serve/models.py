"""Where the server's vectors come from: deterministic fakes or the local wordllama model."""

from __future__ import annotations

import hashlib
from typing import Protocol

import anyio
import numpy as np

from pipeline.embed.local import DIMENSIONS, MODEL_NAME, shared_model


class VectorModel(Protocol):
    """Where vectors and token counts come from."""

    name: str  # what ``GET /v1/models`` lists when no --models are given
    dimensions: int  # the width of every vector

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text, as reported in ``usage``."""

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Float32 vectors, one row per text."""


def text_digest(text: str) -> bytes:
    """An 8-byte hash of a text: the seed of its fake vector, its identity in stats."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


class FakeModel:
    """Deterministic unit vectors: the same text always gets the same vector."""

    def __init__(self, dimensions: int) -> None:
        self.name = f"fake-{dimensions}"
        self.dimensions = dimensions
        self._offsets = np.arange(1, dimensions + 1, dtype=np.uint64) * _GOLDEN

    def count_tokens(self, texts: list[str]) -> list[int]:
        """About four UTF-8 bytes a token, at least one."""
        return [max(1, (len(text.encode("utf-8")) + 3) // 4) for text in texts]

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Vectors from the SplitMix64 stream seeded by each text's digest."""
        seeds = np.frombuffer(b"".join(map(text_digest, texts)), dtype="<u8")
        # SplitMix64 finaliser over seed + i·golden: one vectorised pass for the batch
        x = seeds[:, None] + self._offsets
        x ^= x >> np.uint64(30)
        x *= _MIX1
        x ^= x >> np.uint64(27)
        x *= _MIX2
        x ^= x >> np.uint64(31)
        vectors = (x >> np.uint64(40)).astype(np.float32)  # 24 bits: exact in float32
        vectors *= np.float32(2.0**-23)
        vectors -= np.float32(1.0)  # uniform in [-1, 1)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors


class WordLlamaModel:
    """The wordllama model of ``provider: local`` (256 dimensions), served."""

    name = MODEL_NAME
    dimensions = DIMENSIONS

    def __init__(self) -> None:
        self._model = shared_model()

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens as the model's tokenizer counts them, at least one."""
        return self._model.count_tokens(texts)

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-normalised model vectors, computed in a worker thread."""
        return await anyio.to_thread.run_sync(self._model.vectors, texts)


def shortened(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """The first ``dimensions`` values of each unit row, re-normalised (as OpenAI's v3 models do)."""
    if dimensions == vectors.shape[1]:
        return vectors
    head = vectors[:, :dimensions]
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    norms[norms == 0] = 1  # an all-zero head stays zero rather than turning into NaN
    return head / norms
