"""What a Postgres sink remembers between runs: the table's settings, the runs, the resume state.

``{table}_meta`` says which model, types and chunking the table was made
with, and the ``source.id_field`` its ids came from (a config with others is
refused, as the file dataset refuses it);
``{table}_runs`` records every run; ``{table}_state`` holds, per rank and
input, how far it is committed, its signature, its seek checkpoints and,
once it is whole, the location of its last record (to read on after it when
it grows). A commit writes only the state rows it changed, and deletes those
of inputs that are gone. :class:`SinkState` is the sink's resume-state half:
what the job asks and tells it between commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pipeline.dataset import postgres_schema as schema
from pipeline.dataset.postgres_schema import Names
from pipeline.dataset.state import State, held_back, of_url
from pipeline.errors import SinkError
from pipeline.stages.ids import DUPLICATE_ID, losers_of
from pipeline.types import END_OF_FILE, Counts, EmbeddedBatch

#: ``{table}_state``'s column of ends, added to tables made before it
END_COLUMN = "end_location"
#: ``{table}_meta``'s column of the ``source.id_field`` the ids came from, added to tables made before it
ID_FIELD_COLUMN = "id_field"
#: ``{table}``'s column of the rank that wrote each row (NULL: written before it), and the setting its default reads
WRITER_COLUMN = "writer_rank"
WRITER_SETTING = "pipeline.rank"


@dataclass(frozen=True)
class Made:
    """What the table was made with, as ``{table}_meta`` says."""

    model: str
    input_type: str | None
    embedding_type: str
    chunking: dict[str, Any]
    #: the ``source.id_field`` (None: a table of a version that did not record it, taken as ours)
    id_field: str | None = None


def open_tables(conn: psycopg.Connection[Any], names: Names, rank: int, made: Made, where: str,
                started_at: str) -> tuple[int | None, int]:
    """Create the side tables if missing, check the settings, record the run: (dimensions, run id)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (names.lock_key(-1)[0],))  # one creator at a time
        for ddl in schema.side_tables(names):
            conn.execute(ddl)
        _add_column(conn, f"{names.table}_state", names.state, END_COLUMN, "bigint")
        _add_column(conn, f"{names.table}_meta", names.meta, ID_FIELD_COLUMN, "text")
        row = conn.execute(sql.SQL("SELECT model, input_type, embedding_type, chunking, id_field, dimensions FROM {m}")
                           .format(m=names.meta)).fetchone()
        if row is None:
            conn.execute(sql.SQL("INSERT INTO {m} (format_version, model, input_type, embedding_type, chunking, "
                                 "id_field) VALUES (%s, %s, %s, %s, %s, %s)").format(m=names.meta),
                         (schema.FORMAT_VERSION, made.model, made.input_type, made.embedding_type,
                          Jsonb(made.chunking), made.id_field))
            dimensions = None
        else:
            _check(_made(row, made), made, where)
            if row[4] is None and made.id_field is not None:  # made before it was recorded: from now on
                conn.execute(sql.SQL("UPDATE {m} SET id_field = %s").format(m=names.meta), (made.id_field,))
            dimensions = row[5]
            if dimensions is not None:  # {table} is there
                add_writer_column(conn, names)
        conn.execute(sql.SQL("UPDATE {r} SET status = 'unfinished' WHERE rank = %s AND status = 'running'")
                     .format(r=names.runs), (rank,))
        run = conn.execute(sql.SQL("INSERT INTO {r} (rank, started_at, status) VALUES (%s, %s, 'running') "
                                   "RETURNING n").format(r=names.runs), (rank, started_at)).fetchone()
    assert run is not None
    return dimensions, int(run[0])


def _add_column(conn: psycopg.Connection[Any], name: str, table: sql.Identifier, column: str, kind: str) -> None:
    """Give a side table made by an earlier version a column it lacks (the state table's ends, unknown for
    its inputs; the meta table's id_field, taken as the config's)."""
    found = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                         "AND table_name = %s AND column_name = %s", (name, column)).fetchone()
    if found is None:  # looked up first: ALTER TABLE locks the table even when the column is there
        conn.execute(sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} {k}").format(
            t=table, c=sql.Identifier(column), k=sql.SQL(kind)))


def add_writer_column(conn: Any, names: Names) -> None:
    """Give ``{table}`` its column of the rank that wrote each row, filled by a default from the commit's
    ``pipeline.rank`` setting (rows of an earlier version: NULL). A changed input's old rows are only its
    rank's: another rank may hold pieces of the same file, and copy in their new rows first."""
    found = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                         "AND table_name = %s AND column_name = %s", (names.table, WRITER_COLUMN)).fetchone()
    if found is None:
        column = sql.Identifier(WRITER_COLUMN)
        conn.execute(sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} int").format(t=names.data, c=column))
        conn.execute(sql.SQL("ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT nullif(current_setting({s}, true), '')::int")
                     .format(t=names.data, c=column, s=sql.Literal(WRITER_SETTING)))


def check_made(conn: psycopg.Connection[Any], names: Names, made: Made, where: str) -> None:
    """``SinkError`` when ``{table}_meta`` says the table was made with other settings than ``made`` (the
    refusal a run opens the table with); nothing when there is no table yet. Reads only: for validate."""
    if conn.execute("SELECT to_regclass(%s)", [names.meta.as_string(conn)]).fetchone() in (None, (None,)):
        return
    # to_jsonb: a table of an earlier version has no id_field column, and this reads without adding it
    row = conn.execute(sql.SQL("SELECT model, input_type, embedding_type, chunking, to_jsonb(m) ->> {c} FROM {m} m")
                       .format(m=names.meta, c=sql.Literal(ID_FIELD_COLUMN))).fetchone()
    if row is not None:
        _check(_made(row, made), made, where)


def _made(row: Any, mine: Made) -> Made:
    """What a ``{table}_meta`` row says (a table of an earlier version has no chunking nor id_field: taken
    as ours)."""
    return Made(row[0], row[1], row[2], row[3] if row[3] is not None else mine.chunking,
                row[4] if row[4] is not None else mine.id_field)


def _check(theirs: Made, mine: Made, where: str) -> None:
    if (theirs.model, theirs.input_type, theirs.embedding_type) != (mine.model, mine.input_type, mine.embedding_type):
        raise SinkError(
            f"{where} was made with model={theirs.model!r}, input_type={theirs.input_type!r}, "
            f"embedding_type={theirs.embedding_type!r}; refusing to mix in model={mine.model!r}, "
            f"input_type={mine.input_type!r}, embedding_type={mine.embedding_type!r} "
            "(use another sink.table, or `pipeline run --fresh` to start it over)"
        )
    if theirs.chunking != mine.chunking:
        raise SinkError(
            f"{where} was cut with chunking {theirs.chunking}; this config says {mine.chunking}. Refusing to mix "
            "them: use another sink.table, or `pipeline run --fresh` to start it over"
        )
    if None not in (theirs.id_field, mine.id_field) and theirs.id_field != mine.id_field:
        raise SinkError(
            f"{where} took its ids from source.id_field {theirs.id_field!r}; this config says {mine.id_field!r}. "
            "Refusing to mix them: use another sink.table, or `pipeline run --fresh` to start it over"
        )


def landed_commit(conn: psycopg.Connection[Any], names: Names, token: Any) -> dict[str, Any] | None:
    """The entry of the commit with ``token``, if it went through (a retry after a lost connection asks)."""
    from psycopg.rows import dict_row

    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(sql.SQL("SELECT * FROM {c} WHERE token = %s").format(c=names.commits), (token,)).fetchone()
    if row is None:
        return None
    entry = {k: v for k, v in row.items() if k not in ("token", "rank", "n")}
    return {"path": f"{names.table} commit {row['n']}", "kind": "data", **entry}


def load_counts(conn: psycopg.Connection[Any], names: Names, rank: int) -> Counts:
    """This rank's totals from its commits (rows: those still in the table)."""
    row = conn.execute(sql.SQL(
        "SELECT coalesce(sum(records), 0), coalesce(sum(rows - replaced - removed), 0), coalesce(sum(rows_reused), 0),"
        " coalesce(sum(errors - errors_removed), 0), coalesce(sum(requests), 0), coalesce(sum(retries), 0),"
        " coalesce(sum(prompt_tokens), 0), coalesce(sum(total_tokens), 0) FROM {c} WHERE rank = %s"
    ).format(c=names.commits), (rank,)).fetchone()
    return Counts(*(int(x) for x in row)) if row else Counts()


@dataclass
class Saved:
    """What one commit makes of the resume state: the progress and ends after it, the rows it writes,
    and the inputs whose rows it deletes."""

    progress: dict[str, int]
    ends: dict[str, int]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)


class ResumeState(State):
    """How far each input is committed, its signature, checkpoints and end (the file dataset's
    :class:`~pipeline.dataset.state.State`, read from and saved to ``{table}_state``); changes wait for a commit."""

    def __init__(self, conn: psycopg.Connection[Any], names: Names, rank: int) -> None:
        """Load this rank's rows of ``{table}_state``."""
        super().__init__()
        self.names, self.rank = names, rank
        #: urls of inputs that are gone: their state rows (and their pieces') leave with the next commit
        self.gone: set[str] = set()
        cur = conn.execute(sql.SQL("SELECT key, location, signature, offsets, {e} FROM {s} WHERE rank = %s")
                           .format(s=names.state, e=sql.Identifier(END_COLUMN)), (rank,))
        for key, location, signature, offsets, end in cur:
            if location is not None:
                self.progress[key] = int(location)
            if signature is not None:
                self.files[key] = signature
            if offsets is not None:
                self.offsets[key] = [[int(a), int(b)] for a, b in offsets]
            if end is not None:
                self.ends[key] = int(end)

    def forget(self, url: str) -> None:
        """Input ``url`` is gone: its state (and its pieces') is dropped now, its rows with the next commit.

        Its keys are not written again (no row to upsert): the commit deletes them.
        """
        super().forget(url)
        self.dirty = {k for k in self.dirty if not of_url(k, url)}
        self.gone.add(url)

    def after(self, marks: dict[str, int], last: dict[str, int]) -> Saved:
        """The state once ``marks`` are committed (``last``: the location of their rows' last record, by key).

        An input reaching ``END_OF_FILE`` keeps the location of its last
        record as its end, as the file dataset's manifest does.
        """
        progress, ends = dict(self.progress), dict(self.ends)
        for key, location in marks.items():
            before = progress.get(key, -1)
            if location > before:
                progress[key] = location
                if location >= END_OF_FILE:
                    ends[key] = max(last.get(key, 0), before)
        rows = [(self.rank, k, progress.get(k), self.files.get(k),
                 Jsonb(self.offsets[k]) if k in self.offsets else None, ends.get(k))
                for k in sorted(self.dirty | set(marks))]
        return Saved(progress, ends, rows, sorted(self.gone))

    def save(self, cur: psycopg.Cursor[Any], saved: Saved) -> None:
        """Delete the state rows of the gone inputs, then write the changed ones (in the commit's transaction)."""
        if saved.gone:
            cur.execute(sql.SQL(
                "DELETE FROM {s} WHERE rank = %s AND EXISTS (SELECT 1 FROM unnest(%s::text[]) AS u(url) "
                "WHERE key = u.url OR left(key, length(u.url) + 1) = u.url || '#')").format(s=self.names.state),
                (self.rank, saved.gone))
        if saved.rows:
            cur.executemany(sql.SQL(
                "INSERT INTO {s} (rank, key, location, signature, offsets, {e}) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (rank, key) DO UPDATE SET location = EXCLUDED.location, signature = EXCLUDED.signature, "
                "offsets = EXCLUDED.offsets, {e} = EXCLUDED.{e}").format(s=self.names.state,
                                                                          e=sql.Identifier(END_COLUMN)), saved.rows)

    def committed(self, saved: Saved) -> None:
        """The commit that carried :meth:`after`'s rows went through."""
        self.progress, self.ends = saved.progress, saved.ends
        self.dirty.clear()
        self.gone.difference_update(saved.gone)


def share_of(conn: psycopg.Connection[Any], names: Names, urls: list[str]) -> float:
    """The share of the table's rows whose source is one of ``urls`` (0 when there is no table)."""
    name = sql.Identifier(names.table).as_string(conn)
    if not urls or conn.execute("SELECT to_regclass(%s)", [name]).fetchone() in (None, (None,)):
        return 0.0
    row = conn.execute(sql.SQL("SELECT count(*) FILTER (WHERE source = ANY(%s)), count(*) FROM {t}")
                       .format(t=names.data), (urls,)).fetchone()
    return row[0] / row[1] if row and row[1] else 0.0


def id_losers(conn: psycopg.Connection[Any], names: Names, holders: set[str]) -> set[str]:
    """The inputs with ``duplicate_id`` error rows in ``{table}_errors`` whose id one of ``holders`` held
    (see :func:`~pipeline.stages.ids.losers_of`): one query, of those rows' source and message."""
    if not holders:
        return set()
    query = sql.SQL("SELECT source, message FROM {e} WHERE error_type = %s").format(e=names.errors)
    return losers_of(holders, conn.execute(query, [DUPLICATE_ID]).fetchall())


class SinkState:
    """The resume-state half of :class:`~pipeline.dataset.postgres.PostgresSink`, as the Sink protocol asks for it.

    Changes wait in memory for the sink's next commit, which writes them
    with its rows (its writing half is the subclass).
    """

    _state: ResumeState
    _counts: Counts
    #: sources whose rows (and error rows) leave at the start of the next commit
    _removals: set[str]
    #: changed inputs (url → their new signature) whose old rows leave with their first new rows
    _changed: dict[str, str | None]
    #: changed inputs whose old rows (this rank's) leave at the start of the next commit
    _replacing: set[str]

    @property
    def counts(self) -> Counts:
        """This rank's totals as of the last commit (rows: those in the table)."""
        return self._counts

    def done_upto(self, key: str) -> int:
        """How far input ``key`` is committed (a location; ``END_OF_FILE`` when whole)."""
        return self._state.done_upto(key)

    def signature(self, url: str) -> str | None:
        """The signature input ``url`` had when it was last read, if it was."""
        return self._state.files.get(url)

    def signatures(self) -> dict[str, str]:
        """Every input this rank read (and did not see go), with the signature it had when last read."""
        return dict(self._state.files)

    def set_signature(self, url: str, signature: str) -> None:
        """Record ``url``'s signature with the next commit (a changed input's: with its first new rows)."""
        if url in self._changed:
            self._changed[url] = signature
        else:
            self._state.set_signature(url, signature)

    def set_signatures(self, pairs: Iterable[tuple[str, str]]) -> None:
        """:meth:`set_signature` of each url and signature, in one call."""
        self._state.set_signatures(held_back(self._changed, pairs))

    def restart(self, key: str, url: str) -> None:
        """Input ``key`` changed: the next read starts at its top.

        Its old rows leave in the commit that brings its first new rows (or
        its end), together with its new signature: a reader never sees both
        versions, and a crash before that commit finds it changed again.
        """
        self._state.restart(key, url)
        self._changed.setdefault(url, None)

    def append(self, key: str, url: str) -> bool:
        """Input ``key`` only grew at its end: read on after its last record; False when that is unknown."""
        return self._state.read_on(key)

    def offsets(self) -> dict[str, list[list[int]]]:
        """The seek checkpoints of big input files, as saved."""
        return {url: [list(c) for c in cs] for url, cs in self._state.offsets.items()}

    def set_offsets(self, offsets: dict[str, list[list[int]]]) -> None:
        """Replace the seek checkpoints; saved with the next commit."""
        self._state.set_offsets(offsets)

    def note_model(self, reported: str) -> None:
        """The model the server says answered: logged; the table records the configured one."""
        self._reported_model = reported

    def share_of(self, urls: list[str]) -> float:
        """The share of the table's rows whose source is one of ``urls``."""
        return share_of(self.conn, self.names, urls)  # type: ignore[attr-defined]

    def id_losers(self, holders: set[str]) -> set[str]:
        """The inputs with ``duplicate_id`` error rows whose id one of ``holders`` held."""
        return id_losers(self.conn, self.names, holders)  # type: ignore[attr-defined]

    def remove_sources(self, urls: list[str]) -> None:
        """Inputs ``urls`` are gone: their rows, error rows and state rows leave with the next commit.

        They are deleted at the start of that commit's transaction: rows the
        commit itself brings stay.
        """
        self._removals.update(urls)
        for url in urls:
            self._changed.pop(url, None)
            self._state.forget(url)

    def _replace_touched(self, batch: EmbeddedBatch) -> None:
        """A batch brings the first new rows (or the end) of changed inputs: their old rows leave with it."""
        touched = {c.source for c in batch.chunks} | {f.source for f in batch.failures}
        for url in list(self._changed):
            if url in touched or any(of_url(key, url) for key, _ in batch.marks):
                signature = self._changed.pop(url)
                self._replacing.add(url)
                if signature is not None:
                    self._state.set_signature(url, signature)
