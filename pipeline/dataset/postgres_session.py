"""One writer's connection to Postgres: opened in one line or not at all, locked, and opened again when lost.

A session holds the (table, rank) advisory lock for as long as it lives; the
lock goes with the connection, so a session that opens a new connection after
losing one takes the lock again, and stops if another writer took it meanwhile.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

import psycopg

from pipeline.dataset.postgres_schema import Names, url_password
from pipeline.errors import CommitFailed, SinkError
from pipeline.logs import get_logger, redact_url


def connect(url: str, *, rank: int = 0) -> psycopg.Connection[Any]:
    """An autocommit connection with pgvector's types; ``SinkError`` in one line when it cannot be had."""
    from pgvector.psycopg import register_vector

    name = f"pipeline:{socket.gethostname()}:{os.getpid()}:rank{rank}"[:63]
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10, application_name=name,
                               keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
    except psycopg.Error as exc:
        raise SinkError(f"cannot connect to sink.path {redact_url(url)}: {reason(exc, url)}") from exc
    try:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SinkError(
                f"sink.path {redact_url(url)}: the pgvector extension is not installed and this user may not "
                "install it; run `CREATE EXTENSION vector;` as the database owner "
                "(Heroku: heroku pg:psql -c 'CREATE EXTENSION vector')"
            ) from exc
        except psycopg.Error as exc:  # not available on this server at all, for one
            raise SinkError(f"sink.path {redact_url(url)}: cannot use the pgvector extension: "
                            f"{reason(exc, url)}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def reason(exc: BaseException, url: str) -> str:
    """An error's text on one line, without the URL's password."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    password = url_password(url)
    return redact_url(text.replace(password, "***") if password else text)


class Session:
    """The connection of one rank's writer, with its lock; see the module docstring."""

    def __init__(
        self,
        url: str,
        names: Names,
        rank: int,
        *,
        retry_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url, self.names, self.rank = url, names, rank
        self.where = f"{redact_url(url)} table {names.table}"
        self.retry_s, self._clock, self._sleep = retry_s, clock, sleep
        self.conn = connect(url, rank=rank)

    def lock(self, wait_s: float, on_wait: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Take the (table, rank) lock, waiting up to ``wait_s`` for a draining predecessor."""
        deadline = self._clock() + wait_s
        told = False
        while not self._try_lock():
            if self._clock() >= deadline:
                raise SinkError(
                    f"another writer holds rank {self.rank} of {self.where} (it did not let go within "
                    f"{wait_s:g} s); stop it first, or give this one another run.rank or sink.table"
                )
            if not told and on_wait is not None:
                on_wait(self._holder())
                told = True
            self._sleep(0.5)

    def _try_lock(self) -> bool:
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)", self.names.lock_key(self.rank)).fetchone()
        return bool(row and row[0])

    def _holder(self) -> dict[str, Any]:
        """The host and pid of the writer holding the lock, as its application_name says."""
        key1, key2 = self.names.lock_key(self.rank)
        row = self.conn.execute(
            "SELECT a.application_name, a.client_addr::text FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::bigint::oid "
            "AND l.objid = %s::bigint::oid AND l.objsubid = 2", (key1, key2)).fetchone()
        parts = (row[0] if row else "").split(":")
        return {"host": parts[1] if len(parts) > 2 else (row[1] if row else None),
                "pid": parts[2] if len(parts) > 2 else None}

    def run(self, call: Callable[[], Any], what: str, *, budget_s: float | None = None) -> Any:
        """``call()``, opening the connection again (and taking the lock again) while the database is away.

        Errors the database answers with are raised at once as
        :class:`CommitFailed`; a database away for longer than the budget
        too, with the last reason.
        """
        deadline = self._clock() + (self.retry_s if budget_s is None else budget_s)
        delay = 0.5
        while True:
            try:
                if self.conn.closed or self.conn.broken:
                    self._reconnect()
                return call()
            except SinkError as exc:  # opening a connection again failed: the database is still away
                why = str(exc)
            except psycopg.Error as exc:
                lost = self.conn.closed or self.conn.broken or isinstance(exc, psycopg.OperationalError)
                if not lost:  # the database answered: waiting will not change its mind
                    raise CommitFailed(f"{what} in {self.where} failed: {reason(exc, self.url)}") from exc
                why = reason(exc, self.url)
            if self._clock() + delay > deadline:
                raise CommitFailed(
                    f"{what} in {self.where}: the database stayed away ({why[:300]}); "
                    "what was committed before is intact, run again to resume"
                )
            get_logger().warning("database_retrying", what=what, reason=why[:300], wait_s=delay)
            self._sleep(delay)
            delay = min(delay * 2, 8.0)

    def _reconnect(self) -> None:
        try:
            self.conn.close()
        except psycopg.Error:
            pass
        self.conn = connect(self.url, rank=self.rank)
        if not self._try_lock():
            self.conn.close()
            raise CommitFailed(
                f"lost the writer lock of rank {self.rank} of {self.where} while the connection was down "
                "(another writer took it); what was committed is intact"
            )

    def close(self) -> None:
        """Close the connection, which lets go of the lock."""
        self.conn.close()
