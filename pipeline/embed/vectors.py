"""Vector representations: numpy dtypes, base64 wire format, Arrow types.

Shared by the HTTP embedder (decoding answers), the local model and
``pipeline serve`` (quantising float output) and the dataset writer
(building ``fixed_size_list`` columns without Python lists).
"""

from __future__ import annotations

import binascii
from typing import Literal

import numpy as np
import pyarrow as pa
import pybase64

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary"]

EMBEDDING_TYPES: tuple[str, ...] = ("float", "int8", "uint8", "binary", "ubinary")

#: little-endian element dtype of each embedding type, on the wire and in Arrow
DTYPES: dict[str, np.dtype] = {
    "float": np.dtype("<f4"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "binary": np.dtype("i1"),
    "ubinary": np.dtype("u1"),
}

FLOAT32_MAX = float(np.finfo(np.float32).max)

ARROW_VALUE_TYPES: dict[str, pa.DataType] = {
    "float": pa.float32(),
    "int8": pa.int8(),
    "uint8": pa.uint8(),
    "binary": pa.int8(),
    "ubinary": pa.uint8(),
}


def is_packed(embedding_type: str) -> bool:
    """Whether vectors of this type are bit-packed (8 dimensions per byte)."""
    return embedding_type in ("binary", "ubinary")


def width(embedding_type: str, dimensions: int) -> int:
    """Number of stored elements for a vector of ``dimensions`` dimensions."""
    return dimensions // 8 if is_packed(embedding_type) else dimensions


def to_arrow(vectors: np.ndarray, embedding_type: str) -> pa.FixedSizeListArray:
    """A 2-D numpy array as a ``fixed_size_list`` array, sharing its buffer."""
    dtype = DTYPES[embedding_type]
    matrix = np.ascontiguousarray(vectors, dtype=dtype)
    rows, cols = matrix.shape
    values = pa.array(matrix.reshape(-1), type=ARROW_VALUE_TYPES[embedding_type])
    return pa.FixedSizeListArray.from_arrays(values, cols)


def decode_base64(items: list[str], embedding_type: str) -> np.ndarray:
    """Decode base64 vectors of one type into a 2-D array (one row per item).

    Raises ``ValueError`` when the items do not all have the same length.
    """
    dtype = DTYPES[embedding_type]
    raw = [b64decode(s) for s in items]
    if not raw:
        return np.empty((0, 0), dtype=dtype)
    n = len(raw[0])
    if n == 0 or n % dtype.itemsize or any(len(r) != n for r in raw):
        raise ValueError("vectors of different or invalid byte lengths")
    return np.frombuffer(b"".join(raw), dtype=dtype).reshape(len(raw), n // dtype.itemsize)


def b64decode(item: str) -> bytes:
    """``base64.b64decode(item)``, with SIMD: this is the largest cost of a base64 answer."""
    try:
        return pybase64.b64decode(item, validate=True)
    except binascii.Error:  # stray characters (line breaks, ...): skip them, as the stdlib does
        return pybase64.b64decode(item, validate=False)


def decode_raw(items: list, embedding_type: str) -> np.ndarray:
    """JSON number lists as a 2-D array of the type's dtype.

    Raises ``ValueError`` on ragged or non-numeric input, and on numbers
    float32 cannot hold (they would be stored as Inf).
    """
    dtype = DTYPES[embedding_type]
    matrix = np.asarray(items, dtype=np.float64 if embedding_type == "float" else np.int64)
    if matrix.ndim != 2:
        raise ValueError("vectors of different lengths")
    if embedding_type == "float" and matrix.size and not (np.abs(matrix) <= FLOAT32_MAX).all():
        raise ValueError("vector values are not finite in float32")
    if embedding_type != "float":
        info = np.iinfo(dtype)
        if matrix.size and (matrix.min() < info.min or matrix.max() > info.max):
            raise ValueError(f"vector values outside the {embedding_type} range")
    return matrix.astype(dtype)


def encode_base64(matrix: np.ndarray, embedding_type: str) -> list[str]:
    """Each row of ``matrix`` as the base64 of its little-endian bytes."""
    data = np.ascontiguousarray(matrix, dtype=DTYPES[embedding_type])
    b64 = pybase64.b64encode_as_string
    return [b64(row.tobytes()) for row in data]


def quantize(floats: np.ndarray, embedding_type: str) -> np.ndarray:
    """Turn float vectors into the requested embedding type.

    ``int8``/``uint8`` scale each vector by its largest magnitude; ``binary``
    and ``ubinary`` keep the sign bit (positive = 1), packed 8 per byte, with
    ``binary`` stored as int8 and ``ubinary`` as uint8. The float dimensions
    must be a multiple of 8 for the packed types.
    """
    floats = np.asarray(floats, dtype=np.float32)
    if embedding_type == "float":
        return floats
    if embedding_type in ("int8", "uint8"):
        scale = np.max(np.abs(floats), axis=1, keepdims=True)
        scale[scale == 0] = 1.0
        unit = floats / scale  # in [-1, 1]
        if embedding_type == "int8":
            return np.clip(np.rint(unit * 127), -128, 127).astype(np.int8)
        return np.clip(np.rint((unit + 1.0) * 127.5), 0, 255).astype(np.uint8)
    bits = np.packbits(floats > 0, axis=1)
    return bits.view(np.int8) if embedding_type == "binary" else bits
