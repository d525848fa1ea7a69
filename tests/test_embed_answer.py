"""pipeline.embed.answer: reading an answer of /v1/embeddings, and refusing one that is wrong."""

from __future__ import annotations

import numpy as np
import orjson
import pybase64
import pytest

from pipeline.embed.answer import AnswerReader


def body(items: list, model: str = "m", tokens: int = 3) -> bytes:
    """An answer carrying ``items`` as its embeddings, in order."""
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)]
    return orjson.dumps({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def b64(matrix: np.ndarray, dtype: str) -> list[str]:
    return [pybase64.b64encode(row.astype(dtype).tobytes()).decode() for row in matrix]


def unit_floats(n: int, d: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_reads_vectors_and_usage() -> None:
    """A correct float answer decodes to float32 rows in index order, with its usage."""
    floats = unit_floats(3, 16)
    data = [{"index": i, "embedding": e} for i, e in reversed(list(enumerate(b64(floats, "<f4"))))]
    answer = AnswerReader("float").read(orjson.dumps({"data": data, "usage": {"prompt_tokens": 5}}), 3)
    np.testing.assert_array_equal(answer.vectors, floats)
    assert (answer.prompt_tokens, answer.total_tokens) == (5, 5)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_base64_floats_are_malformed(value: float) -> None:
    """NaN or Inf in base64 float32 vectors is a malformed answer (retried), never a vector."""
    floats = unit_floats(2, 16)
    floats[1, 3] = value
    with pytest.raises(ValueError, match="not finite"):
        AnswerReader("float").read(body(b64(floats, "<f4")), 2)


def test_raw_numbers_overflowing_float32_are_malformed() -> None:
    """A raw number beyond float32 (1e39) is a malformed answer, never stored as Inf."""
    rows = unit_floats(2, 8).tolist()
    rows[0][2] = 1e39
    with pytest.raises(ValueError, match="not finite"):
        AnswerReader("float").read(body(rows), 2)
