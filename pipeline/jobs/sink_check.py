"""Whether a run could write ``sink.path``, found without writing anything: the sink line of
``pipeline validate`` and the problem a run would stop on."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Any

from pipeline.config import Config
from pipeline.dataset.opening import enclosing_dataset, local_problem, nearest_existing
from pipeline.dataset.postgres_schema import is_postgres
from pipeline.errors import SinkError
from pipeline.jobs.validate_postgres import sink_connection
from pipeline.logs import redact_url
from pipeline.storage import Location

@dataclass
class SinkCheck:
    """What :func:`check_sink` found: a line for the report, and the problem a run would stop on."""

    line: str
    problem: str | None = None


def _refused(shown: str, why: str) -> SinkCheck:
    return SinkCheck(f"sink: {shown}: {why}", f"sink.path {shown}: {why}")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def check_sink(cfg: Config, pg: Any = None) -> SinkCheck:
    """Whether a run could write ``sink.path``, found without writing anything.

    On local disk: the path, or its nearest existing parent, must be a
    writable directory outside /proc and /sys. On an object store the
    prefix (or the bucket) is looked up, nothing is created, and write
    access cannot be known. A Postgres sink is connected to (on ``pg``, the
    report's connection, when given).
    """
    shown = cfg.sink.path
    if is_postgres(shown):
        if pg is None:
            with sink_connection(cfg) as pg:
                return _check_postgres(cfg, pg)
        return _check_postgres(cfg, pg)
    try:
        where = Location.open(cfg.sink.path, cfg.sink.storage_options)
    except SinkError as exc:  # unknown protocol, missing backend, bad storage option
        return SinkCheck(f"sink: {redact_url(shown)}: refused", redact_url(str(exc)))
    try:
        outer = enclosing_dataset(where.fs, where.root)
    except Exception:  # the store's own errors: the checks below say what is wrong
        outer = None
    if outer is not None:
        return _refused(redact_url(shown), f"is inside the dataset at {Location.on(where.fs, outer).shown}: its "
                        "files would mix with that dataset's shards for every reader; use a path outside it")
    if where.local:
        return _check_local(shown, os.path.abspath(where.root))
    return _check_store(where.fs, shown, where.root)


def _check_local(shown: str, path: str) -> SinkCheck:
    if (problem := local_problem(path)) is not None:
        return _refused(shown, problem)
    existing = nearest_existing(path)
    if existing != path:
        return SinkCheck(f"sink: {shown} (will be created in {existing})")
    has_dataset = os.path.exists(os.path.join(path, "_manifest.json"))
    return SinkCheck(f"sink: {shown} ({'a dataset is there: a run resumes it' if has_dataset else 'writable'})")


def _check_store(fs: Any, shown: str, root: str) -> SinkCheck:
    path = root
    while True:
        try:
            info = fs.info(path)
            break
        except FileNotFoundError:
            parent = posixpath.dirname(path)
            if not parent or parent == path:
                top = fs.unstrip_protocol(path)
                return _refused(shown, f"{top} does not exist")
            path = parent
        except Exception as exc:  # the store's own errors (no credentials, unreachable) are not all OSError
            return SinkCheck(f"sink: {shown}: could not be checked ({one_line(exc)}); nothing was written")
    if path == root and info.get("type") != "directory":
        return _refused(shown, "exists and is an object, not a prefix")
    where = "exists" if path == root else f"will be created under {fs.unstrip_protocol(path)}"
    return SinkCheck(f"sink: {shown} ({where}; write access is not checked on an object store)")


def _check_postgres(cfg: Config, conn: Any) -> SinkCheck:
    """Say whether ``sink.table`` is there, on ``conn`` (:func:`sink_connection`; nothing is created)."""
    import psycopg

    from pipeline.dataset.postgres_session import reason

    shown, table = redact_url(cfg.sink.path), cfg.sink.table
    try:
        if isinstance(conn, Exception):
            raise conn
        there = conn.execute("SELECT to_regclass(%s)", [psycopg.sql.Identifier(table).as_string(conn)]).fetchone()
        vector = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    except psycopg.Error as exc:
        return _refused(shown, f"cannot connect: {reason(exc, cfg.sink.path)}")
    if vector is None:
        return _refused(shown, "the pgvector extension is not available on this server")
    what = f"table {table} is there: a run resumes it" if there and there[0] else f"table {table} will be created"
    return SinkCheck(f"sink: {shown} ({what})")
