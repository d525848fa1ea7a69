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


def quantized(n: int, d: int, etype: str, seed: int = 0) -> np.ndarray:
    from pipeline.embed.vectors import quantize

    return quantize(unit_floats(n, d, seed), etype)


@pytest.mark.parametrize("etype", ["float", "int8", "uint8", "binary", "ubinary"])
@pytest.mark.parametrize("encoding", ["raw", "base64"])
@pytest.mark.parametrize("d", [64, 256, 1024])
def test_correct_answers_pass_with_or_without_dimensions(etype: str, encoding: str, d: int) -> None:
    """Answers of the asked type and width are accepted, whether embedding.dimensions is set or learned."""
    from pipeline.embed.vectors import DTYPES

    for seed in range(5):
        matrix = quantized(8, d, etype, seed)
        items = b64(matrix, DTYPES[etype].str) if encoding == "base64" else matrix.tolist()
        for dims in (None, d):
            answer = AnswerReader(etype, dims).read(body(items), 8)
            np.testing.assert_array_equal(answer.vectors, matrix)


def wrong(reader: AnswerReader, items: list, n: int = 4) -> str:
    """The one-line message of the FatalApiError ``reader`` raises for ``items``."""
    from pipeline.errors import FatalApiError

    with pytest.raises(FatalApiError) as info:
        reader.read(body(items), n)
    message = str(info.value)
    assert "\n" not in message and message.startswith("embedding API answered ")
    return message


@pytest.mark.parametrize("etype", ["int8", "uint8", "binary", "ubinary"])
def test_float32_bytes_for_another_type_are_refused(etype: str) -> None:
    """A server sending float32 base64 whatever was asked (infinity-emb) is refused, with or without dimensions."""
    items = b64(unit_floats(4, 128), "<f4")
    known = wrong(AnswerReader(etype, 128), items)
    due = 16 if etype in ("binary", "ubinary") else 128
    assert f"of 512 bytes where {due} are due" in known and "embedding.dimensions: 128" in known
    learned = wrong(AnswerReader(etype), items)
    assert f"read as 128 float32 values where {etype} values are due" in learned and "embedding_type" in learned


@pytest.mark.parametrize("etype", ["int8", "uint8", "binary", "ubinary"])
def test_raw_floats_for_an_integer_type_are_refused(etype: str) -> None:
    """Raw JSON fractions where integers are due are refused (they used to become zero vectors)."""
    message = wrong(AnswerReader(etype), unit_floats(4, 32).tolist())
    assert f"fractional values where {etype} integers are due" in message


def test_integers_outside_the_type_are_refused() -> None:
    """uint8 values answered for int8 are refused, naming the range that was due."""
    message = wrong(AnswerReader("int8"), quantized(4, 32, "uint8").astype(int).tolist())
    assert "where int8 values (-128..127) are due" in message


def test_integers_for_float_are_refused() -> None:
    """Raw integers answered where float values are due are refused."""
    assert "integer vectors where float values are due" in wrong(AnswerReader("float"), quantized(4, 32, "int8").tolist())


def test_int8_bytes_for_float_are_refused() -> None:
    """Base64 bytes that do not read as float32 values, where float is due, are refused on the first answer."""
    message = wrong(AnswerReader("float"), b64(quantized(4, 256, "int8"), "i1"))
    assert "do not read as float32" in message


@pytest.mark.parametrize("encoding", ["raw", "base64"])
def test_ignored_dimensions_are_refused(encoding: str) -> None:
    """embedding.dimensions: 128 answered with 256-wide vectors is refused, naming both widths."""
    floats = unit_floats(4, 256)
    items = b64(floats, "<f4") if encoding == "base64" else floats.tolist()
    message = wrong(AnswerReader("float", 128), items)
    assert ("256 values where 128 are due" in message or "1024 bytes where 512 are due" in message)
    assert "embedding.dimensions: 128" in message


def test_width_is_learned_from_the_first_answer() -> None:
    """Without embedding.dimensions the first answer fixes the width; a later other width is refused."""
    reader = AnswerReader("float")
    reader.read(body(b64(unit_floats(4, 64), "<f4")), 4)
    assert reader.width == 64
    assert "128 values where 64 are due (as in the first answer)" in wrong(reader, unit_floats(4, 128).tolist())


def test_ragged_answers_stay_malformed() -> None:
    """Vectors of different lengths, empty or not numbers within one answer are malformed (retried), not a wrong type."""
    floats = unit_floats(2, 64)
    items = b64(floats, "<f4")
    items[1] = items[1][:-8]
    with pytest.raises(ValueError):
        AnswerReader("float", 64).read(body(items), 2)
    with pytest.raises(ValueError):
        AnswerReader("int8").read(body([[1, 2, 3], [1, 2]]), 2)
    for empty in ([[], []], ["", ""], [[True], [False]]):
        with pytest.raises(ValueError):
            AnswerReader("float").read(body(empty), 2)
