"""Postgres + pgvector as a sink: every commit one transaction, resumable, one writer per rank.

:class:`PostgresSink` keeps the batches it is handed in memory (a bounded
amount) and commits them in one transaction: removals of rows whose source
went away, or changed (a changed input's old rows, those its rank wrote,
leave in the commit that brings its first new rows, before those are copied
in, so an id the new version keeps is not lost), the rows (binary ``COPY``
straight into the table, or, when an id is already there, through a
temporary table with ``ON CONFLICT (id) DO UPDATE``), the error rows, the
resume state of every input touched (the state rows of inputs that went away
deleted) and the commit's accounting row. A SIGKILL at any moment leaves the
transaction done or not done; the next run resumes from the state table.

A session advisory lock on (table, rank) keeps a second writer out. A
connection lost mid-run is opened again (and the lock taken again); a commit
whose outcome is unknown is looked up by its token before it is retried.
The vector index is built after the first load: at the end of a completed
run, or in watch mode at the end of the first round.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import psycopg
from psycopg import sql

from pipeline.config import Config, SinkConfig
from pipeline.dataset import postgres_rows as rows_
from pipeline.dataset import postgres_schema as schema
from pipeline.dataset.manifest import utc_now
from pipeline.dataset.postgres_reuse import release, retire, retired_sources
from pipeline.dataset.postgres_schema import Names
from pipeline.dataset.postgres_session import Session, connect, reason
from pipeline.dataset.postgres_state import (WRITER_COLUMN, WRITER_SETTING, Made, ResumeState, Saved, SinkState,
                                             add_writer_column, landed_commit, load_counts, open_tables)
from pipeline.dataset.tables import BASE_COLUMNS
from pipeline.embed.vectors import is_packed
from pipeline.errors import CommitFailed, SinkError
from pipeline.dataset.state import of_url
from pipeline.types import END_OF_FILE, Counts, EmbeddedBatch

__all__ = ["PostgresSink", "connect", "open_postgres_sink", "drop_tables"]

#: pending vectors before a commit, whatever ``sink.shard_rows`` says (memory stays bounded)
MAX_PENDING_BYTES = 64 * 1024 * 1024
RETRY_S = 60.0  # how long a lost database is waited for before the run stops


@dataclass
class _Pending:
    """What the next commit carries."""

    batches: list[EmbeddedBatch] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    marks: dict[str, int] = field(default_factory=dict)
    #: key → the location of the last record of these batches' rows
    last: dict[str, int] = field(default_factory=dict)
    nbytes: int = 0
    rows: int = 0
    errors: int = 0
    started_at: str | None = None
    opened_at: float | None = None
    #: (source, doc_id) of kept rows whose ids these batches' rows take over
    displaced: set[tuple[str, str]] = field(default_factory=set)

    def add(self, batch: EmbeddedBatch, now: float) -> None:
        self.batches.append(batch)
        self.displaced.update(batch.displaced)
        self.counts += Counts.of(batch)
        self.nbytes += batch.vectors.nbytes
        self.rows += len(batch.chunks)
        self.errors += len(batch.failures)
        for key, location in batch.marks:
            self.marks[key] = max(location, self.marks.get(key, -1))
        for item in (*batch.chunks, *batch.failures):
            key = item.source + item.part
            self.last[key] = max(item.location, self.last.get(key, -1))
        if self.opened_at is None:
            self.opened_at, self.started_at = now, utc_now()

    def overflows(self, batch: EmbeddedBatch, limit: int) -> bool:
        """Whether ``batch`` would take what waits past ``limit`` rows or ``limit`` error rows."""
        return bool(self.batches) and (self.rows + len(batch.chunks) > limit
                                       or self.errors + len(batch.failures) > limit)

    def full(self, limit: int) -> bool:
        """Whether ``limit`` rows or error rows wait, or vectors of ``MAX_PENDING_BYTES``."""
        return self.rows >= limit or self.errors >= limit or self.nbytes >= MAX_PENDING_BYTES


@dataclass(frozen=True)
class _Removals:
    """The sources whose rows a commit deletes first: inputs that went away (every rank's rows of them) and
    changed inputs (this rank's rows of them: another rank may be copying in new rows of other pieces)."""

    gone: list[str]
    replaced: list[str]
    #: (source, doc_id) of documents of kept inputs whose ids the commit's rows take over (every rank's rows)
    displaced: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.gone or self.replaced or self.displaced)

    def delete(self, cur: psycopg.Cursor[Any], n: Names, rank: int) -> tuple[int, int]:
        """Delete them (in the commit's transaction): how many rows and error rows left."""
        rows = errors = 0
        if self.gone:
            cur.execute(sql.SQL("DELETE FROM {t} WHERE source = ANY(%s)").format(t=n.data), (self.gone,))
            rows += max(cur.rowcount, 0)
            cur.execute(sql.SQL("DELETE FROM {e} WHERE source = ANY(%s)").format(e=n.errors), (self.gone,))
            errors += max(cur.rowcount, 0)
        if self.displaced:
            sources, docs = [s for s, _ in self.displaced], [d for _, d in self.displaced]
            cur.execute(sql.SQL("DELETE FROM {t} WHERE (source, doc_id) IN (SELECT * FROM unnest(%s::text[], "
                                "%s::text[]))").format(t=n.data), (sources, docs))
            rows += max(cur.rowcount, 0)
        if self.replaced:  # rows of an earlier version have no writer: any rank's replacement takes them
            mine = sql.SQL("source = ANY(%s) AND ({w} = %s OR {w} IS NULL)").format(w=sql.Identifier(WRITER_COLUMN))
            retire(cur, n, mine, (self.replaced, rank), rank)
            cur.execute(sql.SQL("DELETE FROM {t} WHERE {mine}").format(t=n.data, mine=mine), (self.replaced, rank))
            rows += max(cur.rowcount, 0)
            cur.execute(sql.SQL("DELETE FROM {e} WHERE source = ANY(%s) AND rank = %s").format(e=n.errors),
                        (self.replaced, rank))
            errors += max(cur.rowcount, 0)
        return rows, errors


class PostgresSink(SinkState):
    """One rank's writer into ``sink.table``; see the module docstring (its resume state: :class:`SinkState`)."""

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
        id_field: str | None = None,
        build_index_on_commit: bool = False,
        fresh: bool = False,
        lock_wait_s: float = 35.0,
        retry_s: float = RETRY_S,
        on_wait: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Connect, take the (table, rank) lock, check the table's model and types, load the resume state.

        ``fresh`` drops the tables first, once the lock is held (``--fresh``).
        """
        clash = [f for f in metadata_fields if f in BASE_COLUMNS or f == WRITER_COLUMN]
        if clash:
            raise SinkError(f"source.metadata_fields: {clash[0]!r} is also a dataset column; rename it in the source")
        self.cfg, self.rank, self.embedding_type = cfg, rank, embedding_type
        self.names = Names(cfg.table)
        schema.distance_of(cfg, embedding_type)  # a distance that does not apply fails now
        schema.check_index_options(cfg)
        self._metadata_fields = list(metadata_fields)
        self._index_on_commit = build_index_on_commit
        self._clock = clock
        self._pending = _Pending()
        self._removals: set[str] = set()
        self._changed: dict[str, str | None] = {}
        self._replacing: set[str] = set()
        self._failed: BaseException | None = None
        self._closed = False
        self._busy = threading.Lock()  # the heartbeat's renew() may come while a commit runs
        self.session = Session(cfg.path, self.names, rank, retry_s=retry_s, clock=clock, sleep=sleep)
        self.where = self.session.where
        try:
            self.session.lock(lock_wait_s, on_wait)
            conn = self.session.conn
            if fresh:
                drop_tables(conn, self.names)
            made = Made(model, input_type, embedding_type, chunking, id_field)
            self.dimensions, self._run = open_tables(conn, self.names, rank, made, self.where, run_started_at)
            self._state = ResumeState(conn, self.names, rank)
            #: changed inputs whose old rows' vectors wait in ``{table}_retired`` for their new rows to be whole
            self._retired = retired_sources(conn, self.names, rank)
            self._counts = load_counts(conn, self.names, rank)
            self._columns = (rows_.existing_columns(conn, self.names, embedding_type, cfg.include_text,
                                                    self._metadata_fields) if self.dimensions is not None else None)
        except psycopg.Error as exc:  # a user who may not create tables, for one: nothing was started
            self.session.close()
            raise SinkError(f"cannot open {self.where}: {reason(exc, cfg.path)}") from exc
        except BaseException:
            self.session.close()
            raise

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The current connection (a new one after the database went away)."""
        return self.session.conn

    # ------------------------------------------------------------ the table's rows

    def known_ids(self) -> Iterator[tuple[list[str], list[str]]]:
        """The ids and sources of the table's rows, a block at a time (a server-side cursor)."""
        return known_ids(self.conn, self.names)

    # ------------------------------------------------------------ writing

    def write_many(self, batches: Sequence[EmbeddedBatch]) -> list[dict[str, Any]]:
        """Take answered batches (in read order); commit when enough rows or bytes wait, or when due.

        A commit holds whole batches and at most ``sink.shard_rows`` rows and
        as many error rows, as a file dataset's shards do: what waits is
        committed first when the next batch would take it past that.
        """
        self._check_usable()
        committed: list[dict[str, Any]] = []
        limit = self.cfg.shard_rows
        for batch in batches:
            if self._pending.overflows(batch, limit):
                committed += self._commit()
            if self._changed:
                self._replace_touched(batch)
            self._pending.add(batch, self._clock())
            if self._pending.full(limit):
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

    def release_retired(self) -> None:
        """Nothing to delete: a table's rows leave inside their commit."""

    def replacing(self) -> set[str]:
        """Inputs whose replacement a run left unfinished: their old rows' vectors are kept for reuse."""
        return set(self._retired)

    def _release_whole(self) -> None:
        """Forget the kept vectors of changed inputs that are whole again (or gone)."""
        state = self._state

        def whole(url: str) -> bool:
            if url not in state.files:
                return True
            keys = [k for k in state.progress if of_url(k, url)]
            return url not in self._changed and bool(keys) and all(state.progress[k] >= END_OF_FILE for k in keys)

        done = {url for url in self._retired if whole(url)}
        if not done:
            return
        try:
            release(self.conn, self.names, self.rank, done)
        except psycopg.Error:  # only a cache of vectors: the next commit tries again
            return
        self._retired -= done

    def renew(self) -> None:
        """Check the connection (and the lock) between commits; open it again if it was lost."""
        self._check_usable()
        if self._busy.acquire(blocking=False):  # a commit in progress checks it anyway
            try:
                self.session.run(lambda: self.conn.execute("SELECT 1"), "checking the connection")
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
            ended = "failed" if self._failed is not None or error else status
            try:
                self.session.run(lambda: self.conn.execute(
                    sql.SQL("UPDATE {r} SET finished_at = %s, status = %s WHERE n = %s").format(r=self.names.runs),
                    (utc_now(), ended, self._run)), "recording the run", budget_s=min(self.session.retry_s, 5.0))
            except CommitFailed as exc:
                error = error or exc
        finally:
            self.session.close()
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
        if not (pending.batches or pending.marks or self._state.dirty or self._removals or self._replacing):
            return []
        token = uuid.uuid4()
        self._check_dimensions(pending.batches)
        state = self._state.after(pending.marks, pending.last)
        removals = _Removals(sorted(self._removals), sorted(self._replacing), sorted(pending.displaced))
        tries = [0]

        def once() -> dict[str, Any]:
            landed = landed_commit(self.conn, self.names, token) if tries[0] else None
            if landed is not None:  # the last try went through before the line dropped
                return landed
            tries[0] += 1
            return self._transaction(token, pending, state, removals)

        try:
            entry = self.session.run(once, "committing")
        except BaseException as exc:
            # the rows of this commit are lost to this process; later marks would claim them
            self._failed = exc
            raise
        self._state.committed(state)
        self._removals.clear()
        self._retired |= set(removals.replaced)
        self._replacing.clear()
        self._release_whole()
        self._pending = _Pending()
        c = pending.counts
        self._counts += Counts(c.records_read, entry["rows"] - entry["replaced"] - entry["removed"], c.rows_reused,
                               entry["errors"] - entry["errors_removed"], c.requests, c.retries, c.prompt_tokens,
                               c.total_tokens)
        return [entry] if pending.batches else []

    def _check_dimensions(self, batches: Sequence[EmbeddedBatch]) -> None:
        for batch in batches:
            if batch.chunks:
                dims = batch.vectors.shape[1] * (8 if is_packed(self.embedding_type) else 1)
                if self.dimensions is None:
                    self.dimensions = dims
                elif dims != self.dimensions:
                    raise SinkError(f"{self.where} holds {self.dimensions}-dimensional vectors; "
                                    f"the API now returns {dims} dimensions, refusing to mix them")

    def _transaction(self, token: uuid.UUID, pending: _Pending, state: Saved, removals: _Removals) -> dict[str, Any]:
        """One commit, all or nothing (see the module docstring)."""
        n, conn = self.names, self.conn
        batches = [b for b in pending.batches if b.chunks]
        failures = [f for b in pending.batches for f in b.failures]
        replaced = 0
        columns = self._columns
        with conn.transaction(), conn.cursor() as cur:
            if batches:
                if columns is None:
                    assert self.dimensions is not None
                    columns = rows_.make_table(cur, n, self.embedding_type, self.dimensions, self.cfg.include_text,
                                               self._metadata_fields)
                    add_writer_column(cur, n)
                columns = rows_.fit_metadata(cur, n, columns, self._metadata_fields, batches)
            # before the rows: a row this commit brings with an old id must stay
            removed, errors_removed = removals.delete(cur, n, self.rank) if removals else (0, 0)
            if batches:
                assert columns is not None
                cur.execute("SELECT set_config(%s, %s, true)", (WRITER_SETTING, str(self.rank)))  # the rows' writer
                replaced = rows_.insert_rows(cur, n, columns, batches)
                if replaced:  # rows that took the place of another rank's are this rank's now
                    cur.execute(sql.SQL("UPDATE {t} SET {w} = %s WHERE id = ANY(%s) AND {w} IS DISTINCT FROM %s")
                                .format(t=n.data, w=sql.Identifier(WRITER_COLUMN)),
                                (self.rank, [c.id for b in batches for c in b.chunks], self.rank))
            if failures:
                rows_.copy_errors(cur, n, self.rank, failures)
            self._state.save(cur, state)
            c = pending.counts
            entry = {
                "path": n.table, "kind": "data", "rows": sum(len(b.chunks) for b in batches),
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

    def _build_index(self) -> None:
        if self._columns is not None:
            self.session.run(lambda: schema.build_index(self.conn, self.names, self.cfg, self.embedding_type,
                                                        self.where), "building the index")


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
    if fresh and cfg.run.world_size != 1:
        raise SinkError("--fresh deletes the whole table; use it with world_size 1 only")
    emb = cfg.embedding
    return PostgresSink(
        cfg.sink, rank=cfg.run.rank, model=emb.model, input_type=emb.input_type,
        embedding_type=emb.embedding_type, metadata_fields=metadata_fields, run_started_at=started_at,
        chunking=cfg.chunking.model_dump(), id_field=cfg.source.id_field, build_index_on_commit=cfg.run.watch, fresh=fresh,
        lock_wait_s=cfg.run.shutdown_grace_s + 10, on_wait=on_wait,
    )


def drop_tables(conn: psycopg.Connection[Any], names: Names) -> None:
    """Drop ``sink.table`` and its side tables, in one transaction (``--fresh``)."""
    with conn.transaction():
        for ident in (names.data, names.errors, names.commits, names.state, names.runs, names.meta, names.retired):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=ident))


def known_ids(conn: psycopg.Connection[Any], names: Names) -> Iterator[tuple[list[str], list[str]]]:
    """The ids and sources of the rows of table ``names``, a block at a time (a server-side cursor); none
    before the table is made (at the first commit, once the width is known)."""
    name = sql.Identifier(names.table).as_string(conn)
    if conn.execute("SELECT to_regclass(%s)", [name]).fetchone()[0] is None:  # type: ignore[index]
        return
    with conn.transaction(), conn.cursor(name="pipeline_known_ids") as cursor:
        cursor.execute(sql.SQL("SELECT id, source FROM {}").format(names.data))
        while rows := cursor.fetchmany(50_000):
            yield [r[0] for r in rows], [r[1] for r in rows]
