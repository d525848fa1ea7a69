"""The embeddings API as the server sees it: request rules, error bodies, answer bodies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from pipeline.config import MAX_BATCH, MAX_CHARS
from pipeline.embed.vectors import EMBEDDING_TYPES, encode_base64, is_packed

INPUT_TYPES: tuple[str, ...] = ("search_document", "search_query", "classification", "clustering")
# "float" is OpenAI's name for "raw", sent explicitly by its SDK and LangChain
ENCODING_FORMATS: tuple[str, ...] = ("raw", "float", "base64")

_KNOWN_FIELDS = frozenset(
    {"model", "input", "input_type", "encoding_format", "embedding_type", "dimensions", "allow_ignored_params"}
)
# OpenAI SDKs may send this one; rejecting it would break those clients.
_TOLERATED_FIELDS = frozenset({"user"})


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """A validated ``POST /v1/embeddings`` body."""

    model: str
    texts: list[str]
    input_type: str | None
    encoding_format: str
    embedding_type: str
    dimensions: int | None  # None: the model's own width


class BadRequest(Exception):
    """The request body breaks a rule of the API (answered 400)."""

    def __init__(self, message: str, param: str | None, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def parse_request(payload: Any, model_dimensions: int) -> EmbeddingsRequest:
    """Validate a decoded JSON body against the API's rules; raises :class:`BadRequest`.

    ``model_dimensions`` is the width of the served vectors, the most
    ``dimensions`` may ask for.
    """
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object", None, "invalid_type")
    allow_ignored = payload.get("allow_ignored_params")
    if allow_ignored is not None and not isinstance(allow_ignored, bool):
        raise BadRequest("'allow_ignored_params' must be a boolean", "allow_ignored_params", "invalid_type")
    if not allow_ignored:
        for name in payload:
            if name not in _KNOWN_FIELDS and name not in _TOLERATED_FIELDS:
                raise BadRequest(
                    f"unknown parameter '{name}' (set allow_ignored_params to ignore it)",
                    name,
                    "unknown_parameter",
                )
    model = payload.get("model")
    if model is None:
        raise BadRequest("'model' is required", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string", "model", "invalid_type")
    texts = _parse_input(payload.get("input"))
    input_type = _one_of(payload, "input_type", INPUT_TYPES, None)
    encoding_format = _one_of(payload, "encoding_format", ENCODING_FORMATS, "raw")
    embedding_type = _one_of(payload, "embedding_type", EMBEDDING_TYPES, "float")
    return EmbeddingsRequest(
        model=model,
        texts=texts,
        input_type=input_type,
        encoding_format=encoding_format,
        embedding_type=embedding_type,
        dimensions=_parse_dimensions(payload.get("dimensions"), embedding_type, model_dimensions),
    )


def _parse_dimensions(value: Any, embedding_type: str, model_dimensions: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest("'dimensions' must be an integer", "dimensions", "invalid_type")
    if not 1 <= value <= model_dimensions:
        message = f"'dimensions' must be between 1 and {model_dimensions} for this model; got {value}"
        raise BadRequest(message, "dimensions", "invalid_value")
    if is_packed(embedding_type) and value % 8:
        message = f"'dimensions' must be a multiple of 8 for embedding_type {embedding_type}; got {value}"
        raise BadRequest(message, "dimensions", "invalid_value")
    return value


def _parse_input(value: Any) -> list[str]:
    if value is None:
        raise BadRequest("'input' is required", "input", "missing_required_parameter")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise BadRequest("'input' must be a string or a non-empty array of strings", "input", "invalid_type")
    if len(texts) > MAX_BATCH:
        raise BadRequest(
            f"'input' has {len(texts)} items; at most {MAX_BATCH} are allowed", "input", "too_many_inputs"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadRequest(f"input {i} is not a string", "input", "invalid_type")
        if not text:
            raise BadRequest(f"input {i} is empty", "input", "invalid_value")
        if len(text) > MAX_CHARS:
            raise BadRequest(
                f"input {i} has {len(text)} characters; at most {MAX_CHARS} are allowed",
                "input",
                "input_too_long",
            )
    return texts


def _one_of(payload: dict, name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    value = payload.get(name)
    if value is None:
        return default
    if value not in allowed:
        raise BadRequest(
            f"'{name}' must be one of {', '.join(allowed)}; got {orjson.dumps(value).decode()}",
            name,
            "invalid_value",
        )
    return value


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: status, JSON body, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


def error_reply(
    status: int,
    message: str,
    code: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Reply:
    """An OpenAI-style error answer."""
    error = {"message": message, "type": type_, "param": param, "code": code}
    return Reply(status, orjson.dumps({"error": error}), headers)


def unauthorized() -> Reply:
    """A 401 for a missing or wrong key; the body never shows the key."""
    challenge = ((b"www-authenticate", b"Bearer"),)
    return error_reply(401, "invalid or missing API key", "invalid_api_key", headers=challenge)


def method_not_allowed(allowed: bytes) -> Reply:
    """A 405 naming the one method the path takes."""
    return error_reply(405, "method not allowed", "method_not_allowed", headers=((b"allow", allowed),))


def embeddings_body(
    vectors: np.ndarray, request: EmbeddingsRequest, order: list[int], tokens: int
) -> bytes:
    """The JSON answer carrying ``vectors`` (already quantised) at the indices in ``order``."""
    if request.encoding_format == "base64":
        items: list[Any] = encode_base64(vectors, request.embedding_type)
    else:
        items = list(vectors)  # numpy rows; orjson writes them as JSON numbers
    data = [{"object": "embedding", "index": i, "embedding": items[i]} for i in order]
    body = {
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def model_body(name: str) -> bytes:
    """One model object as ``GET /v1/models/{id}`` returns it."""
    return orjson.dumps(_model_object(name))


def models_list_body(names: tuple[str, ...]) -> bytes:
    """The list ``GET /v1/models`` returns."""
    return orjson.dumps({"object": "list", "data": [_model_object(name) for name in names]})


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "pipeline"}
