"""A Postgres sink's own vectors for the chunks of changed documents: read back before they are replaced.

The rows of the sources a round changes (and, for renames, of those it
deletes) are read with a server-side cursor, their vectors in pgvector's
binary form (``vector_send``/``bit_send``, the inverse of
:func:`~pipeline.dataset.postgres_rows.encode_vectors`), up to a bound on
memory: past it, the remaining chunks are simply embedded again.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable

import numpy as np
import psycopg
from psycopg import sql

from pipeline.dataset.postgres_schema import Names, column_kind
from pipeline.dataset.postgres_session import connect
from pipeline.dataset.self_reuse import StoredVectors
from pipeline.embed.vectors import DTYPES
from pipeline.errors import SinkError

#: vectors held at most (bytes); 1024-d float vectors: about 65,000 rows
MAX_BYTES = 256 * 1024 * 1024
FETCH_ROWS = 5_000


def decode_vectors(blobs: list[bytes], embedding_type: str) -> np.ndarray:
    """Vectors from pgvector's binary format (all of one width), as the dataset stores them."""
    if not blobs:
        return np.empty((0, 0), DTYPES[embedding_type])
    raw = np.frombuffer(b"".join(blobs), np.uint8).reshape(len(blobs), -1)
    if column_kind(embedding_type) == "bit":
        (bits,) = struct.unpack(">i", blobs[0][:4])
        return np.ascontiguousarray(raw[:, 4:]).view(DTYPES[embedding_type]).reshape(len(blobs), bits // 8)
    floats = np.ascontiguousarray(raw[:, 4:]).view(">f4")
    return floats.astype(DTYPES[embedding_type])


def stored_vectors(url: str, table: str, embedding_type: str, sources: Iterable[str], *, rank: int = 0,
                   max_bytes: int = MAX_BYTES) -> StoredVectors | None:
    """The vectors of ``table``'s rows whose source is one of ``sources`` (None when there are none)."""
    if not set(sources):
        return None
    conn = connect(url, rank=rank)
    try:
        return read_stored_vectors(conn, table, embedding_type, sources, max_bytes=max_bytes)
    finally:
        conn.close()


def read_stored_vectors(conn: psycopg.Connection[Any], table: str, embedding_type: str, sources: Iterable[str], *,
                        max_bytes: int = MAX_BYTES) -> StoredVectors | None:
    """:func:`stored_vectors` on an open autocommit connection (``pipeline validate``'s only one)."""
    names = Names(table)
    wanted = sorted(set(sources))
    if not wanted:
        return None
    send = "bit_send" if column_kind(embedding_type) == "bit" else "vector_send"
    query = sql.SQL("SELECT content_hash, {send}(embedding) FROM {t} WHERE source = ANY(%s) "
                    "AND content_hash IS NOT NULL").format(send=sql.SQL(send), t=names.data)
    hashes: list[str] = []
    blobs: list[bytes] = []
    size = 0
    try:
        if conn.execute("SELECT to_regclass(%s)", [sql.Identifier(table).as_string(conn)]).fetchone()[0] is None:  # type: ignore[index]
            return None
        with conn.transaction(), conn.cursor(name="pipeline_own_vectors") as cursor:
            cursor.execute(query, (wanted,))
            while size < max_bytes and (rows := cursor.fetchmany(FETCH_ROWS)):
                for h, blob in rows:
                    hashes.append(h)
                    blobs.append(bytes(blob))
                    size += len(blob)
    except Exception as exc:  # psycopg's, mostly; not worth stopping the run for
        raise SinkError(f"cannot read the vectors of changed documents from {table}: {exc}") from exc
    if not hashes:
        return None
    return StoredVectors(hashes, decode_vectors(blobs, embedding_type))
