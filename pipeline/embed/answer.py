"""Reading an answer of ``POST /v1/embeddings``: vectors in input order, usage, the model.

``index`` maps each vector to its input (the order of ``data`` means
nothing); vectors come as JSON numbers or as base64 of their little-endian
bytes. Anything that does not decode is a ``ValueError``, which the client
treats as a malformed answer worth retrying.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from pipeline.embed import vectors
from pipeline.types import Usage


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


class AnswerReader:
    """Decodes answers for one embedding type; the first answer fixes the vector width."""

    def __init__(self, embedding_type: str) -> None:
        self.embedding_type = embedding_type
        self.width: int | None = None  # stored elements per vector, fixed by the first answer

    def read(self, content: bytes, n: int) -> Answer:
        """The answer to ``n`` inputs; ``ValueError`` if it is malformed."""
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
        items = [None] * n
        for item, i in zip(data, order):
            items[i] = item["embedding"]
        etype = self.embedding_type
        if all(isinstance(x, str) for x in items):
            matrix = vectors.decode_base64(items, etype)  # type: ignore[arg-type]
        elif all(isinstance(x, list) for x in items):
            matrix = vectors.decode_raw(items, etype)
        else:
            raise ValueError("embeddings are neither base64 strings nor number lists")
        if matrix.dtype.kind == "f" and not np.isfinite(matrix).all():
            raise ValueError("vector values are not finite (NaN or Inf)")
        if self.width is None:
            self.width = matrix.shape[1]
        elif matrix.shape[1] != self.width:
            raise ValueError(f"vectors have {matrix.shape[1]} values, earlier ones {self.width}")
        usage = body.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        total = int(usage.get("total_tokens") or prompt)
        model = body.get("model")
        return Answer(matrix, prompt, total, model if isinstance(model, str) else None)
