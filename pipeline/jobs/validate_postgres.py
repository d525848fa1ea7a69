"""What ``pipeline validate`` reads of a Postgres sink, read only: one connection for the report, and
the settings, resume state, unfinished replacements and row shares a run would find in the table.

Each reader answers on the report's connection (:func:`sink_connection`) and
gives a neutral answer (None, empty, 0) when that connection could not be
had or the database errs: the sink line of the report says what is wrong.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from pipeline.config import Config
from pipeline.dataset.postgres_schema import is_postgres
from pipeline.dataset.state import State
from pipeline.errors import SinkError
from pipeline.logs import redact_url


@contextmanager
def sink_connection(cfg: Config) -> Iterator[Any]:
    """The report's one connection to a Postgres sink (autocommit, nothing created); the ``psycopg.Error``
    instead when it cannot be had, None for a sink that is not Postgres."""
    if not is_postgres(cfg.sink.path):
        yield None
        return
    import psycopg

    try:
        conn = psycopg.connect(cfg.sink.path, connect_timeout=10, autocommit=True)
    except psycopg.Error as exc:
        yield exc
        return
    with conn:
        yield conn


def connected(pg: Any) -> bool:
    """Whether ``pg`` (what :func:`sink_connection` gave) is a connection to ask."""
    return pg is not None and not isinstance(pg, Exception)


def postgres_mixed(cfg: Config, conn: Any) -> str | None:
    """Why a run would refuse the table: made with other settings than the config's (None when it would not)."""
    import psycopg

    from pipeline.dataset.postgres_schema import Names
    from pipeline.dataset.postgres_state import Made, check_made

    if not connected(conn):
        return None
    emb = cfg.embedding
    made = Made(emb.model, emb.input_type, emb.embedding_type, cfg.chunking.model_dump(), cfg.source.id_field)
    try:
        check_made(conn, Names(cfg.sink.table), made, f"{redact_url(cfg.sink.path)} table {cfg.sink.table}")
    except SinkError as exc:
        return str(exc)
    except psycopg.Error:  # the sink line says what is wrong with the database
        return None
    return None


def postgres_share(cfg: Config, conn: Any, urls: list[str]) -> float:
    """The share of the table's rows whose source is one of ``urls``."""
    import psycopg

    from pipeline.dataset.postgres_schema import Names
    from pipeline.dataset.postgres_state import share_of

    if not connected(conn):
        return 0.0
    try:
        return share_of(conn, Names(cfg.sink.table), urls)
    except psycopg.Error:  # the sink line says what is wrong with the database
        return 0.0


def postgres_id_losers(cfg: Config, conn: Any, holders: set[str]) -> set[str]:
    """The inputs whose ``duplicate_id`` error rows name one of ``holders`` (see
    :func:`~pipeline.dataset.postgres_state.id_losers`); none when the table cannot be read."""
    import psycopg

    from pipeline.dataset.postgres_schema import Names
    from pipeline.dataset.postgres_state import id_losers

    if not connected(conn):
        return set()
    try:
        return id_losers(conn, Names(cfg.sink.table), holders)
    except psycopg.Error:  # the sink line says what is wrong with the database
        return set()


def postgres_known_ids(cfg: Config, conn: Any) -> Iterator[tuple[list[str], list[str]]]:
    """The ids and sources of the table's rows, a block at a time, as a run seeds its id registry with
    them (see :func:`~pipeline.dataset.postgres.known_ids`); none when the table cannot be read."""
    import psycopg

    from pipeline.dataset.postgres import known_ids
    from pipeline.dataset.postgres_schema import Names

    if not connected(conn):
        return
    try:
        yield from known_ids(conn, Names(cfg.sink.table))
    except psycopg.Error:  # the sink line says what is wrong with the database
        return


def postgres_replacing(cfg: Config, conn: Any) -> set[str]:
    """Inputs whose replacement a run left unfinished (their old rows' vectors wait in ``{table}_retired``)."""
    import psycopg

    from pipeline.dataset.postgres_reuse import retired_sources
    from pipeline.dataset.postgres_schema import Names

    if not connected(conn):
        return set()
    try:
        return retired_sources(conn, Names(cfg.sink.table), cfg.run.rank)
    except psycopg.Error:  # the sink line says what is wrong with the database
        return set()


def postgres_state(cfg: Config, conn: Any) -> State | None:
    """This rank's rows of ``{table}_state``; None when there is no table (or it cannot be read)."""
    import psycopg

    from pipeline.dataset.postgres_schema import Names
    from pipeline.dataset.postgres_state import ResumeState

    if not connected(conn):
        return None
    try:
        name = psycopg.sql.Identifier(f"{cfg.sink.table}_state").as_string(conn)
        if conn.execute("SELECT to_regclass(%s)", [name]).fetchone() in (None, (None,)):
            return None
        return ResumeState(conn, Names(cfg.sink.table), cfg.run.rank)  # a State read from the table
    except psycopg.Error:  # the sink line says what is wrong with the database
        return None
