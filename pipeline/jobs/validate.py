"""``pipeline validate``: what a run would do, counted without calling the API.

:func:`estimate` reads every input and counts; :func:`check_sink` looks at
the sink without writing to it; :func:`validate` puts both into the report
the command prints, with the exit code a run would end with. One report
lists the source once and opens one connection to a Postgres sink.
"""

from __future__ import annotations

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
from pipeline.dataset.resume_state import id_losers as files_id_losers
from pipeline.dataset.resume_state import known_ids as files_known_ids
from pipeline.dataset.postgres_schema import is_postgres
from pipeline.dataset.sink import refuse_mixing
from pipeline.dataset.state import State
from pipeline.jobs.changes import compare, own_sources, refusal, reread_losers, settle_deleted
from pipeline.jobs.inputs import list_inputs, list_source, open_own_vectors, open_reuse_index
from pipeline.jobs.outcome import too_many_failed
from pipeline.jobs.sink_check import check_sink, one_line
from pipeline.jobs.validate_postgres import (
    connected, postgres_id_losers, postgres_known_ids, postgres_mixed, postgres_replacing, postgres_share,
    postgres_state, sink_connection)
from pipeline.logs import format_duration, redact_url
from pipeline.sources.fields import FieldCheck
from pipeline.storage import Location
from pipeline.stages.batch import RequestCount
from pipeline.stages.chunk import Chunker
from pipeline.stages.ids import IdRegistry
from pipeline.stages.read import file_items
from pipeline.stages.triage import claim_ids
from pipeline.types import Chunk, Failure, FileEnd, InputFile


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
    #: a source.id_field or text_field naming nothing in a file read, as a run would warn of it
    fields_missing: list[str] = field(default_factory=list)

    def failed(self, error_type: str) -> None:
        """Count a row a run would write to ``errors/`` (an unusable record, or a chunk whose id is taken)."""
        self.bad_records += 1
        self.by_error[error_type] = self.by_error.get(error_type, 0) + 1


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
    #: seeds an id registry with the ids a rerun finds taken in the dataset (None: a fresh dataset's none)
    seed_ids: Callable[[IdRegistry], None] | None = None


def estimate(cfg: Config, reading: Reading | None = None, pg: Any = None) -> Estimate:
    """Read every input (or only what ``reading`` says a run reads), count records and chunks, estimate
    tokens, requests, time, cost.

    With ``run.reuse_from``, and for a rerun's changed documents with the
    sink itself, chunks whose vector is already stored are counted apart:
    they cost no token and no request. A chunk whose id an earlier one (or
    the dataset) holds is counted as the ``duplicate_id`` error row a run
    writes instead of sending it. ``pg``: the report's connection to a
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
    pending: list[Chunk] = []  # waiting for an id check, a token count and a reuse lookup
    count_tokens = token_counter(cfg)
    requests = RequestCount(cfg.batch_size, cfg.sink.shard_rows)  # stored chunks ride along in batches, as a run packs them
    ids = IdRegistry()
    if reading.seed_ids is not None and files:
        reading.seed_ids(ids)

    def settle() -> None:
        chunks = _claim_ids(ids, pending, est)
        pending.clear()
        if not chunks:
            return
        est.chunks += len(chunks)
        est.chars += sum(len(chunk.text) for chunk in chunks)
        tokens = count_tokens([chunk.text for chunk in chunks])
        est.tokens += sum(tokens)
        found = np.zeros(len(chunks), bool)
        if indexes:
            found = np.logical_or.reduce([index.contains([c.content_hash for c in chunks]) for index in indexes])
            est.reusable_chunks += int(found.sum())
            est.reusable_tokens += sum(t for t, hit in zip(tokens, found) if hit)
        requests.add((~found).tolist())

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
           pending: list[Chunk], settle: Callable[[], None], after: dict[str, int]) -> None:
    """Read every file (after the location ``after`` gives), counting records and failures; the chunks go
    to ``pending``, which ``settle`` counts."""
    fields = FieldCheck(cfg.source, lambda missing: est.fields_missing.append(missing.line()))
    for inp in files:
        for item in file_items(cfg.source, fs, inp, after.get(inp.key, 0), fields=fields):
            if isinstance(item, FileEnd):
                continue
            est.records += 1
            result = item if isinstance(item, Failure) else chunker(item)
            if isinstance(result, Failure):
                est.failed(result.error_type)
                continue
            pending.extend(result)
            if len(pending) >= 4096:
                settle()
    settle()


def _claim_ids(ids: IdRegistry, chunks: list[Chunk], est: Estimate) -> list[Chunk]:
    """The ``chunks`` whose id is free, as a run's triage finds them (in read order: the first kept); each
    other one is counted as the ``duplicate_id`` error row a run writes, unsent."""
    if not chunks:
        return []
    (piece,) = claim_ids(ids, [tuple(chunks)])
    assert isinstance(piece, tuple)
    for item in piece:
        if isinstance(item, Failure):
            est.failed(item.error_type)
    return [item for item in piece if isinstance(item, Chunk)]


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
            if not connected(pg):
                return None
            from pipeline.dataset.postgres_reuse import read_stored_vectors

            return read_stored_vectors(pg, cfg.sink.table, cfg.embedding.embedding_type, sources)
        return open_own_vectors(cfg, sources)
    except SinkError:  # a run would embed them again, and say so
        return None


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
        if mixed := postgres_mixed(cfg, pg):
            return [MIXED], None, mixed
        state, replacing = postgres_state(cfg, pg), postgres_replacing(cfg, pg)
        id_losers: Callable[[set[str]], set[str]] = partial(postgres_id_losers, cfg, pg)
        known_ids: Callable[[], Iterator[tuple[list[str], list[str]]]] = partial(postgres_known_ids, cfg, pg)
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
        shards = manifest.shards if manifest is not None else []
        id_losers = partial(files_id_losers, where.fs, where.root, shards)
        known_ids = partial(files_known_ids, where.fs, where.root, shards, cfg.run.rank)
    if state is None:
        return [], None, None
    fs, listed, mine = listing if listing is not None else list_source(cfg)
    changes = compare(StateView(state), fs, mine, listed)
    remove = cfg.run.on_deleted == "remove"
    settle_deleted(changes, remove=remove)  # as a run: the inputs an earlier run counted gone and kept, uncounted
    # as a run: the inputs that lost an id to one whose ids are freed are read again, as changed
    losers = reread_losers(changes, id_losers, deleted=remove)
    c = changes.counts()
    kept = f", kept {c['kept']:,}" if c.get("kept") else ""
    line = (f"changes since the dataset: new {c['new']:,}, resumed {c['resumed']:,}, changed {c['changed']:,}, "
            f"appended {c['appended']:,}, deleted {c['deleted']:,}{kept}, unchanged {c['unchanged']:,}")
    if kept:
        line += " (run.on_deleted: keep leaves the deleted files' rows)"
    if losers:
        line += (f"; {len(losers):,} of the changed read again for freed ids: their duplicate_id error rows name "
                 "a file deleted or changed")
    refused = None
    share_of = partial(postgres_share, cfg, pg) if is_postgres(cfg.sink.path) else state.share_of
    refused = refusal(changes, state.files, share_of, cfg.run.max_removed_fraction, deleted=remove)
    if refused:
        line += "; a run would stop before changing anything (exit 2)"
    after = {inp.key: state.done_upto(inp.key) for inp in changes.resumed}
    after.update({inp.key: state.ends[inp.key] for inp in changes.appended if inp.key in state.ends})
    own = own_sources(changes, replacing)
    # as a run: the ids of the changed and deleted inputs are freed, those of the kept ones yield
    freed = set(changes.changed.urls()) | set(changes.deleted)
    seed = partial(_seed_ids, known_ids, freed, changes.retained, [inp.key for inp in changes.resumed])
    reading = Reading(fs, changes.to_read, after, changes.unchanged, own, seed)
    return [line], reading, refused


def _seed_ids(known_ids: Callable[[], Iterator[tuple[list[str], list[str]]]], freed: set[str],
              yielding: list[str], read_on: list[str], ids: IdRegistry) -> None:
    """Seed ``ids`` as a rerun does before reading: with the dataset's ids (``known_ids()``) but those of
    the inputs ``freed``, the ids of the inputs ``yielding`` (kept under ``run.on_deleted: keep``) going to
    the first live input that has one; the inputs of keys ``read_on`` are read on after a mark."""
    ids.yield_sources(yielding)
    ids.resume(read_on)
    ids.seed(known_ids(), skip=freed)


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
        lines.append(f"changes: could not compare with the dataset ({one_line(exc)})")
    # a run would stop there, before reading anything (exit 2): what it would have failed then does not matter
    problems = [p for p in (sink.problem, refused) if p]
    stops = bool(problems)
    failed = too_many_failed(cfg, {"rows_failed": est.bad_records, "rows_embedded": est.chunks})
    exits_1 = failed is not None and not stops
    lines += _describe_records(cfg, est, failed is not None, exits_1)
    lines += [f"warning: {line}" for line in est.fields_missing]
    if exits_1:  # the share the records line gives: of every row a run would write, not only of those it reads
        rows = est.bad_records + est.chunks
        problems.append(f"{est.bad_records:,} of {rows:,} rows would fail, more than "
                        f"run.max_failed_fraction={cfg.run.max_failed_fraction:g}: a run would exit 1")
    if reading is not None:  # a rerun pays for what changed only
        est = estimate(cfg, reading, pg)
        lines.append(f"a run reads {len({f.url for f in est.files}):,} input(s) of them "
                     f"({reading.unchanged:,} unchanged, not opened): {est.chunks:,} chunks")
    lines += _describe_work(cfg, est, reading)
    code = EXIT_CONFIG if stops else EXIT_TOO_MANY_FAILED if exits_1 else EXIT_OK
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


def _describe_records(cfg: Config, est: Estimate, too_many_failed: bool, exits_1: bool) -> list[str]:
    lines = [f"records: {est.records:,} ({est.bad_records:,} unusable"
             + (": " + ", ".join(f"{k} {v}" for k, v in sorted(est.by_error.items())) if est.by_error else "")
             + ")"]
    rows = est.bad_records + est.chunks
    share = est.bad_records / rows if rows else 0.0
    verdict = "more than" if too_many_failed else "within"
    lines.append(f"unusable share: {share:.2%} of {rows:,} rows ({verdict} run.max_failed_fraction "
                 f"{cfg.run.max_failed_fraction:g}" + ("; a run would exit 1)" if exits_1 else ")"))
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
    capped = ", capped at sink.shard_rows" if cfg.batch_size < emb.batch_size else ""
    lines.append(f"requests: {est.requests:,} (batch_size {cfg.batch_size}{capped})")
    lines += describe_budget(emb, requests=est.requests, tokens=est.tokens, world_size=cfg.run.world_size)
    if est.cost_usd is not None:
        lines.append(f"cost: about ${est.cost_usd:,.4f} at ${emb.usd_per_million_tokens:g} per million tokens")
    else:
        lines.append("cost: set embedding.usd_per_million_tokens to estimate it")
    return lines
