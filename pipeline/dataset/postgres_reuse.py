"""A Postgres sink's own vectors for the chunks of changed documents: read back before they are replaced.

The rows of the sources a round changes (and, for renames, of those it
deletes) are read with a server-side cursor, their vectors in pgvector's
binary form (``vector_send``/``bit_send``, the inverse of
:func:`~pipeline.dataset.postgres_rows.encode_vectors`), up to a bound on
memory: past it, the remaining chunks are simply embedded again.

A changed input's old rows leave with its first new ones; their vectors are
kept in ``{table}_retired`` (:func:`retire`) until its new rows are whole
(:func:`release`), so that a run cut short in between leaves the next run
the vectors of the rest of it.
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
    send = sql.SQL("bit_send" if column_kind(embedding_type) == "bit" else "vector_send")
    select = "SELECT content_hash, {send}(embedding) FROM {t} WHERE source = ANY(%s) AND content_hash IS NOT NULL"
    hashes: list[str] = []
    blobs: list[bytes] = []
    size = 0
    try:
        if not _exists(conn, names.data):
            return None
        query = sql.SQL(select).format(send=send, t=names.data)
        params: tuple[Any, ...] = (wanted,)
        if _exists(conn, names.retired):  # the old rows of a replacement a run left unfinished
            query = sql.SQL("{} UNION ALL {}").format(query, sql.SQL(select).format(send=send, t=names.retired))
            params = (wanted, wanted)
        with conn.transaction(), conn.cursor(name="pipeline_own_vectors") as cursor:
            cursor.execute(query, params)
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


def _exists(conn: psycopg.Connection[Any], ident: sql.Identifier) -> bool:
    return conn.execute("SELECT to_regclass(%s)", [ident.as_string(conn)]).fetchone() not in (None, (None,))


def retire(cur: psycopg.Cursor[Any], n: Names, where: sql.Composable, params: tuple[Any, ...], rank: int) -> None:
    """Keep the vectors of the rows ``where`` selects in ``{table}_retired`` (as this rank's), before they are
    deleted in the same transaction."""
    cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {r} AS SELECT source, content_hash, embedding, 0 AS rank "
                        "FROM {t} WITH NO DATA").format(r=n.retired, t=n.data))
    cur.execute(sql.SQL("INSERT INTO {r} SELECT source, content_hash, embedding, %s FROM {t} "
                        "WHERE content_hash IS NOT NULL AND {where}").format(r=n.retired, t=n.data, where=where),
                (rank, *params))


def retired_sources(conn: psycopg.Connection[Any], n: Names, rank: int) -> set[str]:
    """The inputs whose old rows' vectors this rank keeps (a replacement an earlier run left unfinished)."""
    if not _exists(conn, n.retired):
        return set()
    rows = conn.execute(sql.SQL("SELECT DISTINCT source FROM {r} WHERE rank = %s").format(r=n.retired), (rank,))
    return {r[0] for r in rows}


def release(conn: psycopg.Connection[Any], n: Names, rank: int, urls: set[str]) -> None:
    """Forget the kept vectors of ``urls`` (their new rows are whole)."""
    conn.execute(sql.SQL("DELETE FROM {r} WHERE rank = %s AND source = ANY(%s)").format(r=n.retired),
                 (rank, sorted(urls)))
