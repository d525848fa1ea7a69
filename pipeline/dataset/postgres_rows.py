"""Rows of a Postgres sink on their way in: binary ``COPY`` of embedded batches and failures.

Vectors travel in pgvector's binary wire format (``vector``: int16
dimensions, int16 zero, big-endian float32s; ``bit``: int32 length, then the
bytes), encoded for a whole batch at once with numpy: through pgvector's
per-value dumper they cost more than everything else in the commit together.
int8 and uint8 vectors are stored as ``vector(d)`` of their values.
"""

from __future__ import annotations

import struct
from typing import Any, Iterator, Sequence

import numpy as np
from psycopg import Cursor, sql
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.copy import QueuedLibpqWriter

from pipeline.dataset.postgres_schema import COPY_TYPES, Names, column_kind, to_column
from pipeline.types import EmbeddedBatch, Failure

ERROR_COLUMNS = ("rank", "id", "doc_id", "chunk_index", "text", "source", "location", "error_type",
                 "message", "status", "attempts")
ERROR_TYPES = ("int4", "text", "text", "int4", "text", "text", "int8", "text", "text", "int4", "int4")


class DataColumns:
    """The columns a commit copies into ``{table}``, and each row as their values."""

    def __init__(self, embedding_type: str, include_text: bool, metadata: dict[str, str]) -> None:
        self.embedding_type = embedding_type
        self.include_text = include_text
        self.metadata = dict(metadata)  # name → column type
        self.names = ["id", "doc_id", "chunk_index", *(["text"] if include_text else []), "embedding",
                      "source", "content_hash", *self.metadata]
        self.types = ["text", "text", "int4", *(["text"] if include_text else []), column_kind(embedding_type),
                      "text", "text", *(COPY_TYPES[t] for t in self.metadata.values())]

    def rows(self, batches: Sequence[EmbeddedBatch], keep: set[int] | None = None) -> Iterator[tuple[Any, ...]]:
        """Each chunk's row; with ``keep``, only rows whose running number is in it."""
        n = 0
        for batch in batches:
            for chunk, vector in zip(batch.chunks, self._vectors(batch.vectors)):
                if keep is None or n in keep:
                    head = (chunk.id, chunk.doc_id, chunk.chunk_index)
                    if self.include_text:
                        head += (chunk.text,)
                    meta = tuple(to_column(chunk.metadata.get(k), t) for k, t in self.metadata.items())
                    yield (*head, vector, chunk.source, chunk.content_hash, *meta)
                n += 1

    def _vectors(self, matrix: np.ndarray) -> Iterator[Any]:
        return iter(encode_vectors(matrix, self.embedding_type))


def encode_vectors(matrix: np.ndarray, embedding_type: str) -> np.ndarray:
    """Each row of ``matrix`` in pgvector's binary format, one uint8 row per vector."""
    rows = matrix.shape[0]
    if column_kind(embedding_type) == "bit":
        body = np.ascontiguousarray(matrix).view(np.uint8)
        head = np.frombuffer(struct.pack(">i", body.shape[1] * 8), np.uint8)
    else:
        body = np.ascontiguousarray(matrix, dtype=">f4").view(np.uint8)
        head = np.frombuffer(struct.pack(">HH", matrix.shape[1], 0), np.uint8)
    out = np.empty((rows, head.size + body.shape[1]), np.uint8)
    out[:, : head.size] = head
    out[:, head.size :] = body
    return out


class _Encoded(Dumper):
    """A vector already in its binary wire format (a uint8 row of :func:`encode_vectors`)."""

    format = Format.BINARY

    def dump(self, obj: np.ndarray) -> memoryview:
        return obj.data


def last_of_each_id(batches: Sequence[EmbeddedBatch]) -> tuple[set[int], int]:
    """Running numbers of the rows to keep (the last row of each id) and how many rows there are."""
    last: dict[str, int] = {}
    n = 0
    for batch in batches:
        for chunk in batch.chunks:
            last[chunk.id] = n
            n += 1
    return set(last.values()), n


def copy_rows(cur: Cursor[Any], target: sql.Composable, columns: DataColumns, rows: Iterator[tuple[Any, ...]]) -> None:
    """``COPY target (columns) FROM STDIN (FORMAT BINARY)``, formatting while a thread sends."""
    stmt = sql.SQL("COPY {t} ({c}) FROM STDIN (FORMAT BINARY)").format(
        t=target, c=sql.SQL(", ").join(map(sql.Identifier, columns.names)))
    oid = cur.adapters.types[columns.types[columns.names.index("embedding")]].oid
    cur.adapters.register_dumper(None, type("EncodedVector", (_Encoded,), {"oid": oid}))  # this cursor only
    with cur.copy(stmt, writer=QueuedLibpqWriter(cur)) as copy:
        copy.set_types(columns.types)
        for row in rows:
            copy.write_row(row)


def copy_errors(cur: Cursor[Any], names: Names, rank: int, failures: Sequence[Failure]) -> None:
    """The failures into ``{table}_errors``."""
    stmt = sql.SQL("COPY {t} ({c}) FROM STDIN (FORMAT BINARY)").format(
        t=names.errors, c=sql.SQL(", ").join(map(sql.Identifier, ERROR_COLUMNS)))
    with cur.copy(stmt) as copy:
        copy.set_types(list(ERROR_TYPES))
        for f in failures:
            copy.write_row((rank, f.id, f.doc_id, f.chunk_index, f.text, f.source, f.location, f.error_type,
                            f.message, f.status, f.attempts))


def upsert_rows(cur: Cursor[Any], names: Names, columns: DataColumns, batches: Sequence[EmbeddedBatch]) -> int:
    """Rows that may repeat ids already in the table (or each other): through a temporary table.

    The last row of each id wins, within the commit and over the table.
    Returns how many rows replaced one that was there.
    """
    keep, _ = last_of_each_id(batches)
    load = sql.Identifier(f"_load_{names.table}")
    cur.execute(sql.SQL("CREATE TEMP TABLE {l} (LIKE {t} INCLUDING DEFAULTS) ON COMMIT DROP").format(
        l=load, t=names.data))
    copy_rows(cur, load, columns, columns.rows(batches, keep))
    cols = sql.SQL(", ").join(map(sql.Identifier, columns.names))
    updates = sql.SQL(", ").join(
        sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in columns.names if c != "id")
    cur.execute(sql.SQL(
        "WITH ins AS (INSERT INTO {t} ({cols}) SELECT {cols} FROM {l} ON CONFLICT (id) DO UPDATE SET {u} "
        "RETURNING (xmax <> 0) AS replaced) SELECT count(*) FILTER (WHERE replaced) FROM ins"
    ).format(t=names.data, cols=cols, l=load, u=updates))
    row = cur.fetchone()
    replaced = int(row[0]) if row else 0
    return replaced + (sum(len(b.chunks) for b in batches) - len(keep))  # rows of this commit that lost
