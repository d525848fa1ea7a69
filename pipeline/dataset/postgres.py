"""Postgres + pgvector as a sink: every commit one transaction, resumable, one writer per rank.

:class:`PostgresSink` keeps the batches it is handed in memory (a bounded
amount) and commits them in one transaction: removals of rows whose source
changed or went away, the rows (binary ``COPY`` straight into the table, or,
when an id is already there, through a temporary table with ``ON CONFLICT
(id) DO UPDATE``), the error rows, the resume state of every input touched and
the commit's accounting row. A SIGKILL at any moment leaves the transaction
done or not done; the next run resumes from the state table.

A session advisory lock on (table, rank) keeps a second writer out. A
connection lost mid-run is opened again (and the lock taken again); a commit
whose outcome is unknown is looked up by its token before it is retried.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pipeline.config import Config, SinkConfig
from pipeline.dataset import postgres_rows as rows_
from pipeline.dataset import postgres_schema as schema
from pipeline.dataset.manifest import utc_now
from pipeline.dataset.postgres_schema import Names
from pipeline.dataset.tables import BASE_COLUMNS
from pipeline.embed.vectors import is_packed
from pipeline.errors import CommitFailed, PipelineError, SinkError
from pipeline.logs import get_logger, redact_url
from pipeline.types import Counts, EmbeddedBatch

#: pending vectors before a commit, whatever ``sink.shard_rows`` says (memory stays bounded)
MAX_PENDING_BYTES = 64 * 1024 * 1024
RETRY_S = 60.0  # how long a lost database is waited for before the run stops


def connect(url: str, *, rank: int = 0) -> psycopg.Connection[Any]:
    """An autocommit connection with pgvector's types; ``SinkError`` in one line when it cannot be had."""
    from pgvector.psycopg import register_vector

    name = f"pipeline:{socket.gethostname()}:{os.getpid()}:rank{rank}"[:63]
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10, application_name=name,
                               keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
    except psycopg.Error as exc:
        raise SinkError(f"cannot connect to sink.path {redact_url(url)}: {_reason(exc, url)}") from exc
    try:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SinkError(
                f"sink.path {redact_url(url)}: the pgvector extension is not installed and this user may not "
                "install it; run `CREATE EXTENSION vector;` as the database owner "
                "(Heroku: heroku pg:psql -c 'CREATE EXTENSION vector')"
            ) from exc
        register_vector(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _reason(exc: BaseException, url: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    password = schema.url_password(url)
    return redact_url(text.replace(password, "***") if password else text)


@dataclass
class _Pending:
    """What the next commit carries."""

    batches: list[EmbeddedBatch] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    marks: dict[str, int] = field(default_factory=dict)
    nbytes: int = 0
    rows: int = 0
    started_at: str | None = None
    opened_at: float | None = None

    def add(self, batch: EmbeddedBatch, now: float) -> None:
        self.batches.append(batch)
        self.counts += Counts.of(batch)
        self.nbytes += batch.vectors.nbytes
        self.rows += len(batch.chunks)
        for key, location in batch.marks:
            self.marks[key] = max(location, self.marks.get(key, -1))
        if self.opened_at is None:
            self.opened_at, self.started_at = now, utc_now()


class PostgresSink:
    """One rank's writer into ``sink.table``; see the module docstring."""

    def __init__(
        self,
        cfg: SinkConfig,
        *,
        rank: int,
        model: str,
        input_type: str | None,
        embedding_type: str,
        metadata_fields: list[str],
        run_started_at: str,
        chunking: dict[str, Any],
        build_index_on_commit: bool = False,
        lock_wait_s: float = 35.0,
        retry_s: float = RETRY_S,
        on_wait: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Connect, take the (table, rank) lock, check the table's model and types, load the resume state."""
        clash = [f for f in metadata_fields if f in BASE_COLUMNS]
        if clash:
            raise SinkError(f"source.metadata_fields: {clash[0]!r} is also a dataset column; rename it in the source")
        self.cfg, self.rank, self.embedding_type = cfg, rank, embedding_type
        self.names = Names(cfg.table)
        self.where = f"{redact_url(cfg.path)} table {cfg.table}"
        self.operator, _ = schema.distance_of(cfg, embedding_type)
        schema.check_index_options(cfg)
        self._metadata_fields = list(metadata_fields)
        self._index_on_commit = build_index_on_commit
        self._retry_s, self._clock, self._sleep = retry_s, clock, sleep
        self._pending = _Pending()
        self._removals: set[str] = set()
        self._dirty: set[str] = set()
        self._failed: BaseException | None = None
        self._closed = False
        self._busy = threading.Lock()  # the heartbeat's renew() may come while a commit runs
        self.conn = connect(cfg.path, rank=rank)
        try:
            self._take_lock(lock_wait_s, on_wait)
            self._open(model, input_type, chunking, run_started_at)
        except BaseException:
            self.conn.close()
            raise

    # ------------------------------------------------------------ opening

    def _take_lock(self, wait_s: float, on_wait: Callable[[dict[str, Any]], None] | None) -> None:
        deadline = self._clock() + wait_s
        told = False
        while not self._try_lock():
            if self._clock() >= deadline:
                raise SinkError(
                    f"another writer holds rank {self.rank} of {self.where} (it did not let go within "
                    f"{wait_s:g} s); stop it first, or give this one another run.rank or sink.table"
                )
            if not told and on_wait is not None:
                on_wait(self._lock_holder())
                told = True
            self._sleep(0.5)

    def _try_lock(self) -> bool:
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)", self.names.lock_key(self.rank)).fetchone()
        return bool(row and row[0])

    def _lock_holder(self) -> dict[str, Any]:
        key1, key2 = self.names.lock_key(self.rank)
        row = self.conn.execute(
            "SELECT a.application_name, a.client_addr::text FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::bigint::oid "
            "AND l.objid = %s::bigint::oid AND l.objsubid = 2", (key1, key2)).fetchone()
        parts = (row[0] if row else "").split(":")
        return {"host": parts[1] if len(parts) > 2 else (row[1] if row else None),
                "pid": parts[2] if len(parts) > 2 else None}

    def _open(self, model: str, input_type: str | None, chunking: dict[str, Any], started_at: str) -> None:
        n = self.names
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.names.lock_key(-1)[0],))
            for ddl in schema.side_tables(n):
                self.conn.execute(ddl)
            meta = self.conn.execute(sql.SQL(
                "SELECT model, input_type, embedding_type, dimensions, chunking FROM {m}").format(m=n.meta)).fetchone()
            if meta is None:
                self.conn.execute(sql.SQL(
                    "INSERT INTO {m} (format_version, model, input_type, embedding_type, chunking) "
                    "VALUES (%s, %s, %s, %s, %s)").format(m=n.meta),
                    (schema.FORMAT_VERSION, model, input_type, self.embedding_type, Jsonb(chunking)))
                meta = (model, input_type, self.embedding_type, None, chunking)
            self._check(meta, model, input_type, chunking)
            self.dimensions: int | None = meta[3]
            self.conn.execute(sql.SQL("UPDATE {r} SET status = 'unfinished' WHERE rank = %s AND status = 'running'")
                              .format(r=n.runs), (self.rank,))
            row = self.conn.execute(sql.SQL(
                "INSERT INTO {r} (rank, started_at, status) VALUES (%s, %s, 'running') RETURNING n"
            ).format(r=n.runs), (self.rank, started_at)).fetchone()
            assert row is not None
            self._run = row[0]
            self._load_state()
        self._columns = self._data_columns() if self.dimensions is not None else None

    def _check(self, meta: tuple[Any, ...], model: str, input_type: str | None, chunking: dict[str, Any]) -> None:
        mine, theirs = tuple(meta[:3]), (model, input_type, self.embedding_type)
        if mine != theirs:
            raise SinkError(
                f"{self.where} was made with model={mine[0]!r}, input_type={mine[1]!r}, embedding_type={mine[2]!r}; "
                f"refusing to mix in model={model!r}, input_type={input_type!r}, embedding_type={self.embedding_type!r} "
                "(use another sink.table, or `pipeline run --fresh` to start it over)"
            )
        if meta[4] is not None and meta[4] != chunking:
            raise SinkError(
                f"{self.where} was cut with chunking {meta[4]}; this config says {chunking}. Refusing to mix them: "
                "use another sink.table, or `pipeline run --fresh` to start it over"
            )

    def _load_state(self) -> None:
        n = self.names
        self._progress: dict[str, int] = {}
        self._files: dict[str, str] = {}
        self._offsets: dict[str, list[list[int]]] = {}
        cur = self.conn.execute(sql.SQL("SELECT key, location, signature, offsets FROM {s} WHERE rank = %s")
                                .format(s=n.state), (self.rank,))
        for key, location, signature, offsets in cur:
            if location is not None:
                self._progress[key] = int(location)
            if signature is not None:
                self._files[key] = signature
            if offsets is not None:
                self._offsets[key] = [[int(a), int(b)] for a, b in offsets]
        row = self.conn.execute(sql.SQL(
            "SELECT coalesce(sum(records), 0), coalesce(sum(rows - replaced - removed), 0), coalesce(sum(rows_reused), 0),"
            " coalesce(sum(errors - errors_removed), 0), coalesce(sum(requests), 0), coalesce(sum(retries), 0),"
            " coalesce(sum(prompt_tokens), 0), coalesce(sum(total_tokens), 0) FROM {c} WHERE rank = %s"
        ).format(c=n.commits), (self.rank,)).fetchone()
        self._counts = Counts(*(int(x) for x in row)) if row else Counts()

    def _data_columns(self) -> rows_.DataColumns:
        cur = self.conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s", (self.names.table,))
        existing = dict(cur.fetchall())
        metadata = {f: schema.CATALOG_TYPES.get(existing[f], "text") for f in self._metadata_fields if f in existing}
        return rows_.DataColumns(self.embedding_type, self.cfg.include_text and "text" in existing, metadata)

    # ------------------------------------------------------------ resume state (the Sink protocol)

    @property
    def counts(self) -> Counts:
        """This rank's totals as of the last commit (rows: those in the table)."""
        return self._counts

    def done_upto(self, key: str) -> int:
        """How far input ``key`` is committed (a location; ``END_OF_FILE`` when whole)."""
        return self._progress.get(key, 0)

    def signature(self, url: str) -> str | None:
        """The signature input ``url`` had when it was last read, if it was."""
        return self._files.get(url)

    def set_signature(self, url: str, signature: str) -> None:
        """Record ``url``'s signature with the next commit."""
        if self._files.get(url) != signature:
            self._files[url] = signature
            self._dirty.add(url)

    def restart(self, key: str, url: str) -> None:
        """Input ``key`` changed: the next read starts at its top (saved with the next commit)."""
        self._progress.pop(key, None)
        self._offsets.pop(url, None)
        self._dirty.update((key, url))

    def offsets(self) -> dict[str, list[list[int]]]:
        """The seek checkpoints of big input files, as saved."""
        return {url: [list(c) for c in cs] for url, cs in self._offsets.items()}

    def set_offsets(self, offsets: dict[str, list[list[int]]]) -> None:
        """Replace the seek checkpoints; saved with the next commit."""
        for url in set(offsets) | set(self._offsets):
            if offsets.get(url) != self._offsets.get(url):
                self._dirty.add(url)
        self._offsets = {url: [list(c) for c in cs] for url, cs in offsets.items()}

    def remove_sources(self, urls: list[str]) -> None:
        """The rows (and error rows) whose ``source`` is one of ``urls`` leave with the next commit.

        They are deleted at the start of that commit's transaction: rows the
        commit itself brings stay.
        """
        self._removals.update(urls)

    # ------------------------------------------------------------ writing

    def write_many(self, batches: Sequence[EmbeddedBatch]) -> list[dict[str, Any]]:
        """Take answered batches (in read order); commit when enough rows or bytes wait, or when due."""
        self._check_usable()
        committed: list[dict[str, Any]] = []
        for batch in batches:
            self._pending.add(batch, self._clock())
            if self._pending.rows >= self.cfg.shard_rows or self._pending.nbytes >= MAX_PENDING_BYTES:
                committed += self._commit()
        return committed + self.commit_if_due()

    def commit_due(self) -> bool:
        """Whether pending work has waited ``sink.shard_seconds`` (no I/O)."""
        opened = self._pending.opened_at
        return opened is not None and self._clock() - opened >= self.cfg.shard_seconds

    def commit_if_due(self) -> list[dict[str, Any]]:
        """Commit if :meth:`commit_due`."""
        self._check_usable()
        return self._commit() if self.commit_due() else []

    def commit(self) -> list[dict[str, Any]]:
        """Commit what was taken; in watch mode, build the vector index after the first load."""
        self._check_usable()
        entries = self._commit()
        if self._index_on_commit:
            self._build_index()
        return entries

    def renew(self) -> None:
        """Check the connection (and the lock) between commits; open it again if it was lost."""
        self._check_usable()
        if self._busy.acquire(blocking=False):  # a commit in progress checks it anyway
            try:
                self._with_connection(lambda: self.conn.execute("SELECT 1"), "checking the connection")
            finally:
                self._busy.release()

    def close(self, status: str) -> None:
        """Commit what is pending, build the index after a completed run, record the run, let go."""
        if self._closed:
            return
        error: CommitFailed | None = None
        try:
            if self._failed is None:
                try:
                    self._commit()
                    if status == "completed":
                        self._build_index()
                except CommitFailed as exc:
                    error = exc
            self._closed = True
            try:
                self._with_connection(lambda: self.conn.execute(
                    sql.SQL("UPDATE {r} SET finished_at = %s, status = %s WHERE n = %s").format(r=self.names.runs),
                    (utc_now(), "failed" if self._failed is not None or error else status, self._run)),
                    "recording the run", budget_s=min(self._retry_s, 5.0))
            except CommitFailed as exc:
                error = error or exc
        finally:
            self.conn.close()  # lets go of the session lock
        if error is not None:
            raise error

    # ------------------------------------------------------------ commits

    def _check_usable(self) -> None:
        if self._closed:
            raise CommitFailed(f"the Postgres sink for {self.where} is closed")
        if self._failed is not None:
            raise CommitFailed(f"an earlier commit to {self.where} failed: {self._failed}")

    def _commit(self) -> list[dict[str, Any]]:
        with self._busy:
            return self._commit_pending()

    def _commit_pending(self) -> list[dict[str, Any]]:
        pending = self._pending
        if not pending.batches and not pending.marks and not self._dirty and not self._removals:
            return []
        token = uuid.uuid4()
        if pending.batches and self.dimensions is None:
            width = pending.batches[0].vectors.shape[1]
            self.dimensions = width * (8 if is_packed(self.embedding_type) else 1)
        self._check_dimensions(pending.batches)
        progress = dict(self._progress)
        for key, location in pending.marks.items():
            progress[key] = max(location, progress.get(key, -1))
        dirty = self._dirty | set(pending.marks)
        state = [(self.rank, k, progress.get(k), self._files.get(k),
                  Jsonb(self._offsets[k]) if k in self._offsets else None) for k in sorted(dirty)]
        removals = sorted(self._removals)
        attempt = [0]

        def once() -> dict[str, Any]:
            if attempt[0] and self._landed(token):
                return self._landed_entry(token)
            attempt[0] += 1
            return self._transaction(token, pending, state, removals)

        try:
            entry = self._with_connection(once, "committing")
        except BaseException as exc:
            # the rows of this commit are lost to this process; later marks would claim them
            self._failed = exc
            raise
        self._progress = progress
        self._dirty.clear()
        self._removals.clear()
        self._pending = _Pending()
        self._counts += Counts(
            pending.counts.records_read, entry["rows"] - entry["replaced"] - entry["removed"],
            pending.counts.rows_reused, entry["errors"] - entry["errors_removed"], pending.counts.requests,
            pending.counts.retries, pending.counts.prompt_tokens, pending.counts.total_tokens)
        return [entry] if pending.batches else []

    def _check_dimensions(self, batches: Sequence[EmbeddedBatch]) -> None:
        for batch in batches:
            if batch.chunks:
                dims = batch.vectors.shape[1] * (8 if is_packed(self.embedding_type) else 1)
                if dims != self.dimensions:
                    raise SinkError(f"{self.where} holds {self.dimensions}-dimensional vectors; "
                                    f"the API now returns {dims} dimensions, refusing to mix them")

    def _transaction(self, token: uuid.UUID, pending: _Pending, state: list[tuple[Any, ...]],
                     removals: list[str]) -> dict[str, Any]:
        """One commit, all or nothing (see the module docstring)."""
        n, conn = self.names, self.conn
        batches = [b for b in pending.batches if b.chunks]
        failures = [f for b in pending.batches for f in b.failures]
        removed = errors_removed = replaced = 0
        columns = self._columns
        with conn.transaction(), conn.cursor() as cur:
            if batches:
                columns = self._prepare_table(cur, batches)
            if removals:
                cur.execute(sql.SQL("DELETE FROM {t} WHERE source = ANY(%s)").format(t=n.data), (removals,))
                removed = max(cur.rowcount, 0)
                cur.execute(sql.SQL("DELETE FROM {e} WHERE source = ANY(%s)").format(e=n.errors), (removals,))
                errors_removed = max(cur.rowcount, 0)
            if batches:
                assert columns is not None
                replaced = self._insert(cur, columns, batches)
            if failures:
                rows_.copy_errors(cur, n, self.rank, failures)
            if state:
                cur.executemany(sql.SQL(
                    "INSERT INTO {s} (rank, key, location, signature, offsets) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (rank, key) DO UPDATE SET location = EXCLUDED.location, "
                    "signature = EXCLUDED.signature, offsets = EXCLUDED.offsets").format(s=n.state), state)
            c = pending.counts
            entry = {
                "path": f"{n.table}", "kind": "data", "rows": sum(len(b.chunks) for b in batches),
                "replaced": replaced, "removed": removed, "errors": len(failures), "errors_removed": errors_removed,
                "records": c.records_read, "rows_reused": c.rows_reused, "requests": c.requests,
                "retries": c.retries, "prompt_tokens": c.prompt_tokens, "total_tokens": c.total_tokens,
                "started_at": pending.started_at, "finished_at": utc_now(),
            }
            keys = [k for k in entry if k not in ("path", "kind")]
            row = cur.execute(sql.SQL("INSERT INTO {c} (token, rank, {cols}) VALUES (%s, %s, {vals}) RETURNING n").format(
                c=n.commits, cols=sql.SQL(", ").join(map(sql.Identifier, keys)),
                vals=sql.SQL(", ").join(sql.Placeholder() * len(keys))),
                (token, self.rank, *(entry[k] for k in keys))).fetchone()
        entry["path"] = f"{n.table} commit {row[0] if row else '?'}"
        self._columns = columns
        return entry

    def _insert(self, cur: psycopg.Cursor[Any], columns: rows_.DataColumns, batches: list[EmbeddedBatch]) -> int:
        """The rows: COPY straight in; on an id already there, the temporary-table upsert instead.

        Straight in is half the server's work (the temporary table is written
        and read again); a bulk load meets no existing id.
        """
        keep, total = rows_.last_of_each_id(batches)
        if len(keep) == total:
            try:
                with self.conn.transaction():  # a savepoint
                    rows_.copy_rows(cur, self.names.data, columns, columns.rows(batches))
                return 0
            except psycopg.errors.UniqueViolation:
                pass
        return rows_.upsert_rows(cur, self.names, columns, batches)

    def _prepare_table(self, cur: psycopg.Cursor[Any], batches: list[EmbeddedBatch]) -> rows_.DataColumns:
        """Make ``{table}`` at the first commit; add or widen metadata columns as values need.

        Returns the columns to copy; they become the sink's once the transaction is through.
        """
        n = self.names
        columns = self._columns
        if columns is None:
            assert self.dimensions is not None
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (n.lock_key(-1)[0],))
            for ddl in schema.data_table(n, self.embedding_type, self.dimensions, self.cfg.include_text):
                cur.execute(ddl)
            cur.execute(sql.SQL("UPDATE {m} SET dimensions = %s").format(m=n.meta), (self.dimensions,))
            columns = self._data_columns()
        needed = dict(columns.metadata)
        for name in self._metadata_fields:
            for batch in batches:
                for chunk in batch.chunks:
                    needed[name] = schema.widen(needed.get(name), schema.value_type(chunk.metadata.get(name)))
        changed = {k: v for k, v in needed.items() if v is not None and v != columns.metadata.get(k)}
        for name, kind in changed.items():
            cur.execute(schema.add_or_widen(n, name, columns.metadata.get(name), kind))
        if changed:
            columns = rows_.DataColumns(self.embedding_type, columns.include_text,
                                        {k: v for k, v in needed.items() if v is not None})
        return columns

    def _landed(self, token: uuid.UUID) -> bool:
        row = self.conn.execute(sql.SQL("SELECT 1 FROM {c} WHERE token = %s").format(c=self.names.commits),
                                (token,)).fetchone()
        return row is not None

    def _landed_entry(self, token: uuid.UUID) -> dict[str, Any]:
        cur = self.conn.cursor(row_factory=psycopg.rows.dict_row)
        row = cur.execute(sql.SQL("SELECT * FROM {c} WHERE token = %s").format(c=self.names.commits), (token,)).fetchone()
        assert row is not None
        entry = {k: v for k, v in row.items() if k not in ("token", "rank", "n")}
        return {"path": f"{self.names.table} commit {row['n']}", "kind": "data", **entry}

    # ------------------------------------------------------------ a connection that may go away

    def _with_connection(self, call: Callable[[], Any], what: str, *, budget_s: float | None = None) -> Any:
        """``call()``, reconnecting (and taking the lock again) while the database is away, for a while."""
        deadline = self._clock() + (self._retry_s if budget_s is None else budget_s)
        delay = 0.5
        while True:
            try:
                if self.conn.closed or self.conn.broken:
                    self._reconnect()
                return call()
            except SinkError as exc:  # opening a connection again failed: the database is still away
                reason = str(exc)
            except psycopg.Error as exc:
                lost = self.conn.closed or self.conn.broken or isinstance(exc, psycopg.OperationalError)
                if not lost:  # the database answered: waiting will not change its mind
                    raise CommitFailed(f"{what} in {self.where} failed: {_reason(exc, self.cfg.path)}") from exc
                reason = _reason(exc, self.cfg.path)
            if self._clock() + delay > deadline:
                raise CommitFailed(
                    f"{what} in {self.where}: the database stayed away ({reason[:300]}); "
                    "what was committed before is intact, run again to resume"
                )
            get_logger().warning("database_retrying", what=what, reason=reason[:300], wait_s=delay)
            self._sleep(delay)
            delay = min(delay * 2, 8.0)

    def _reconnect(self) -> None:
        try:
            self.conn.close()
        except psycopg.Error:
            pass
        self.conn = connect(self.cfg.path, rank=self.rank)
        if not self._try_lock():
            self.conn.close()
            raise CommitFailed(
                f"lost the writer lock of rank {self.rank} of {self.where} while the connection was down "
                "(another writer took it); what was committed is intact"
            )

    # ------------------------------------------------------------ the vector index

    def _build_index(self) -> None:
        """Create ``sink.index`` once the table holds rows (kept afterwards); a failure is only logged."""
        if self._columns is None or self.cfg.index == "none" or self._has_index():
            return
        log = get_logger()
        rows = self.conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=self.names.data)).fetchone()
        count = int(rows[0]) if rows else 0
        if count == 0:
            return
        ddl = schema.index_ddl(self.names, self.cfg, self.embedding_type, count)
        if ddl is None:
            return
        started = time.monotonic()
        try:
            self.conn.execute(ddl)
        except psycopg.Error as exc:
            if self.conn.broken:
                raise CommitFailed(f"building the index of {self.where}: {_reason(exc, self.cfg.path)}") from exc
            log.warning("index_not_built", table=self.names.table, index=self.cfg.index,
                        reason=_reason(exc, self.cfg.path)[:300],
                        hint="pgvector indexes vector columns up to 2,000 dimensions; search still works, unindexed")
            return
        log.info("index_built", table=self.names.table, index=self.cfg.index, rows=count,
                 seconds=round(time.monotonic() - started, 1))

    def _has_index(self) -> bool:
        row = self.conn.execute("SELECT to_regclass(%s)", (sql.Identifier(f"{self.names.table}_embedding_idx")
                                                            .as_string(self.conn),)).fetchone()
        return bool(row and row[0])


def open_postgres_sink(
    cfg: Config,
    *,
    started_at: str,
    metadata_fields: list[str],
    fresh: bool = False,
    on_wait: Callable[[dict[str, Any]], None] | None = None,
) -> PostgresSink:
    """This rank's Postgres sink, holding its lock, refusing a table made with other settings.

    ``fresh`` drops the table and its side tables first (``world_size: 1`` only).
    """
    if fresh:
        if cfg.run.world_size != 1:
            raise SinkError("--fresh deletes the whole table; use it with world_size 1 only")
        drop_tables(cfg.sink)
    emb = cfg.embedding
    return PostgresSink(
        cfg.sink, rank=cfg.run.rank, model=emb.model, input_type=emb.input_type,
        embedding_type=emb.embedding_type, metadata_fields=metadata_fields, run_started_at=started_at,
        chunking=cfg.chunking.model_dump(), build_index_on_commit=cfg.run.watch,
        lock_wait_s=cfg.run.shutdown_grace_s + 10, on_wait=on_wait,
    )


def drop_tables(cfg: SinkConfig) -> None:
    """Drop ``sink.table`` and its side tables (``--fresh``)."""
    n = Names(cfg.table)
    with connect(cfg.path) as conn:
        for ident in (n.data, n.errors, n.commits, n.state, n.runs, n.meta):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=ident))
