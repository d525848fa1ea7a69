"""``pipeline validate``: what a run would do, counted without calling the API.

:func:`estimate` reads every input and counts; :func:`check_sink` looks at
the sink without writing to it; :func:`validate` puts both into the report
the command prints, with the exit code a run would end with. One report
lists the source once and opens one connection to a Postgres sink.
"""

from __future__ import annotations

import os
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from pipeline.config import Config
from pipeline.embed.limits import describe_budget
from pipeline.embed.tokens import estimate_tokens
from pipeline.errors import EXIT_CONFIG, EXIT_OK, EXIT_TOO_MANY_FAILED, SinkError, SourceError
from pipeline.dataset import state_files
from pipeline.dataset.manifest import load_rank
from pipeline.dataset.opening import enclosing_dataset
from pipeline.dataset.postgres_schema import is_postgres
from pipeline.dataset.sink import refuse_mixing
from pipeline.dataset.state import State
from pipeline.jobs.changes import compare, refusal
from pipeline.jobs.inputs import list_inputs, list_source, open_own_vectors, open_reuse_index
from pipeline.jobs.outcome import too_many_failed
from pipeline.logs import format_duration, redact_url
from pipeline.storage import Location
from pipeline.stages.batch import RequestCount
from pipeline.stages.chunk import Chunker
from pipeline.stages.read import file_items
from pipeline.types import Failure, FileEnd, InputFile


@dataclass
class Estimate:
    """What ``pipeline validate`` found, without calling the API."""

    files: list[InputFile]
    records: int = 0
    bad_records: int = 0
    chunks: int = 0
    chars: int = 0
    tokens: int = 0
    reusable_chunks: int = 0  # chunks whose vector run.reuse_from already holds
    reusable_tokens: int = 0
    requests: int = 0
    minutes: float | None = None
    cost_usd: float | None = None
    by_error: dict[str, int] = field(default_factory=dict)


@dataclass
class Reading:
    """What a run would read of a source the sink already holds: its new, changed and grown inputs."""

    fs: Any
    files: list[InputFile]
    #: input key → the location a run reads on after (a resumed or appended input)
    after: dict[str, int]
    #: inputs a run would not open
    unchanged: int
    #: the documents whose unchanged chunks a run takes from the sink's own vectors (changed, renamed, a
    #: replacement left unfinished), as ``Job._own_vectors`` picks them; empty: the sink is not indexed
    own_sources: set[str]


def estimate(cfg: Config, reading: Reading | None = None, pg: Any = None) -> Estimate:
    """Read every input (or only what ``reading`` says a run reads), count records and chunks, estimate
    tokens, requests, time, cost.

    With ``run.reuse_from``, and for a rerun's changed documents with the
    sink itself, chunks whose vector is already stored are counted apart:
    they cost no token and no request. ``pg``: the report's connection to a
    Postgres sink (see :func:`sink_connection`).
    """
    if reading is None:
        fs, files = list_inputs(cfg)
        reading = Reading(fs, files, {}, 0, set())
    fs, files = reading.fs, reading.files
    emb = cfg.embedding
    chunker = Chunker(cfg.chunking, model=emb.model, input_type=emb.input_type, embedding_type=emb.embedding_type)
    est = Estimate(files=files)
    indexes = [open_reuse_index(cfg)] if cfg.run.reuse_from else []
    if reading.own_sources and (own := _own_vectors(cfg, reading.own_sources, pg)) is not None:
        indexes.append(own)
    pending: list[tuple[str, str]] = []  # (content hash, text) waiting for a token count and a reuse lookup
    count_tokens = token_counter(cfg)
    requests = RequestCount(emb.batch_size)  # stored chunks ride along in batches, as a run packs them

    def settle() -> None:
        if not pending:
            return
        tokens = count_tokens([text for _, text in pending])
        est.tokens += sum(tokens)
        found = np.zeros(len(pending), bool)
        if indexes:
            found = np.logical_or.reduce([index.contains([h for h, _ in pending]) for index in indexes])
            est.reusable_chunks += int(found.sum())
            est.reusable_tokens += sum(t for t, hit in zip(tokens, found) if hit)
        requests.add((~found).tolist())
        pending.clear()

    try:
        _count(cfg, fs, files, chunker, est, pending, settle, reading.after)
    finally:
        for index in indexes:
            index.close()
    est.tokens -= est.reusable_tokens
    est.requests = requests.requests
    limits = []
    if emb.requests_per_minute:
        limits.append(est.requests / emb.requests_per_minute)
    if emb.tokens_per_minute:
        limits.append(est.tokens / emb.tokens_per_minute)
    est.minutes = max(limits) if limits else None
    if emb.usd_per_million_tokens is not None:
        est.cost_usd = est.tokens * emb.usd_per_million_tokens / 1e6
    return est


def _count(cfg: Config, fs: Any, files: list[InputFile], chunker: Chunker, est: Estimate,
           pending: list[tuple[str, str]], settle: Callable[[], None], after: dict[str, int]) -> None:
    """Read every file (after the location ``after`` gives), counting records, failures, chunks and tokens."""
    for inp in files:
        for item in file_items(cfg.source, fs, inp, after.get(inp.key, 0)):
            if isinstance(item, FileEnd):
                continue
            if isinstance(item, Failure):
                est.records += 1
                est.bad_records += 1
                est.by_error[item.error_type] = est.by_error.get(item.error_type, 0) + 1
                continue
            est.records += 1
            result = chunker(item)
            if isinstance(result, Failure):
                est.bad_records += 1
                est.by_error[result.error_type] = est.by_error.get(result.error_type, 0) + 1
                continue
            for chunk in result:
                est.chunks += 1
                est.chars += len(chunk.text)
                pending.append((chunk.content_hash, chunk.text))
                if len(pending) >= 4096:
                    settle()
    settle()


def token_counter(cfg: Config) -> Callable[[list[str]], list[int]]:
    """How validate counts the tokens of chunks: the local model's own tokenizer for ``provider: local``
    (what the run reports, exactly); for the API, about 4 characters a token (its tokenizer is not here)."""
    if cfg.embedding.provider == "local":
        from pipeline.embed.local import shared_model  # wordllama only for this provider

        return shared_model().count_tokens
    return lambda texts: [estimate_tokens(t) for t in texts]


def _own_vectors(cfg: Config, sources: set[str], pg: Any = None) -> Any:
    """The sink's own vectors for the documents of ``sources``, as a run would use them; None when unavailable."""
    try:
        if is_postgres(cfg.sink.path):
            if not _connected(pg):
                return None
            from pipeline.dataset.postgres_reuse import read_stored_vectors

            return read_stored_vectors(pg, cfg.sink.table, cfg.embedding.embedding_type, sources)
        return open_own_vectors(cfg, sources)
    except SinkError:  # a run would embed them again, and say so
        return None


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


def _connected(pg: Any) -> bool:
    return pg is not None and not isinstance(pg, Exception)


# --------------------------------------------------------------------------- the sink

#: pseudo-filesystems of the kernel: writable-looking to root, never a place for a dataset
_VIRTUAL = ("/proc", "/sys")


@dataclass
class SinkCheck:
    """What :func:`check_sink` found: a line for the report, and the problem a run would stop on."""

    line: str
    problem: str | None = None


def _refused(shown: str, why: str) -> SinkCheck:
    return SinkCheck(f"sink: {shown}: {why}", f"sink.path {shown}: {why}")


def _one_line(exc: BaseException) -> str:
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
    real = os.path.realpath(path)
    for top in _VIRTUAL:
        if real == top or real.startswith(top + "/"):
            return _refused(shown, f"inside {top}, a virtual filesystem of the kernel, not a place for files")
    existing = path
    while not os.path.lexists(existing):  # a dangling link is there, and in the way
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "exists and is not a directory" if existing == path else f"cannot be created: {existing} is a file"
        return _refused(shown, what)
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        return _refused(shown, what)
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
            return SinkCheck(f"sink: {shown}: could not be checked ({_one_line(exc)}); nothing was written")
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


# --------------------------------------------------------------------------- what changed


#: the changes line when a run would refuse the dataset's settings (the problem says which differ)
MIXED = "changes since the dataset: not compared: it was made with other settings; a run would stop before " \
        "changing anything (exit 2)"


def describe_changes(
    cfg: Config, listing: tuple[Any, set[str], list[InputFile]] | None = None, pg: Any = None
) -> tuple[list[str], Reading | None, str | None]:
    """How the listing compares with the dataset or table at ``sink.path``, what a run would read, and
    why a run would refuse to start (the mass-deletion guard); no line and None when there is none yet.

    ``listing`` is what :func:`list_source` returned (listed again when not given); ``pg`` the report's
    connection to a Postgres sink."""
    if is_postgres(cfg.sink.path):
        if pg is None:
            with sink_connection(cfg) as pg:
                return describe_changes(cfg, listing, pg)
        if mixed := _postgres_mixed(cfg, pg):
            return [MIXED], None, mixed
        state, replacing = _postgres_state(cfg, pg), _postgres_replacing(cfg, pg)
    else:
        where = Location.open(cfg.sink.path, cfg.sink.storage_options)
        manifest = load_rank(where.fs, where.root, cfg.run.rank, cfg.run.world_size)
        try:
            refuse_mixing(cfg, manifest)
        except SinkError as exc:
            return [MIXED], None, str(exc)
        state = state_files.load(where.fs, where.root, manifest) if manifest is not None else None
        # inputs whose replacement a run left unfinished: a rerun reads on with the retired shards' vectors
        replacing = {url for r in manifest.retired for url in r["inputs"]} if manifest is not None else set()
    if state is None:
        return [], None, None
    fs, listed, mine = listing if listing is not None else list_source(cfg)
    changes = compare(StateView(state), fs, mine, listed)
    c = changes.counts()
    kept = f", kept {c['deleted']:,}" if c["deleted"] and cfg.run.on_deleted == "keep" else ""
    line = (f"changes since the dataset: new {c['new'] + c['resumed']:,}, changed {c['changed']:,}, "
            f"appended {c['appended']:,}, deleted {c['deleted']:,}{kept}, unchanged {c['unchanged']:,}")
    if kept:
        line += " (run.on_deleted: keep leaves the deleted files' rows)"
    refused = None
    if cfg.run.on_deleted == "remove" and changes.deleted:
        share_of = partial(_postgres_share, cfg, pg) if is_postgres(cfg.sink.path) else state.share_of
        refused = refusal(changes, state.files, share_of, cfg.run.max_removed_fraction)
        if refused:
            line += "; a run would stop before changing anything (exit 2)"
    after = {inp.key: state.done_upto(inp.key) for inp in changes.resumed}
    after.update({inp.key: state.ends[inp.key] for inp in changes.appended if inp.key in state.ends})
    # as the run's _own_vectors: changed inputs, the deleted ones when files were also added (renames; only
    # when their rows go), and resumed inputs whose replacement an earlier run left unfinished
    own = {inp.url for inp in changes.changed} | {inp.url for inp in changes.resumed if inp.url in replacing}
    if cfg.run.on_deleted == "remove" and len(changes.new):
        own |= set(changes.deleted)
    reading = Reading(fs, changes.to_read, after, changes.unchanged, own)
    return [line], reading, refused


class StateView:
    """A dataset's resume state seen as the part of a sink that :func:`compare` asks (read only)."""

    def __init__(self, state: State) -> None:
        self._s = state

    def signature(self, url: str) -> str | None:
        return self._s.files.get(url)

    def signatures(self) -> Mapping[str, str]:
        return self._s.files  # a read-only look, not a copy: a million inputs' signatures stay compact

    def done_upto(self, key: str) -> int:
        return self._s.done_upto(key)


def _postgres_mixed(cfg: Config, conn: Any) -> str | None:
    """Why a run would refuse the table: made with other settings than the config's (None when it would not)."""
    import psycopg

    from pipeline.dataset.postgres_schema import Names
    from pipeline.dataset.postgres_state import Made, check_made

    if not _connected(conn):
        return None
    emb = cfg.embedding
    made = Made(emb.model, emb.input_type, emb.embedding_type, cfg.chunking.model_dump())
    try:
        check_made(conn, Names(cfg.sink.table), made, f"{redact_url(cfg.sink.path)} table {cfg.sink.table}")
    except SinkError as exc:
        return str(exc)
    except psycopg.Error:  # the sink line says what is wrong with the database
        return None
    return None


def _postgres_share(cfg: Config, conn: Any, urls: list[str]) -> float:
    """The share of the table's rows whose source is one of ``urls``."""
    import psycopg

    from pipeline.dataset.postgres_schema import Names
    from pipeline.dataset.postgres_state import share_of

    if not _connected(conn):
        return 0.0
    try:
        return share_of(conn, Names(cfg.sink.table), urls)
    except psycopg.Error:  # the sink line says what is wrong with the database
        return 0.0


def _postgres_replacing(cfg: Config, conn: Any) -> set[str]:
    """Inputs whose replacement a run left unfinished (their old rows' vectors wait in ``{table}_retired``)."""
    import psycopg

    from pipeline.dataset.postgres_reuse import retired_sources
    from pipeline.dataset.postgres_schema import Names

    if not _connected(conn):
        return set()
    try:
        return retired_sources(conn, Names(cfg.sink.table), cfg.run.rank)
    except psycopg.Error:  # the sink line says what is wrong with the database
        return set()


def _postgres_state(cfg: Config, conn: Any) -> State | None:
    """This rank's rows of ``{table}_state``; None when there is no table (or it cannot be read)."""
    import psycopg

    from pipeline.dataset.postgres_schema import Names
    from pipeline.dataset.postgres_state import ResumeState

    if not _connected(conn):
        return None
    try:
        name = psycopg.sql.Identifier(f"{cfg.sink.table}_state").as_string(conn)
        if conn.execute("SELECT to_regclass(%s)", [name]).fetchone() in (None, (None,)):
            return None
        return ResumeState(conn, Names(cfg.sink.table), cfg.run.rank)  # a State read from the table
    except psycopg.Error:  # the sink line says what is wrong with the database
        return None


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What ``pipeline validate`` prints: lines for stdout, problems for stderr, and the exit code."""

    lines: list[str]
    problems: list[str]
    exit_code: int


def validate(cfg: Config, config_name: str) -> Report:
    """Check the config's sink, count its inputs, and say how a run would go (and end)."""
    with sink_connection(cfg) as pg:
        return _report(cfg, config_name, pg)


def _report(cfg: Config, config_name: str, pg: Any) -> Report:
    sink = check_sink(cfg, pg)
    skipped: dict[str, int] = {}
    listing = list_source(cfg, skipped)  # once: a sink inside the source is warned about once
    est = estimate(cfg, Reading(listing[0], listing[2], {}, 0, set()))
    lines = [f"config: ok ({config_name})", *_describe_inputs(cfg, est, skipped), sink.line]
    reading, refused = None, None
    try:
        changes, reading, refused = describe_changes(cfg, listing, pg)
        lines += changes
    except (SinkError, SourceError, OSError) as exc:  # the sink check already says what is wrong there
        lines.append(f"changes: could not compare with the dataset ({_one_line(exc)})")
    problems = [p for p in (sink.problem, refused) if p]
    failed = too_many_failed(cfg, {"rows_failed": est.bad_records, "rows_embedded": est.chunks})
    lines += _describe_records(cfg, est, failed is not None)
    if reading is not None:  # a rerun pays for what changed only
        est = estimate(cfg, reading, pg)
        lines.append(f"a run reads {len({f.url for f in est.files}):,} input(s) of them "
                     f"({reading.unchanged:,} unchanged, not opened): {est.chunks:,} chunks")
    lines += _describe_work(cfg, est, reading)
    if failed is not None:
        rows = est.bad_records + est.chunks
        problems.append(f"{est.bad_records:,} of {rows:,} rows would fail, more than "
                        f"run.max_failed_fraction={cfg.run.max_failed_fraction:g}: a run would exit 1")
    code = EXIT_CONFIG if sink.problem or refused else EXIT_TOO_MANY_FAILED if failed else EXIT_OK
    # every URL printed is masked: a key passed to a proxy as https://user:KEY@host must not show
    return Report([redact_url(line) for line in lines], [redact_url(p) for p in problems], code)


def _describe_inputs(cfg: Config, est: Estimate, skipped: dict[str, int]) -> list[str]:
    emb = cfg.embedding
    lines = [f"endpoint: {emb.provider}" + (f" {emb.url}" if emb.provider == "http" else "") + f", model {emb.model}",
             f"inputs: {len(est.files)} file(s) under {cfg.source.path}"]
    for inp in est.files[:20]:
        size = f"{inp.size:,} bytes" if inp.size is not None else "size unknown"
        lines.append(f"  {inp.url}  ({inp.format}{', ' + inp.compression if inp.compression else ''}, {size})")
    if len(est.files) > 20:
        lines.append(f"  ... and {len(est.files) - 20} more")
    if skipped:
        by_ext = ", ".join(f"{ext} {n:,}" for ext, n in sorted(skipped.items()))
        lines.append(f"skipped: {sum(skipped.values()):,} file(s) whose extension format: auto does not read "
                     f"({by_ext}); set source.format to read them as one format")
    if cfg.run.watch:
        lines.append(f"watch: run.watch is true: a run does not exit; it lists source.path again every "
                     f"{format_duration(cfg.run.poll_interval_s)} until stopped (SIGTERM or Ctrl-C)")
    return lines


def _describe_records(cfg: Config, est: Estimate, too_many_failed: bool) -> list[str]:
    lines = [f"records: {est.records:,} ({est.bad_records:,} unusable"
             + (": " + ", ".join(f"{k} {v}" for k, v in sorted(est.by_error.items())) if est.by_error else "")
             + ")"]
    rows = est.bad_records + est.chunks
    share = est.bad_records / rows if rows else 0.0
    verdict = "more than" if too_many_failed else "within"
    lines.append(f"unusable share: {share:.2%} of {rows:,} rows ({verdict} run.max_failed_fraction "
                 f"{cfg.run.max_failed_fraction:g}" + ("; a run would exit 1)" if too_many_failed else ")"))
    lines.append(f"chunks: {est.chunks:,} ({est.chars:,} characters)")
    return lines


def _describe_work(cfg: Config, est: Estimate, reading: Reading | None) -> list[str]:
    emb = cfg.embedding
    lines = []
    stores = [str(cfg.run.reuse_from)] if cfg.run.reuse_from else []
    if reading is not None and reading.own_sources:
        stores.append("the sink itself (changed documents' unchanged chunks)")
    if stores:
        lines.append(f"reusable from {' and '.join(stores)}: {est.reusable_chunks:,} chunks "
                     f"({est.reusable_tokens:,} estimated tokens not spent)")
    how = ("counted with the local model's tokenizer" if emb.provider == "local"
           else "at about 4 characters a token: the API's count differs by language and model")
    lines.append(f"estimated tokens: {est.tokens:,} ({how}" + ("; after reuse)" if stores else ")"))
    if cfg.run.max_tokens is not None and est.tokens > cfg.run.max_tokens:
        lines.append(f"budget: run.max_tokens={cfg.run.max_tokens:,} stops the run before it is done")
    lines.append(f"requests: {est.requests:,} (batch_size {emb.batch_size})")
    lines += describe_budget(emb, requests=est.requests, tokens=est.tokens, world_size=cfg.run.world_size)
    if est.cost_usd is not None:
        lines.append(f"cost: about ${est.cost_usd:,.4f} at ${emb.usd_per_million_tokens:g} per million tokens")
    else:
        lines.append("cost: set embedding.usd_per_million_tokens to estimate it")
    return lines
