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
from psycopg import Cursor, errors, sql
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.copy import QueuedLibpqWriter

from pipeline.dataset.postgres_schema import (CATALOG_TYPES, COPY_TYPES, Names, add_or_widen, column_kind,
                                              data_table, to_column, value_type, widen)
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
                    head = (nul_free(chunk.id), nul_free(chunk.doc_id), chunk.chunk_index)
                    if self.include_text:
                        head += (nul_free(chunk.text),)
                    meta = tuple(to_column(chunk.metadata.get(k), t) for k, t in self.metadata.items())
                    yield (*head, vector, nul_free(chunk.source), chunk.content_hash, *meta)
                n += 1

    def _vectors(self, matrix: np.ndarray) -> Iterator[Any]:
        return iter(encode_vectors(matrix, self.embedding_type))


def nul_free(text: str) -> str:
    """``text`` with NUL characters (which Postgres text cannot hold) as U+FFFD."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


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
            copy.write_row((rank, nul_free(f.id), nul_free(f.doc_id), f.chunk_index,
                            nul_free(f.text) if f.text is not None else None, nul_free(f.source), f.location,
                            f.error_type, nul_free(f.message), f.status, f.attempts))


def insert_rows(cur: Cursor[Any], names: Names, columns: DataColumns, batches: Sequence[EmbeddedBatch]) -> int:
    """The rows of a commit: COPY straight in; on an id already there, :func:`upsert_rows` instead.

    Straight in is half the server's work (the temporary table is written
    and read again); a bulk load meets no existing id. Returns how many rows
    replaced another.
    """
    keep, total = last_of_each_id(batches)
    if len(keep) == total:
        try:
            with cur.connection.transaction():  # a savepoint: a duplicate id undoes only this
                copy_rows(cur, names.data, columns, columns.rows(batches))
            return 0
        except errors.UniqueViolation:
            pass
    return upsert_rows(cur, names, columns, batches)


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


def existing_columns(conn: Any, names: Names, embedding_type: str, include_text: bool,
                     metadata_fields: list[str]) -> DataColumns:
    """The columns of ``{table}`` as it stands (its metadata columns' types from the catalog)."""
    cur = conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                       "WHERE table_schema = current_schema() AND table_name = %s", (names.table,))
    existing = dict(cur.fetchall())
    metadata = {f: CATALOG_TYPES.get(existing[f], "text") for f in metadata_fields if f in existing}
    return DataColumns(embedding_type, include_text and "text" in existing, metadata)


def make_table(cur: Cursor[Any], names: Names, embedding_type: str, dimensions: int, include_text: bool,
               metadata_fields: list[str]) -> DataColumns:
    """Create ``{table}`` (at the first commit, in its transaction, when the dimensions are known)."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (names.lock_key(-1)[0],))
    for ddl in data_table(names, embedding_type, dimensions, include_text):
        cur.execute(ddl)
    cur.execute(sql.SQL("UPDATE {m} SET dimensions = %s").format(m=names.meta), (dimensions,))
    return existing_columns(cur.connection, names, embedding_type, include_text, metadata_fields)


def fit_metadata(cur: Cursor[Any], names: Names, columns: DataColumns, metadata_fields: list[str],
                 batches: Sequence[EmbeddedBatch]) -> DataColumns:
    """Add or widen metadata columns as the values of ``batches`` need (in the commit's transaction).

    Returns the columns to copy, which become the sink's once that
    transaction is through.
    """
    needed: dict[str, str | None] = dict(columns.metadata)
    for name in metadata_fields:
        for batch in batches:
            for chunk in batch.chunks:
                needed[name] = widen(needed.get(name), value_type(chunk.metadata.get(name)))
    changed = {k: v for k, v in needed.items() if v is not None and v != columns.metadata.get(k)}
    for name, kind in changed.items():
        cur.execute(add_or_widen(names, name, columns.metadata.get(name), kind))
    if not changed:
        return columns
    return DataColumns(columns.embedding_type, columns.include_text, {k: v for k, v in needed.items() if v})
