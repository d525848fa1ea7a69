"""``pipeline run``: wire read → chunk → batch → embed → write for one rank, and own the drain.

The stages (:mod:`pipeline.stages`) are joined by bounded anyio memory
object streams, so a slow API slows the reader instead of filling memory.
The job opens the source, the sink and the embedder, runs one round of the
stages (or, in watch mode, a round per batch of new files), and whatever
happens commits what the write stage already wrote before it returns.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Iterable

import anyio
from anyio.abc import ObjectSendStream

from pipeline.config import Config
from pipeline.dataset.manifest import utc_now
from pipeline.dataset.sink import Sink, open_sink
from pipeline.embed import Embedder, make_embedder
from pipeline.embed.limits import Budget, Limiter
from pipeline.dataset.reuse_index import ReuseIndex
from pipeline.dataset.self_reuse import StoredVectors
from pipeline.embed.reuse import ReusingEmbedder
from pipeline.errors import EXIT_OK, ApiError, CommitFailed, FatalApiError, SinkError, SourceError
from pipeline.jobs.changes import (
    Changes, apply, check_removals, compare, marked_gone, own_sources, reread_losers, settle_deleted)
from pipeline.jobs.collector import collect_less
from pipeline.jobs.inputs import list_source, open_own_vectors, open_reuse_index
from pipeline.jobs.malloc import give_back_big_blocks
from pipeline.jobs.outcome import RunResult, close_quietly, finish, first_leaf, log_commits, warn_if_batch_capped
from pipeline.jobs.progress import Progress, report_progress
from pipeline.jobs.shutdown import Shutdown, watch_signals
from pipeline.jobs.watch import watch_source
from pipeline.logs import LogSetup, get_logger, redact_url
from pipeline.sources.fields import FieldCheck
from pipeline.sources.listed import Inputs
from pipeline.stages.batch import Window, batch_stage
from pipeline.stages.chunk import Chunker, chunk_stage
from pipeline.stages.embed import SendGate, embed_stage
from pipeline.stages.ids import IdRegistry
from pipeline.stages.read import Checkpoints, Item, read_stage
from pipeline.stages.triage import Triage
from pipeline.stages.write import Committer, write_stage
from pipeline.types import Batch, EmbeddedBatch, InputFile, Piece, Skipped

HEARTBEAT_S = 10.0  # a third of the write lease's 30 s life
#: the signature of a kept input whose documents a live input took over: it matches no listing (saved marked
#: gone: the input was counted gone when its ids were yielded)
MOVED = "moved"


class Job:
    """One run of a config, for one rank."""

    def __init__(
        self,
        cfg: Config,
        *,
        embedder: Embedder | None = None,
        logs: LogSetup | None = None,
        handle_signals: bool = True,
        fresh: bool = False,
        limiter: Limiter | None = None,
    ) -> None:
        """``limiter`` paces this rank's requests (a budget shared with other ranks); by default the
        embedder makes its own from the config."""
        give_back_big_blocks()  # a million inputs' arrays freed, their memory goes back
        collect_less()  # the millions of short-lived objects of a run are not looked at 700 at a time
        self.cfg = cfg
        self._limiter = limiter
        self.log = get_logger()
        self.progress = Progress()
        self.budget = Budget(cfg.run.max_tokens) if cfg.run.max_tokens else None
        self.gate = SendGate(self._budget_spent)
        self.shutdown = Shutdown(cfg.run.shutdown_grace_s, on_request=self.gate.close)
        emb = cfg.embedding
        self.chunker = Chunker(cfg.chunking, model=emb.model, input_type=emb.input_type,
                               embedding_type=emb.embedding_type)
        # Threads for blocking I/O and parsing. A sync call on s3fs (an async
        # fsspec filesystem) is handed to fsspec's single IO loop, which runs in
        # its own daemon thread ("fsspecIO"), and the calling thread waits: calls
        # from several threads are safe, and never run on our event loop. fsspec's
        # instance cache keys async filesystems without the thread id, so the
        # source, the lease and the writer share one S3FileSystem (one client,
        # one pool) whenever their storage_options are equal.
        self.cpu = anyio.CapacityLimiter(2)
        self._embedder = embedder
        self._logs = logs
        self._handle_signals = handle_signals
        self._fresh = fresh
        self._reported_model: str | None = None
        #: inputs by what happened to them (new, changed, appended, deleted, unchanged), over all rounds
        self.changes: dict[str, int] = {}
        self.ids = IdRegistry()
        self._warned: set[str] = set()  # warnings given once a run, by its first listing or a watcher's
        #: a source.id_field or text_field naming nothing in the files read: said once a run
        self.fields = FieldCheck(cfg.source, lambda missing: self.log.warning("source_field_missing",
                                                                             **missing.log_fields()))

    async def run(self) -> RunResult:
        """Run the job to its end; commit what was done whatever happens."""
        cfg = self.cfg
        started_at = utc_now()
        try:
            fs, listed, files = await anyio.to_thread.run_sync(partial(list_source, cfg, warned=self._warned))
        except SourceError:
            if not cfg.run.watch:
                raise
            fs, listed, files = None, Inputs.empty(), Inputs.empty()  # a watcher may start before the first file lands
        sink = await anyio.to_thread.run_sync(
            lambda: open_sink(cfg, started_at=started_at, metadata_fields=list(cfg.source.metadata_fields),
                              fresh=self._fresh, on_wait=self._lease_waiting, hold_retired=True)
        )
        self.checkpoints = Checkpoints(sink.offsets())
        self.commit = Committer(sink, self.checkpoints, self.cpu, self._committed)
        self._listing: tuple[Inputs, Inputs] | None = (listed, files)
        del listed, files  # held by self._listing alone, which _run lets go of once compared
        try:
            return await self._run(sink, fs)
        finally:  # after a bug: let go of the lease at least (a no-op after a clean close)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close_quietly, sink)

    async def _run(self, sink: Sink, fs: Any) -> RunResult:
        """Compare, then run the rounds. A run seeds the id registry with the dataset's ids only when it has
        something to read, after the comparison, with the listing let go of by then (a rerun that finds a
        few changes among a million objects holds neither the listing nor the registry's ids of the changed
        and deleted inputs); a watcher seeds it first."""
        cfg = self.cfg
        assert self._listing is not None
        listed, files = self._listing
        self._listing = None
        changes, counts, mine = Changes(), {}, len(files)
        if cfg.run.watch:
            del listed, files
            await anyio.to_thread.run_sync(_register_ids, self.ids, sink, limiter=self.cpu)
        else:  # a refused mass removal stops here, before anything changed
            changes = await anyio.to_thread.run_sync(compare, sink, fs, files, listed)
            del listed, files
            counts = self._note(fs, changes)
            if changes.unchanged > len(changes.inputs) // 2:
                changes = changes.without_unchanged()
            if len(changes.to_read):  # the ids of the changed and deleted inputs are freed: not seeded
                gone = set(changes.changed.urls()) | set(changes.deleted)
                await anyio.to_thread.run_sync(_register_ids, self.ids, sink, gone, limiter=self.cpu)
        self.log.info("run_started", files=mine, source=cfg.source.path, sink=cfg.sink.path,
                      provider=cfg.embedding.provider, model=cfg.embedding.model,
                      rank=cfg.run.rank, world_size=cfg.run.world_size, **counts)
        warn_if_batch_capped(cfg, self.log)
        earlier: ReuseIndex | None = None
        status, code, message = "completed", EXIT_OK, None
        try:
            if cfg.run.reuse_from:
                earlier = await anyio.to_thread.run_sync(open_reuse_index, cfg)
                self.log.info("reuse_index_ready", reuse_from=cfg.run.reuse_from, rows=earlier.rows,
                              distinct=earlier.distinct)
            embedder = self._embedder or make_embedder(
                cfg.embedding, cfg.api_key, reuse=earlier, on_retry=self._on_retry, budget=self.budget,
                cpu_limiter=self.cpu, world_size=cfg.run.world_size, limiter=self._limiter,
            )
            async with embedder:  # type: ignore[attr-defined]
                async with anyio.create_task_group() as watchers:
                    if self._handle_signals:
                        watchers.start_soon(watch_signals, self.shutdown)
                    watchers.start_soon(report_progress, self.progress, self._logs)
                    watchers.start_soon(self._heartbeat, sink)
                    if cfg.run.watch:
                        await self._watch(sink, embedder)
                    else:
                        await self._update(fs, changes, embedder)
                    watchers.cancel_scope.cancel()
        except* (FatalApiError, CommitFailed) as group:
            leaf = first_leaf(group)
            status, code, message = "failed", leaf.exit_code, str(leaf)  # type: ignore[attr-defined]
        finally:
            if earlier is not None:
                earlier.close()
        if status == "completed" and self.shutdown.exit_code is not None:
            status, code = "interrupted", self.shutdown.exit_code
        elif status == "completed" and self.gate.budget_spent:
            assert self.budget is not None
            status, message = "budget_exhausted", (
                f"stopped before spending more than run.max_tokens={cfg.run.max_tokens:,} tokens "
                f"({self.budget.spent:,} spent); what was embedded is committed, run it again to continue"
            )
        with anyio.CancelScope(shield=True):
            try:
                await self.commit(lambda: _close(sink, status))
            except CommitFailed as exc:
                if code == EXIT_OK or message is None:
                    status, code, message = "failed", exc.exit_code, str(exc)
        return finish(self.cfg, sink.counts.as_dict(), self.progress, self.changes, status, code, message)

    async def _round(self, fs: Any, files: Iterable[InputFile], embedder: Embedder) -> None:
        """One pass of the stages over ``files``, drained or cut short by a signal."""
        if self.shutdown.requested is not None or self.gate.closed:
            return
        cfg, depth = self.cfg, self.cfg.embedding.concurrency
        records_send, records_receive = anyio.create_memory_object_stream[list[Item]](4)
        pieces_send, pieces_receive = anyio.create_memory_object_stream[list[Piece]](4)
        batches_send, batches_receive = anyio.create_memory_object_stream[Batch](depth)
        # as deep as the window: an embed worker never waits for the writer to take its answer
        answers_send, answers_receive = anyio.create_memory_object_stream[EmbeddedBatch | Skipped](max(4, depth * 4))
        window = Window(max(4, depth * 4))
        whole, reading = self.shutdown.round_scopes()
        # the round holds the answers' receiving end open until every task ended: a write stage
        # that fails closes only its own clone, so an embed worker answering at that moment is
        # cancelled with the rest instead of meeting a closed stream (BrokenResourceError)
        with whole, answers_receive:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read, fs, files, records_send, reading)
                tg.start_soon(partial(chunk_stage, records_receive, pieces_send, chunker=self.chunker, cpu=self.cpu))
                triage = Triage(self.ids, _indexes(embedder), limiter=self.cpu)
                tg.start_soon(partial(batch_stage, pieces_receive, batches_send,
                                      batch_size=cfg.batch_size, max_rows=cfg.sink.shard_rows, window=window,
                                      triage=triage))
                async with batches_receive, answers_send:
                    for _ in range(depth):
                        tg.start_soon(partial(embed_stage, batches_receive.clone(), answers_send.clone(),
                                              embedder=embedder, gate=self.gate))
                tg.start_soon(partial(write_stage, answers_receive.clone(), commit=self.commit, window=window,
                                      on_written=lambda batch: self._written(batch, embedder),
                                      prepare=self._displacing))

    async def _read(self, fs: Any, files: Iterable[InputFile], send: ObjectSendStream[list[Item]],
                    reading: anyio.CancelScope) -> None:
        with reading:
            await read_stage(files, send, cfg=self.cfg.source, fs=fs, done_upto=self.commit.sink.done_upto,
                             checkpoints=self.checkpoints, cpu=self.cpu, on_file=self._file_started,
                             on_bytes=self.progress.read_bytes, on_block=self.progress.read_items,
                             fields=self.fields)

    async def _watch(self, sink: Sink, embedder: Embedder) -> None:
        await watch_source(
            self.cfg,
            sink,
            keep_going=lambda: self.shutdown.requested is None and not self.gate.closed,
            wake=self.shutdown.event,
            update=lambda fs, changes: self._update(fs, changes, embedder),
            note=self._note,
            warned=self._warned,
        )

    async def _update(self, fs: Any, changes: Changes, embedder: Embedder) -> None:
        """Bring the sink up to ``changes`` (noted already): remove the deleted, read the rest, commit.

        A deleted file's rows leave in a commit of their own. Before anything
        leaves, the vectors the sink holds for changed documents (and, when
        files were also added, for deleted ones, kept or not: renames; and the retired
        shards of a replacement an earlier run left unfinished) are indexed, so
        that their chunks whose text did not change are not paid for again.
        """
        sink = self.commit.sink
        own = None
        renamed = bool((changes.deleted or changes.retained) and changes.new)
        if changes.changed or renamed or _resumes_replacement(sink, changes):
            own = await anyio.to_thread.run_sync(self._own_vectors, changes, limiter=self.cpu)
        try:
            if changes.deleted or changes.kept or changes.back:  # rows removed, or inputs marked gone or back
                await self.commit(sink.commit)
            if changes.to_read and fs is not None:
                where = f"sink.path {redact_url(self.cfg.sink.path)}"
                this_round = embedder if own is None else ReusingEmbedder(embedder, own, limiter=self.cpu,
                                                                          where=where)
                await self._round(fs, changes.to_read, this_round)
                # commit now: a watcher's next listing must see these files as done, and it may then sleep long
                await self.commit(sink.commit)
        finally:
            if own is not None:
                own.close()
                with anyio.CancelScope(shield=True):  # the files the index read, retired meanwhile
                    await anyio.to_thread.run_sync(sink.release_retired, limiter=self.cpu)

    def _displacing(self, batch: EmbeddedBatch) -> EmbeddedBatch:
        """``batch`` naming the kept rows it takes over (see :meth:`IdRegistry.with_displaced`); the kept
        inputs they came from are marked moved in the same commit, so that a file coming back under such
        a name is read again (its documents are now another input's) rather than taken as unchanged."""
        batch = self.ids.with_displaced(batch)
        for source in dict.fromkeys(source for source, _ in batch.displaced):
            self.commit.sink.set_signature(source, marked_gone(MOVED))
        return batch

    def _own_vectors(self, changes: Changes) -> ReuseIndex | StoredVectors | None:
        """The sink's own vectors for the chunks of changed (or renamed) documents; None when it has none."""
        if not self.commit.sink.counts.rows_embedded:
            return None
        sources = own_sources(changes, self.commit.sink.replacing())
        try:
            own = open_own_vectors(self.cfg, sources)
        except SinkError as exc:  # not worth stopping for: those chunks are embedded again
            self.log.warning("reuse_itself_unavailable", reason=str(exc))
            return None
        if own is not None:
            self.log.info("reuse_index_ready", reuse_from=redact_url(self.cfg.sink.path), rows=own.rows,
                          distinct=own.distinct)
        return own

    def _note(self, fs: Any, changes: Changes) -> dict[str, int]:
        """Refuse a mass removal, then tell the sink what changed and count it for ``run_finished``; the
        counts of this comparison.

        With ``run.on_deleted: keep`` the inputs found gone are counted
        (``deleted``, and ``kept`` among them, as ``pipeline validate`` says),
        left alone and marked counted: a later round or run, which meets them
        again, counts them no more. Unchanged inputs are those of the last
        comparison, for the same reason.
        """
        remove = self.cfg.run.on_deleted == "remove"
        settle_deleted(changes, remove=remove)
        if not remove:  # their rows stay, but a live input with one of their ids (a renamed file) takes it over
            self.ids.yield_sources(changes.retained)
        sink = self.commit.sink
        losers = reread_losers(changes, sink.id_losers, deleted=remove) if sink.counts.rows_failed else []
        if losers:  # their ids are free now: read again, their error rows replaced
            self.log.info("ids_freed", files=len(losers), first=losers[0])
        check_removals(changes, self.commit.sink, max_fraction=self.cfg.run.max_removed_fraction)
        apply(self.commit.sink, fs, changes, self.checkpoints, self.progress, remove=remove)
        # an interrupted run's last commit may have fallen inside a record: its first chunks are stored
        self.ids.resume(key for _, key, _, _ in changes.resumed.facts())
        changed = set(changes.changed.urls())
        for url in changed | set(changes.deleted):
            self.ids.forget_source(url)  # their rows leave: a new version (or another file) may take the ids
        for url in changed:
            self.progress.read_again(url)
        counts = changes.counts()
        for name, n in counts.items():
            self.changes[name] = self.changes.get(name, 0) + n
        self.changes["unchanged"] = counts["unchanged"]  # as of the last look: not one more a watch round
        return counts

    async def _heartbeat(self, sink: Sink) -> None:
        """Keep the write lease alive between commits."""
        while True:
            await anyio.sleep(HEARTBEAT_S)
            await anyio.to_thread.run_sync(sink.renew, limiter=self.cpu)

    # ------------------------------------------------------------ callbacks from the stages

    def _written(self, batch: EmbeddedBatch, embedder: Embedder) -> None:
        self.progress.add(batch)
        reported = embedder.reported_model
        if reported is not None and reported != self._reported_model:
            self._reported_model = reported
            self.commit.sink.note_model(reported)  # saved with the next commit

    def _file_started(self, inp: InputFile) -> None:
        self.progress.files += 1
        self.progress.opened(inp)

    def _committed(self, entries: list[dict[str, Any]]) -> None:
        self.progress.shards += len(entries)
        log_commits(self.log, entries)

    def _on_retry(self, exc: ApiError, attempt: int) -> None:
        if exc.status == 429:  # counted in the progress line: one line per 429 would bury the rest
            self.progress.throttled += 1
        self.log.debug("request_retried", attempt=attempt, status=exc.status, reason=exc.message)

    def _budget_spent(self, reason: str) -> None:
        self.log.warning("budget_exhausted", max_tokens=self.cfg.run.max_tokens, reason=reason)
        self.shutdown.stop_reading()

    def _lease_waiting(self, current: dict[str, Any]) -> None:
        self.log.warning("lease_waiting", held_by_host=current.get("host"), held_by_pid=current.get("pid"),
                         wait_s=self.cfg.run.shutdown_grace_s + 10)


def _resumes_replacement(sink: Sink, changes: Changes) -> bool:
    """Whether ``changes`` read on an input whose replacement an earlier run left unfinished."""
    return bool(changes.resumed and {inp.url for inp in changes.resumed} & sink.replacing())


def _indexes(embedder: Embedder) -> list[ReuseIndex | StoredVectors]:
    """The reuse indexes ``embedder`` takes vectors from, outermost first: the chunks are looked up in them
    before batching (see :mod:`pipeline.stages.triage`)."""
    found = []
    while isinstance(embedder, ReusingEmbedder):
        found.append(embedder.index)
        embedder = embedder.inner
    return found


def _register_ids(ids: IdRegistry, sink: Sink, skip: set[str] | None = None) -> None:
    """Seed ``ids`` with the ids of the sink's rows, but those of the inputs in ``skip``."""
    ids.seed(sink.known_ids(), rows=sink.counts.rows_embedded, skip=skip)


def _close(sink: Sink, status: str) -> list[dict[str, Any]]:
    """Commit what is left and close ``sink`` with the run's status; the entries committed."""
    try:
        return sink.commit()
    finally:
        sink.close(status)



async def run_job(cfg: Config, **kwargs: Any) -> RunResult:
    """Run ``cfg`` to its end (see :class:`Job`)."""
    return await Job(cfg, **kwargs).run()
