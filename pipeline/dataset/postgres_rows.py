"""Rows of a Postgres sink on their way in: binary ``COPY`` of embedded batches and failures.

Vectors go through pgvector's psycopg adapter: float rows as numpy arrays
(its binary ``vector`` dumper), bit-packed rows as ``Bit`` values. int8 and
uint8 vectors are stored as ``vector(d)`` of their values.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
from pgvector import Bit
from psycopg import Cursor, sql
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
        if column_kind(self.embedding_type) == "bit":
            packed = np.ascontiguousarray(matrix).view(np.uint8)
            return (Bit(row.tobytes()) for row in packed)
        return iter(np.ascontiguousarray(matrix, dtype=np.float32))


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
