"""The tables of a Postgres sink: their names, DDL, column types and the vector index.

``{table}`` holds the ``data/`` columns (``id`` the primary key, ``embedding``
a pgvector ``vector(d)`` or ``bit(d)``, metadata fields as columns);
``{table}_errors`` the ``errors/`` columns; ``{table}_commits`` one row of
accounting per commit; ``{table}_state`` the resume state (how far each input
is committed, its signature and seek checkpoints), one row per input and
rank; ``{table}_runs`` the runs; ``{table}_meta`` the model and types the
table was made with. Identifiers are always quoted with ``sql.Identifier``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # psycopg is imported when SQL is made: a file sink's run does without it (8 MB)
    from psycopg import sql

from pipeline.config import SinkConfig
from pipeline.errors import SinkError

SCHEMES = ("postgresql://", "postgres://")
FORMAT_VERSION = 1
#: vectors up to this many dimensions are stored inline (``STORAGE PLAIN``: two rows still fit a
#: page, and no TOAST); longer ones out of line without a compression attempt (``EXTERNAL``)
PLAIN_MAX_DIMS = 800

#: (distance, column kind) → (operator, operator class)
DISTANCES: dict[tuple[str, str], tuple[str, str]] = {
    ("cosine", "vector"): ("<=>", "vector_cosine_ops"),
    ("l2", "vector"): ("<->", "vector_l2_ops"),
    ("ip", "vector"): ("<#>", "vector_ip_ops"),
    ("hamming", "bit"): ("<~>", "bit_hamming_ops"),
    ("jaccard", "bit"): ("<%>", "bit_jaccard_ops"),
}
INDEX_OPTIONS = {"hnsw": ("m", "ef_construction"), "ivfflat": ("lists",)}


def is_postgres(path: str) -> bool:
    """Whether ``sink.path`` names a Postgres database rather than files."""
    return path.startswith(SCHEMES)


def url_password(url: str) -> str | None:
    """The password a ``postgresql://`` URL carries, to keep out of every printed line."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(url).get("password") or None
    except Exception:  # a malformed URL: connecting reports it
        return None


def column_kind(embedding_type: str) -> str:
    """``bit`` for the bit-packed types, ``vector`` for the others."""
    return "bit" if embedding_type in ("binary", "ubinary") else "vector"


def distance_name(cfg: SinkConfig, embedding_type: str) -> str:
    """``sink.distance`` as it applies to this embedding type.

    Bit vectors know hamming and jaccard; the default ``cosine`` means
    hamming for them (the sign bits' agreement). Other mismatches are a
    config error.
    """
    kind = column_kind(embedding_type)
    distance = "hamming" if kind == "bit" and cfg.distance == "cosine" else cfg.distance
    if (distance, kind) not in DISTANCES:
        known = ", ".join(d for d, k in DISTANCES if k == kind)
        raise SinkError(
            f"sink.distance: {cfg.distance} does not apply to {embedding_type} vectors ({kind} column); use {known}"
        )
    return distance


def distance_of(cfg: SinkConfig, embedding_type: str) -> tuple[str, str]:
    """The (operator, operator class) for ``sink.distance`` on this embedding type."""
    return DISTANCES[(distance_name(cfg, embedding_type), column_kind(embedding_type))]


def check_index_options(cfg: SinkConfig) -> None:
    """``sink.index_options`` must name options of ``sink.index``."""
    allowed = INDEX_OPTIONS.get(cfg.index, ())
    for key in cfg.index_options:
        if key not in allowed:
            raise SinkError(
                f"sink.index_options: {key!r} is not an option of index {cfg.index} "
                f"(it takes {', '.join(allowed) or 'none'})"
            )


@dataclass(frozen=True)
class Names:
    """The quoted names of one sink's tables and indexes."""

    table: str

    def _of(self, suffix: str) -> sql.Identifier:
        from psycopg import sql

        return sql.Identifier(f"{self.table}_{suffix}")

    @property
    def data(self) -> sql.Identifier:
        from psycopg import sql

        return sql.Identifier(self.table)

    errors = property(lambda self: self._of("errors"))
    commits = property(lambda self: self._of("commits"))
    state = property(lambda self: self._of("state"))
    runs = property(lambda self: self._of("runs"))
    meta = property(lambda self: self._of("meta"))
    #: vectors of changed inputs' old rows, kept until their new rows are whole (a run cut short reuses them)
    retired = property(lambda self: self._of("retired"))
    source = property(lambda self: self._of("source"))  # the index on {table}(source)
    errors_source = property(lambda self: self._of("errors_source"))
    embedding_idx = property(lambda self: self._of("embedding_idx"))  # the vector index

    def lock_key(self, rank: int) -> tuple[int, int]:
        """The two int4 keys of this table's and rank's session advisory lock."""
        digest = hashlib.blake2b(f"pipeline:{self.table}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") & 0x7FFFFFFF, rank


def side_tables(names: Names) -> list[sql.Composed]:
    """DDL of the tables that exist before the first row: meta, runs, state, commits, errors."""
    from psycopg import sql

    q = [
        "CREATE TABLE IF NOT EXISTS {meta} (format_version int NOT NULL, model text NOT NULL, input_type text,"
        " embedding_type text NOT NULL, dimensions int, chunking jsonb, created_at timestamptz DEFAULT now(), id_field text)",
        "CREATE TABLE IF NOT EXISTS {runs} (n bigserial PRIMARY KEY, rank int NOT NULL, started_at text,"
        " finished_at text, status text)",
        "CREATE TABLE IF NOT EXISTS {state} (rank int NOT NULL, key text NOT NULL, location bigint,"
        " signature text, offsets jsonb, PRIMARY KEY (rank, key))",
        "CREATE TABLE IF NOT EXISTS {commits} (n bigserial PRIMARY KEY, token uuid UNIQUE NOT NULL,"
        " rank int NOT NULL, rows bigint NOT NULL, replaced bigint NOT NULL, removed bigint NOT NULL,"
        " errors bigint NOT NULL, errors_removed bigint NOT NULL, records bigint NOT NULL,"
        " rows_reused bigint NOT NULL, requests bigint NOT NULL, retries bigint NOT NULL,"
        " prompt_tokens bigint NOT NULL, total_tokens bigint NOT NULL, started_at text, finished_at text)",
        "CREATE TABLE IF NOT EXISTS {errors} (n bigserial PRIMARY KEY, rank int NOT NULL, id text,"
        " doc_id text, chunk_index int, text text, source text, location bigint, error_type text,"
        " message text, status int, attempts int)",
        "CREATE INDEX IF NOT EXISTS {errors_source} ON {errors} (source)",
    ]
    ids = {s: getattr(names, s) for s in ("meta", "runs", "state", "commits", "errors", "errors_source")}
    return [sql.SQL(s).format(**ids) for s in q]


def data_table(names: Names, embedding_type: str, dimensions: int, include_text: bool) -> list[sql.Composed]:
    """DDL of ``{table}``, made at the first commit, when the dimensions are known."""
    from psycopg import sql

    kind = column_kind(embedding_type)
    text = "text text, " if include_text else ""
    create = sql.SQL(
        "CREATE TABLE IF NOT EXISTS {t} (id text PRIMARY KEY, doc_id text NOT NULL, chunk_index int NOT NULL, "
        + text + "embedding {kind}({d}) NOT NULL, source text NOT NULL, content_hash text)"
    ).format(t=names.data, kind=sql.SQL(kind), d=sql.Literal(dimensions))
    out = [create, sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (source)").format(i=names.source, t=names.data)]
    if kind == "vector":
        storage = "PLAIN" if dimensions <= PLAIN_MAX_DIMS else "EXTERNAL"  # never try to compress floats
        out.append(sql.SQL("ALTER TABLE {t} ALTER COLUMN embedding SET STORAGE {s}").format(
            t=names.data, s=sql.SQL(storage)))
    return out


# --------------------------------------------------------------------------- metadata columns

#: Postgres type of a metadata column → the name ``copy.set_types`` takes
COPY_TYPES = {"text": "text", "bigint": "int8", "double precision": "float8", "boolean": "bool", "jsonb": "jsonb"}
#: information_schema's ``data_type`` → ours
CATALOG_TYPES = {"text": "text", "bigint": "bigint", "double precision": "double precision",
                 "boolean": "boolean", "jsonb": "jsonb"}


def value_type(value: Any) -> str | None:
    """The column type a metadata value needs (None for None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint" if -(2**63) <= value < 2**63 else "text"
    if isinstance(value, float):
        return "double precision"
    if isinstance(value, (dict, list, tuple)):
        return "jsonb"
    return "text"


def widen(current: str | None, new: str | None) -> str | None:
    """The type a column needs to hold values of both types (as the file dataset does)."""
    if current is None or new is None or current == new:
        return current or new
    if {current, new} == {"bigint", "double precision"}:
        return "double precision"
    return "text"


def to_column(value: Any, column_type: str) -> Any:
    """A metadata value as its column takes it."""
    if value is None:
        return None
    if column_type == "text":
        if isinstance(value, str):
            return value.replace("\x00", "\ufffd")
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (dict, list, tuple)):
            import orjson

            return orjson.dumps(value, default=str).decode()
        return str(value)
    if column_type == "double precision":
        return float(value)
    if column_type == "jsonb":
        return list(value) if isinstance(value, tuple) else value
    return value


def add_or_widen(names: Names, name: str, current: str | None, needed: str) -> sql.Composed:
    """DDL that adds metadata column ``name``, or changes its type to ``needed``."""
    from psycopg import sql

    col = sql.Identifier(name)
    if current is None:
        return sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} {ty}").format(
            t=names.data, c=col, ty=sql.SQL(needed))
    return sql.SQL("ALTER TABLE {t} ALTER COLUMN {c} TYPE {ty} USING {c}::{ty}").format(
        t=names.data, c=col, ty=sql.SQL(needed))


# --------------------------------------------------------------------------- the vector index


def index_ddl(names: Names, cfg: SinkConfig, embedding_type: str, rows: int) -> sql.Composed | None:
    """``CREATE INDEX`` for ``sink.index`` (None for ``none``).

    ivfflat's ``lists`` default to pgvector's advice: rows / 1000 up to a
    million rows, the square root of the rows beyond.
    """
    from psycopg import sql

    if cfg.index == "none":
        return None
    _, opclass = distance_of(cfg, embedding_type)
    options = dict(cfg.index_options)
    if cfg.index == "ivfflat":
        options.setdefault("lists", max(10, rows // 1000 if rows <= 1_000_000 else int(math.sqrt(rows))))
    with_ = sql.SQL("")
    if options:
        with_ = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(int(v))) for k, v in options.items()))
    return sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING {m} (embedding {ops}){w}").format(
        i=names.embedding_idx, t=names.data, m=sql.SQL(cfg.index), ops=sql.SQL(opclass), w=with_)


def build_index(conn: Any, names: Names, cfg: SinkConfig, embedding_type: str, where: str) -> None:
    """Create ``sink.index`` once the table holds rows (kept afterwards); a refusal is only logged.

    pgvector refuses, for instance, vector columns over 2,000 dimensions;
    search then still works, without the index.
    """
    import time

    import psycopg
    from psycopg import sql

    from pipeline.logs import get_logger

    log = get_logger()
    if cfg.index == "none":
        return
    exists = conn.execute("SELECT to_regclass(%s)", (names.embedding_idx.as_string(conn),)).fetchone()
    if exists and exists[0]:
        return
    if not conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {t})").format(t=names.data)).fetchone()[0]:
        return  # built after the first load, not on an empty table
    rows = 0
    if cfg.index == "ivfflat":  # its lists follow the rows; counting a big table takes a while
        rows = int(conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=names.data)).fetchone()[0])
    ddl = index_ddl(names, cfg, embedding_type, rows)
    if ddl is None:
        return
    log.info("index_building", table=names.table, index=cfg.index, distance=cfg.distance)  # minutes, on big tables
    started = time.monotonic()
    try:
        conn.execute(ddl)
    except psycopg.Error as exc:
        if conn.broken:
            raise
        log.warning("index_not_built", table=names.table, index=cfg.index, where=where,
                    reason=" ".join(str(exc).split())[:300], hint="search still works, without the index")
        return
    log.info("index_built", table=names.table, index=cfg.index, seconds=round(time.monotonic() - started, 1))
