"""Reading an answer of ``POST /v1/embeddings``, and refusing one that is wrong.

``index`` maps each vector to its input (the order of ``data`` means
nothing); vectors come as JSON numbers or as base64 of their little-endian
bytes. Two kinds of wrong:

- *malformed* (not JSON, vectors missing, ragged, NaN or Inf): a
  ``ValueError``, which the client retries like any transient failure;
- *not what was asked* (another width, another embedding type): a
  :class:`FatalApiError`, which stops the run before anything is written.
  Servers that ignore ``embedding_type`` (infinity-emb sends float32
  whatever was asked) or ``dimensions`` answer like this on every request.

Every vector must be as wide as ``embedding.dimensions`` says (``/ 8`` for
the bit-packed types), or when it is not set as the first answer's vectors.
The first answer itself, without ``embedding.dimensions``, is checked by what
its values look like: JSON fractions where integers are due, or base64
bytes that read as plausible float32 values where int8, uint8 or packed
bits are due (and the reverse for float).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from pipeline.embed import vectors
from pipeline.errors import FatalApiError
from pipeline.types import Usage

#: bytes "read as float32" when this share of their values reads as an embedding value would ...
FLOAT_LOOKS = 0.95
#: ... and do not when less than this share does
FLOAT_UNLIKE = 0.5
#: at fewer values than this, what bytes look like proves nothing
FLOAT_EVIDENCE = 64


@dataclass(frozen=True, slots=True)
class Answer:
    """The vectors of one successful request, what ``usage`` said, and the attempts it took."""

    vectors: np.ndarray
    prompt_tokens: int
    total_tokens: int
    model: str | None = None  # the model the server says answered
    attempts: int = 1

    @property
    def usage(self) -> Usage:
        """The request's cost, retries included."""
        return Usage(self.attempts, self.attempts - 1, self.prompt_tokens, self.total_tokens)


def float32_share(data: bytes) -> float:
    """The share of ``data``, read as little-endian float32, that is 0 or between 1e-7 and 1e3 in size.

    Embedding values are; int8, uint8 or packed bits read as float32 are
    mostly not (their exponent byte is anything), so this tells them apart.
    """
    values = np.abs(np.frombuffer(data, "<f4"))
    with np.errstate(invalid="ignore"):
        plausible = (values == 0) | ((values >= 1e-7) & (values <= 1e3))
    return float(plausible.mean()) if len(values) else 0.0


class AnswerReader:
    """Decodes answers for one embedding type; refuses vectors that are not what was asked."""

    def __init__(self, embedding_type: str, dimensions: int | None = None) -> None:
        """``dimensions`` is ``embedding.dimensions``: every vector is checked against it when set."""
        self.embedding_type = embedding_type
        self.dtype = vectors.DTYPES[embedding_type]
        #: stored elements per vector: from ``dimensions``, else fixed by the first answer
        self.width: int | None = vectors.width(embedding_type, dimensions) if dimensions else None
        packed = ", bit-packed" if vectors.is_packed(embedding_type) else ""
        self._basis = f"embedding.dimensions: {dimensions}{packed}" if dimensions else "as in the first answer"

    def read(self, content: bytes, n: int) -> Answer:
        """The answer to ``n`` inputs; ``ValueError`` if malformed, :class:`FatalApiError` if wrong."""
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ValueError("body is not JSON") from exc
        data = body["data"]
        if not isinstance(data, list) or len(data) != n:
            raise ValueError(f"expected {n} vectors, got {len(data) if isinstance(data, list) else 'none'}")
        order = [item["index"] for item in data]
        if sorted(order) != list(range(n)):
            raise ValueError("vector indexes do not match the inputs")
        items: list[Any] = [None] * n
        for item, i in zip(data, order):
            items[i] = item["embedding"]
        if all(isinstance(x, str) for x in items):
            matrix = self._from_base64(items)
        elif all(isinstance(x, list) for x in items):
            matrix = self._from_raw(items)
        else:
            raise ValueError("embeddings are neither base64 strings nor number lists")
        width = matrix.shape[1]
        if self.width is None:
            self.width = width
        elif width != self.width:
            raise self._wrong(f"vectors of {width} values where {self.width} are due ({self._basis})",
                              "the server may ignore 'dimensions' or embedding_type")
        usage = body.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        total = int(usage.get("total_tokens") or prompt)
        model = body.get("model")
        return Answer(matrix, prompt, total, model if isinstance(model, str) else None)

    def _from_base64(self, items: list[str]) -> np.ndarray:
        raw = [vectors.b64decode(s) for s in items]
        size = len(raw[0])
        if size == 0 or any(len(r) != size for r in raw):
            raise ValueError("base64 vectors of different or empty lengths")
        etype, itemsize = self.embedding_type, self.dtype.itemsize
        joined = b"".join(raw)
        if self.width is not None:
            due = self.width * itemsize
            if size != due:
                hint = ("the server seems to ignore embedding_type and send float32" if size == 4 * due and
                        etype != "float" else "the server may ignore 'dimensions' or embedding_type")
                raise self._wrong(f"base64 vectors of {size} bytes where {due} are due "
                                  f"({self.width} {etype} values, {self._basis})", hint)
        elif size % itemsize:
            raise self._wrong(f"base64 vectors of {size} bytes, not a whole number of float32 values",
                              "the server seems to send another embedding_type")
        elif len(joined) >= 4 * FLOAT_EVIDENCE and not size % 4:
            # the first answer, with no embedding.dimensions to check its width against
            share = float32_share(joined)
            if etype != "float" and share >= FLOAT_LOOKS:
                raise self._wrong(f"base64 vectors that read as {size // 4} float32 values where "
                                  f"{etype} values are due", "the server seems to ignore embedding_type")
            if etype == "float" and share < FLOAT_UNLIKE:
                raise self._wrong("base64 vectors that do not read as float32 values",
                                  "the server seems to send another embedding_type")
        matrix = np.frombuffer(joined, dtype=self.dtype).reshape(len(raw), size // itemsize)
        if etype == "float" and not np.isfinite(matrix).all():
            raise ValueError("vector values are not finite (NaN or Inf)")
        return matrix

    def _from_raw(self, items: list[list[Any]]) -> np.ndarray:
        matrix = np.asarray(items)  # ragged lists raise ValueError: malformed
        if matrix.ndim != 2 or not matrix.shape[1] or matrix.dtype.kind not in "iuf":
            raise ValueError("embeddings are not non-empty lists of numbers of one length")
        etype = self.embedding_type
        if etype == "float":
            if matrix.dtype.kind != "f" and matrix.any():
                raise self._wrong("integer vectors where float values are due",
                                  "the server seems to send another embedding_type")
            if not (np.abs(matrix) <= vectors.FLOAT32_MAX).all():  # NaN compares False too
                raise ValueError("vector values are not finite in float32")
            return matrix.astype(self.dtype)
        if matrix.dtype.kind == "f" and not (matrix == np.rint(matrix)).all():
            raise self._wrong(f"fractional values where {etype} integers are due",
                              "the server seems to ignore embedding_type")
        info = np.iinfo(self.dtype)
        low, high = (matrix.min(), matrix.max()) if matrix.size else (0, 0)
        if low < info.min or high > info.max:
            raise self._wrong(f"values from {low:g} to {high:g} where {etype} values ({info.min}..{info.max}) "
                              "are due", "the server seems to use another embedding_type")
        return matrix.astype(self.dtype)

    def _wrong(self, what: str, hint: str) -> FatalApiError:
        return FatalApiError(f"embedding API answered {what}; {hint}", status=200)
