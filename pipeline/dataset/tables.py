"""The rows of ``data/`` and ``errors/`` shards, as Arrow tables.

Vectors go from numpy to a ``fixed_size_list`` column without Python lists.
Metadata columns take the types pyarrow infers; dicts and lists are stored as
JSON text, and a column whose values conflict turns into strings.
"""

from __future__ import annotations

from typing import Any, Sequence

import orjson
import pyarrow as pa

from pipeline.dataset.manifest import Manifest
from pipeline.embed.vectors import is_packed, to_arrow
from pipeline.errors import SinkError
from pipeline.types import EmbeddedBatch, Failure

#: columns every data shard has, before the metadata fields
BASE_COLUMNS = ("id", "doc_id", "chunk_index", "text", "embedding", "source", "content_hash")

ERRORS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("doc_id", pa.string()),
        ("chunk_index", pa.int32()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("location", pa.int64()),
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("status", pa.int32()),
        ("attempts", pa.int32()),
    ]
)


def _text(value: Any) -> str | None:
    """A metadata value as text, for columns whose values do not share one type."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (dict, list, tuple)):
        return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return str(value)


def _promote(current: pa.DataType | None, new: pa.DataType) -> pa.DataType:
    """The type a column needs to hold values of both types."""
    if current is None or pa.types.is_null(current):
        return new
    if pa.types.is_null(new) or new == current:
        return current
    numeric = (pa.types.is_integer, pa.types.is_floating)
    if any(f(current) for f in numeric) and any(f(new) for f in numeric):
        return pa.float64()
    return pa.string()


def _metadata_array(values: list[Any], current: pa.DataType | None) -> pa.Array:
    """One metadata column of a batch, in a type that extends ``current``.

    Types come from pyarrow's inference; dicts and lists are stored as JSON
    text; values of mixed or conflicting types turn the column into strings.
    """
    values = [_text(v) if isinstance(v, (dict, list, tuple)) else v for v in values]
    try:
        array = pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        array = pa.array([_text(v) for v in values], pa.string())
    if pa.types.is_struct(array.type) or pa.types.is_list(array.type):
        array = pa.array([_text(v) for v in values], pa.string())
    target = _promote(current, array.type)
    if array.type != target:
        try:
            array = array.cast(target)
        except (pa.ArrowException, TypeError, ValueError):
            array = pa.array([_text(v) for v in values], pa.string())
    return array


def _parse_type(name: str) -> pa.DataType:
    """A type recorded in the manifest; one pyarrow cannot parse back is treated as string."""
    try:
        return pa.type_for_alias(name)
    except (ValueError, KeyError, TypeError):
        return pa.string()


class RowTables:
    """Builds the tables of one dataset, keeping metadata column types stable across shards."""

    def __init__(self, manifest: Manifest, *, embedding_type: str, metadata_fields: list[str],
                 include_text: bool, where: str) -> None:
        clash = [f for f in metadata_fields if f in BASE_COLUMNS]
        if clash:
            raise SinkError(
                f"source.metadata_fields: {clash[0]!r} is also a dataset column; rename it in the source"
            )
        self._manifest = manifest
        self.embedding_type = embedding_type
        self.metadata_fields = list(metadata_fields)
        self.include_text = include_text
        self.where = where
        self._meta_types: dict[str, pa.DataType | None] = {
            c["name"]: _parse_type(c["type"]) for c in manifest.schema if c["name"] in self.metadata_fields
        }

    def data(self, batch: EmbeddedBatch) -> pa.Table:
        """The ``data/`` rows of a batch; its vectors' width must match the dataset's."""
        chunks = batch.chunks
        vectors = batch.vectors
        if vectors.ndim != 2 or vectors.shape[0] != len(chunks):
            raise SinkError(
                f"batch {batch.seq}: {len(chunks)} chunks but vectors of shape {vectors.shape}"
            )
        dims = vectors.shape[1] * (8 if is_packed(self.embedding_type) else 1)
        self._manifest.set_dimensions(dims, where=self.where)
        columns: dict[str, pa.Array] = {
            "id": pa.array([c.id for c in chunks], pa.string()),
            "doc_id": pa.array([c.doc_id for c in chunks], pa.string()),
            "chunk_index": pa.array([c.chunk_index for c in chunks], pa.int32()),
        }
        if self.include_text:
            columns["text"] = pa.array([c.text for c in chunks], pa.string())
        columns["embedding"] = to_arrow(vectors, self.embedding_type)
        columns["source"] = pa.array([c.source for c in chunks], pa.string())
        columns["content_hash"] = pa.array([c.content_hash for c in chunks], pa.string())
        for name in self.metadata_fields:
            array = _metadata_array([c.metadata.get(name) for c in chunks], self._meta_types.get(name))
            self._meta_types[name] = array.type
            columns[name] = array
        return pa.Table.from_arrays(list(columns.values()), names=list(columns))

    @staticmethod
    def errors(failures: Sequence[Failure]) -> pa.Table:
        """The ``errors/`` rows of some failures."""
        return pa.Table.from_pydict(
            {name: [getattr(f, name) for f in failures] for name in ERRORS_SCHEMA.names},
            schema=ERRORS_SCHEMA,
        )
