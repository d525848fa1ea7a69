"""The job: read → chunk → batch → embed → write, as one graph of stages.

Stages are async functions joined by bounded anyio memory object streams, so
a slow API slows the reader instead of filling memory. Blocking work (file
reads, parsing, chunking, Arrow writes) runs in worker threads. Answers come
back in any order; the write stage puts them back in read order (a small
reorder buffer, bounded by a window the batcher waits on) so that what is
committed is always a prefix of the input and resuming is a matter of
per-file high-water marks.

Stopping drains from the head: on SIGTERM/SIGINT the reader stops, what was
read flows through and is committed, and after ``run.shutdown_grace_s`` (or
a second signal) whatever is left is cancelled. A fatal API error cancels
everything at once. In every case what the write stage already wrote is
committed before the run returns.
"""

from __future__ import annotations

import hashlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Iterator

import anyio
import fsspec
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from pipeline.stages.batch import Piece, batch_stage
from pipeline.stages.chunk import Chunker
from pipeline.embed.http import Embedder, make_embedder
from pipeline.config import Config
from pipeline.errors import ApiError, BudgetExhausted, FatalApiError, SinkError, SourceError
from pipeline.logs import LogSetup, format_duration, get_logger
from pipeline.dataset.manifest import load_rank, utc_now
from pipeline.dataset.lease import Lease
from pipeline.embed.limits import Budget
from pipeline.dataset.reuse_index import ReuseIndex, ReusingEmbedder
from pipeline.dataset.writer import DatasetWriter
from pipeline.sources.readers import open_source, read_records, split_for_workers
from pipeline.types import END_OF_FILE, Batch, EmbeddedBatch, Failure, FileEnd, InputFile, Record

READ_BLOCK = 512  # records per hop between the reader thread and the event loop
PROGRESS_EVERY_S = 10.0
COMMIT_CHECK_S = 1.0
EXIT_OK, EXIT_TOO_MANY_FAILED, EXIT_CONFIG, EXIT_FATAL = 0, 1, 2, 3
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


@dataclass
class Progress:
    """Counters of this run, for progress lines and the summary."""

    started: float = field(default_factory=time.monotonic)
    files: int = 0
    records_read: int = 0
    rows_embedded: int = 0
    rows_reused: int = 0
    rows_failed: int = 0
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    total_tokens: int = 0
    shards: int = 0
    throttled: int = 0  # requests answered 429
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of each file still to finish
    bytes_total: int = 0
    bytes_done: int = 0

    def add(self, batch: EmbeddedBatch) -> None:
        """Count a batch handed to the sink."""
        for url, location in batch.marks:
            if location >= END_OF_FILE and url in self.sizes:
                self.bytes_done += self.sizes.pop(url)
        self.records_read += batch.records
        self.rows_embedded += len(batch.chunks)
        self.rows_reused += batch.reused
        self.rows_failed += len(batch.failures)
        self.requests += batch.usage.requests
        self.retries += batch.usage.retries
        self.prompt_tokens += batch.usage.prompt_tokens
        self.total_tokens += batch.usage.total_tokens

    @property
    def fraction(self) -> float | None:
        """How much of this run's input is done, by bytes of finished files."""
        return self.bytes_done / self.bytes_total if self.bytes_total else None

    def fields(self) -> dict[str, Any]:
        """The counters and rates, as log fields."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        fraction = self.fraction
        eta = elapsed * (1 - fraction) / fraction if fraction else None
        return {
            "records": self.records_read,
            "rows": self.rows_embedded,
            "failed": self.rows_failed,
            "requests": self.requests,
            "retries": self.retries,
            "throttled": self.throttled,
            "tokens": self.total_tokens,
            "rows_per_s": round(self.rows_embedded / elapsed, 1),
            "tokens_per_min": round(self.total_tokens / elapsed * 60),
            "elapsed": format_duration(elapsed),
            "done_pct": round(fraction * 100, 1) if fraction is not None else None,
            "eta": format_duration(eta),
        }


@dataclass
class RunResult:
    """How the run ended."""

    status: str  # completed | interrupted | failed
    exit_code: int
    totals: dict[str, int]
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """An embed worker did not send batch ``seq`` (the token budget ran out)."""

    seq: int


class _Stop:
    """Shutdown state shared by the stages and the signal handler."""

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal that asked us to stop
        self.event = anyio.Event()  # set on the first signal: wakes watch mode's sleep
        self.reading: anyio.CancelScope | None = None  # the current round's reader
        self.drain: anyio.CancelScope | None = None  # the current round, as a whole
        self.budget_exhausted = False

    def stop_reading(self) -> None:
        """Read nothing more; what was read still flows through."""
        if self.reading is not None:
            self.reading.cancel()


def assign(cfg: Config, fs: Any, files: list[InputFile]) -> list[InputFile]:
    """The files (or pieces of large files) this worker owns.

    With several workers, files over ``source.split_bytes`` are first cut
    into pieces; each file or piece goes to the worker its key hashes to, a
    choice that is stable across reruns and listing order.
    """
    rank, world_size = cfg.run.rank, cfg.run.world_size
    if world_size == 1:
        return files
    files = split_for_workers(fs, files, cfg.source.split_bytes)
    return [
        f
        for f in files
        if int.from_bytes(hashlib.sha256(f.key.encode()).digest()[:8], "big") % world_size == rank
    ]


def take_lease(cfg: Config, log: Any) -> Lease:
    """The write lease of this rank, waiting for a draining predecessor to let go."""
    try:
        fs, root = fsspec.core.url_to_fs(cfg.sink.path, **cfg.sink.storage_options)
    except (ImportError, ValueError, OSError) as exc:
        raise SinkError(f"cannot open sink.path {cfg.sink.path}: {exc}") from exc
    lease = Lease(fs, root.rstrip("/"), cfg.run.rank)
    wait = cfg.run.shutdown_grace_s + 10  # an old dyno gets this long to drain after SIGTERM

    def waiting(current: dict[str, Any]) -> None:
        log.warning("lease_waiting", held_by_host=current.get("host"), held_by_pid=current.get("pid"), wait_s=wait)

    # The lease is the run's first touch of the sink. Its backend's errors are
    # not all OSError (botocore's EndpointConnectionError, NoCredentialsError;
    # a bad storage option is a TypeError when s3fs first connects), so
    # anything but our own error is translated here, as open_source does.
    try:
        lease.acquire(wait, on_wait=waiting)
    except SinkError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SinkError(f"sink.path {cfg.sink.path}: cannot write the lease {lease.path}: {reason}") from exc
    return lease


def open_writer(
    cfg: Config, lease: Lease, started_at: str, metadata_fields: list[str], fresh: bool = False
) -> DatasetWriter:
    """The dataset writer of this rank, refusing a dataset made with other settings.

    ``fresh`` deletes an existing dataset at ``sink.path`` first (its
    shards, manifests and errors; only with ``world_size: 1``).
    """
    emb = cfg.embedding
    root = lease.fs._strip_protocol(cfg.sink.path).rstrip("/")
    if fresh:
        if cfg.run.world_size != 1:
            raise SinkError("--fresh deletes the whole dataset; use it with world_size 1 only")
        for name in ("_manifest.json", "_manifests", "data", "errors"):
            if lease.fs.exists(f"{root}/{name}"):
                lease.fs.rm(f"{root}/{name}", recursive=True)
    chunking = cfg.chunking.model_dump()
    existing = load_rank(lease.fs, root, cfg.run.rank, cfg.run.world_size)
    recorded = existing.extra.get("chunking", chunking) if existing is not None else chunking
    if recorded != chunking:
        raise SinkError(
            f"dataset at {cfg.sink.path} was cut with chunking {recorded}; this config says {chunking}. "
            "Refusing to mix them: use another sink.path, or `pipeline run --fresh` to start it over"
        )
    writer = DatasetWriter(
        cfg.sink,
        rank=cfg.run.rank,
        model=emb.model,
        input_type=emb.input_type,
        embedding_type=emb.embedding_type,
        metadata_fields=metadata_fields,
        run_started_at=started_at,
        world_size=cfg.run.world_size,
        guard=lease.renew,
    )
    writer.manifest.extra["chunking"] = chunking
    return writer


def open_reuse_index(cfg: Config) -> ReuseIndex:
    """The index of ``run.reuse_from`` (an earlier dataset, on the sink's storage options)."""
    assert cfg.run.reuse_from is not None
    emb = cfg.embedding
    return ReuseIndex.open(
        cfg.run.reuse_from,
        cfg.sink.storage_options,
        model=emb.model,
        input_type=emb.input_type,
        embedding_type=emb.embedding_type,
        dimensions=emb.dimensions,
    )


def too_many_failed(cfg: Config, totals: dict[str, int]) -> str | None:
    """Why the dataset fails ``run.max_failed_fraction`` (exit 1), or None when it does not."""
    failed = totals.get("rows_failed", 0)
    done = totals.get("rows_embedded", 0) + failed
    if not done or failed / done <= cfg.run.max_failed_fraction:
        return None
    return (
        f"{failed} of {done} rows failed, more than "
        f"run.max_failed_fraction={cfg.run.max_failed_fraction:g}; see {cfg.sink.path}/errors/"
    )


def log_commits(log: Any, entries: list[dict]) -> None:
    """One ``shard_committed`` line per committed shard."""
    for entry in entries:
        log.info(
            "shard_committed",
            path=entry.get("path"),
            rows=entry.get("rows"),
            requests=entry.get("requests"),
            tokens=entry.get("total_tokens"),
        )


def first_leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _take(iterator: Iterator[Any], n: int) -> list[Any]:
    return list(islice(iterator, n))


def file_items(
    cfg: Config, fs: Any, inp: InputFile, after: int, **seeking: Any
) -> Iterator[Record | Failure | FileEnd]:
    """A file's records, then its end; a file that breaks midway ends in one failure.

    ``seeking`` (``seek``, ``on_checkpoint``) goes to :func:`read_records`.
    """
    last = after
    try:
        for item in read_records(cfg.source, fs, inp, after=after, **seeking):
            last = item.location
            yield item
    except SourceError as exc:
        yield Failure(
            id=f"{inp.key}:{last + 1}",
            doc_id=f"{inp.key}:{last + 1}",
            chunk_index=0,
            text=None,
            source=inp.url,
            location=last + 1,
            error_type="unreadable_file",
            message=str(exc),
            part=inp.part,
        )
    yield FileEnd(inp.key)


class Checkpoints:
    """Where lines start in big uncompressed jsonl files: ``(lines before, byte offset)``.

    The reader reports one every 64 MB; they are facts about a file, not
    progress, so they can be saved with any commit (in the manifest's
    ``offsets``). A resumed read seeks to the last one at or before its
    mark instead of reading the file from the top.
    """

    MAX_PER_FILE = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_url: dict[str, list[list[int]]] = {}
        self._dirty = False

    def load(self, manifest: Any) -> None:
        """Start from what the manifest saved."""
        with self._lock:
            self._by_url = {url: [list(c) for c in cs] for url, cs in manifest.extra.get("offsets", {}).items()}

    def best(self, url: str, after: int) -> tuple[int, int] | None:
        """The checkpoint to resume ``url`` after line ``after`` from, if any."""
        with self._lock:
            found = [c for c in self._by_url.get(url, []) if 0 < c[0] <= after]
        return (found[-1][0], found[-1][1]) if found else None

    def recorder(self, url: str) -> Callable[[int, int], None]:
        """The ``on_checkpoint`` callback of one file's reader (called from its thread)."""

        def record(lines: int, offset: int) -> None:
            with self._lock:
                known = self._by_url.setdefault(url, [])
                if known and known[-1][0] >= lines:
                    return
                known.append([lines, offset])
                if len(known) > self.MAX_PER_FILE:
                    del known[::2]  # keep them spread over the file
                self._dirty = True

        return record

    def store(self, manifest: Any) -> None:
        """Copy new checkpoints into the manifest (before a commit saves it)."""
        with self._lock:
            if self._dirty:
                manifest.extra["offsets"] = {url: [list(c) for c in cs] for url, cs in self._by_url.items()}
                self._dirty = False

    def forget(self, url: str, manifest: Any) -> None:
        """``url`` changed: its old checkpoints say nothing about it now."""
        with self._lock:
            self._by_url.pop(url, None)
            manifest.extra.get("offsets", {}).pop(url, None)


class Job:
    """One run of a config: the stages and their shared state."""

    def __init__(
        self,
        cfg: Config,
        *,
        embedder: Embedder | None = None,
        logs: LogSetup | None = None,
        handle_signals: bool = True,
        fresh: bool = False,
    ) -> None:
        self.cfg = cfg
        self._fresh = fresh
        self.progress = Progress()
        self.log = get_logger()
        self._logs = logs
        self._embedder = embedder
        self._handle_signals = handle_signals
        self._stop = _Stop()
        # Threads for blocking I/O and parsing. A sync call on s3fs (an async
        # fsspec filesystem) is handed to fsspec's single IO loop, which runs in
        # its own daemon thread ("fsspecIO"), and the calling thread waits: calls
        # from several threads are safe, and never run on our event loop (made
        # from the event loop they would merely block it). fsspec's instance
        # cache keys async filesystems without the thread id, so the source, the
        # lease and the writer share one S3FileSystem (one client, one pool)
        # whenever their storage_options are equal.
        self._limiter = anyio.CapacityLimiter(2)
        self._window = anyio.Semaphore(1)  # replaced each round
        self.budget = Budget(cfg.run.max_tokens) if cfg.run.max_tokens else None
        self._deadline = math.inf  # when a signal says the current round must end
        self.writer: DatasetWriter | None = None
        self.lease: Lease | None = None
        self._checkpoints = Checkpoints()

    # ------------------------------------------------------------------ stages

    async def read_stage(self, fs: Any, files: list[InputFile], send: ObjectSendStream[list[Any]]) -> None:
        """Stream records from every file, in blocks, until done or told to stop."""
        progress = self.writer.manifest.progress if self.writer else {}
        progress = {key: progress.get(key, 0) for key in (f.key for f in files)}
        assert self._stop.reading is not None
        async with send:
            with self._stop.reading:
                for inp in files:
                    after = int(progress[inp.key])
                    if after >= END_OF_FILE:
                        continue  # committed whole by an earlier run
                    self.progress.files += 1
                    seeking: dict[str, Any] = {}
                    if not inp.part:  # whole files: resume by seeking to a checkpoint
                        seeking = {"seek": self._checkpoints.best(inp.url, after),
                                   "on_checkpoint": self._checkpoints.recorder(inp.url)}
                    if after:
                        self.log.info("file_resumed", file=inp.key, after=after,
                                      seek_offset=(seeking.get("seek") or (None, None))[1])
                    iterator = file_items(self.cfg, fs, inp, after, **seeking)
                    while block := await anyio.to_thread.run_sync(
                        _take, iterator, READ_BLOCK, limiter=self._limiter
                    ):
                        await send.send(block)

    async def chunk_stage(self, receive: ObjectReceiveStream[list[Any]], send: ObjectSendStream[list[Piece]]) -> None:
        """Cut each record into chunks (in a worker thread, a block at a time)."""
        emb = self.cfg.embedding
        chunker = Chunker(
            self.cfg.chunking, model=emb.model, input_type=emb.input_type, embedding_type=emb.embedding_type
        )

        def cut(block: list[Any]) -> list[Piece]:
            out: list[Piece] = []
            for item in block:
                if isinstance(item, Record):
                    result = chunker(item)
                    out.append(result if isinstance(result, Failure) else tuple(result))
                else:
                    out.append(item)
            return out

        async with receive, send:
            async for block in receive:
                await send.send(await anyio.to_thread.run_sync(cut, block, limiter=self._limiter))

    async def embed_stage(
        self, embedder: Embedder, receive: ObjectReceiveStream[Batch], send: ObjectSendStream[EmbeddedBatch]
    ) -> None:
        """One of ``concurrency`` workers: embed batches as they come.

        Once the token budget is spent, batches are not sent; the write stage
        is told, so it stops at the first one missing.
        """
        async with receive, send:
            async for batch in receive:
                if self._stop.budget_exhausted:
                    await send.send(Skipped(batch.seq))  # type: ignore[arg-type]
                    continue
                try:
                    result = await embedder.embed(batch)
                except BudgetExhausted as exc:
                    if not self._stop.budget_exhausted:
                        self._stop.budget_exhausted = True
                        self.log.warning("budget_exhausted", max_tokens=self.cfg.run.max_tokens, reason=str(exc))
                        self._stop.stop_reading()
                    await send.send(Skipped(batch.seq))  # type: ignore[arg-type]
                    continue
                await send.send(result)

    async def write_stage(self, receive: ObjectReceiveStream[EmbeddedBatch]) -> None:
        """Put answers back in read order and hand them to the sink."""
        assert self.writer is not None
        writer = self.writer
        waiting: dict[int, EmbeddedBatch] = {}
        expected = 0
        cut: float = math.inf  # the first batch that was never sent: nothing from it on is written
        async with receive:
            while True:
                arrived: list[EmbeddedBatch] = []
                with anyio.move_on_after(COMMIT_CHECK_S):
                    try:
                        arrived.append(await receive.receive())
                    except anyio.EndOfStream:
                        break
                while True:  # and whatever else is already there: one thread hop for all of it
                    try:
                        arrived.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                ready: list[EmbeddedBatch] = []
                for batch in arrived:
                    if isinstance(batch, Skipped) or batch.seq >= cut:
                        cut = min(cut, batch.seq)
                        self._window.release()
                        for seq in [s for s in waiting if s >= cut]:
                            del waiting[seq]
                            self._window.release()
                        continue
                    waiting[batch.seq] = batch
                    while expected in waiting:
                        ready.append(waiting.pop(expected))
                        expected += 1
                if ready:
                    await self._commit(writer.write_many, ready)
                    for done in ready:
                        self.progress.add(done)
                        self._window.release()
                elif writer.commit_due():
                    await self._commit(writer.commit_if_due)
        if waiting:  # only after a cancellation: these are not committed, and will be read again
            self.log.warning("batches_dropped", count=len(waiting))

    async def _commit(self, fn: Callable[..., list[dict]], *args: Any) -> None:
        def call() -> list[dict]:
            assert self.writer is not None
            self._checkpoints.store(self.writer.manifest)  # saved with whatever this call commits
            return fn(*args)

        self._log_commits(await anyio.to_thread.run_sync(call, limiter=self._limiter))

    async def progress_stage(self) -> None:
        """Report progress: a line every 10 s, or a live line on a terminal."""
        live = self._logs.console if self._logs and self._logs.live else None
        every = 0.5 if live else PROGRESS_EVERY_S
        while True:
            await anyio.sleep(every)
            fields = self.progress.fields()
            if live is not None:
                fraction = self.progress.fraction or 0.0
                bar = "█" * int(fraction * 20) + "·" * (20 - int(fraction * 20))
                live.show(
                    f"[{bar}] {fraction * 100:5.1f}%  eta {fields['eta']}  "
                    f"records {fields['records']:,}  rows {fields['rows']:,}  failed {fields['failed']:,}  "
                    f"tokens {fields['tokens']:,}  {fields['rows_per_s']:,.0f} rows/s  "
                    f"retries {fields['retries']}  429s {fields['throttled']}  {fields['elapsed']}"
                )
            else:
                self.log.info("progress", **fields)

    async def heartbeat_stage(self) -> None:
        """Keep the write lease alive between commits."""
        assert self.lease is not None
        while True:
            await anyio.sleep(self.lease.ttl_s / 3)
            await anyio.to_thread.run_sync(self.lease.renew, limiter=self._limiter)

    async def signal_stage(self) -> None:
        """First SIGTERM/SIGINT: drain; second, or the grace running out: cancel."""
        stop = self._stop
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if stop.requested is None:
                    stop.requested = signum
                    stop.event.set()
                    grace = self.cfg.run.shutdown_grace_s
                    self.log.warning("shutdown_requested", signal=signal.Signals(signum).name, grace_s=grace)
                    stop.stop_reading()
                    # leave a few seconds for the final commit inside Heroku's 30 s
                    self._deadline = anyio.current_time() + max(0.0, grace - 3.0)
                    if stop.drain is not None:
                        stop.drain.deadline = min(stop.drain.deadline, self._deadline)
                else:
                    self.log.warning("shutdown_forced", signal=signal.Signals(signum).name)
                    self._deadline = anyio.current_time()
                    if stop.drain is not None:
                        stop.drain.cancel()

    # ------------------------------------------------------------------ the run

    async def run(self) -> RunResult:
        """Run the job to its end; commit what was done whatever happens."""
        cfg = self.cfg
        started_at = utc_now()
        try:
            fs, files = await anyio.to_thread.run_sync(open_source, cfg.source)
            files = await anyio.to_thread.run_sync(assign, cfg, fs, files)
        except SourceError:
            if not cfg.run.watch:
                raise
            fs, files = None, []  # a watcher may start before the first file lands
        self.lease = await anyio.to_thread.run_sync(take_lease, cfg, self.log)
        try:
            self.writer = await anyio.to_thread.run_sync(
                lambda: open_writer(cfg, self.lease, started_at, list(cfg.source.metadata_fields), self._fresh)
            )
            self._checkpoints.load(self.writer.manifest)
            return await self._run(fs, files)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.lease.release)

    async def _run(self, fs: Any, files: list[InputFile]) -> RunResult:
        cfg = self.cfg
        assert self.writer is not None
        if not cfg.run.watch:
            self._prepare(files)
        self.log.info(
            "run_started",
            files=len(files),
            source=cfg.source.path,
            sink=cfg.sink.path,
            provider=cfg.embedding.provider,
            model=cfg.embedding.model,
            rank=cfg.run.rank,
            world_size=cfg.run.world_size,
        )
        embedder = self._embedder or make_embedder(
            cfg.embedding, cfg.api_key, on_retry=self._on_retry, budget=self.budget
        )
        index = None
        if cfg.run.reuse_from:
            index = await anyio.to_thread.run_sync(open_reuse_index, cfg)
            self.log.info("reuse_index_ready", reuse_from=cfg.run.reuse_from, rows=index.rows,
                          distinct=index.distinct)
            embedder = ReusingEmbedder(embedder, index, limiter=self._limiter)
        status, code, message = "completed", EXIT_OK, None
        try:
            async with embedder:  # type: ignore[attr-defined]
                async with anyio.create_task_group() as watchers:
                    if self._handle_signals:
                        watchers.start_soon(self.signal_stage)
                    watchers.start_soon(self.progress_stage)
                    watchers.start_soon(self.heartbeat_stage)
                    if cfg.run.watch:
                        await self._watch(embedder)
                    else:
                        await self._round(fs, files, embedder)
                    watchers.cancel_scope.cancel()
        except* FatalApiError as group:
            status, code, message = "failed", EXIT_FATAL, str(first_leaf(group))
        finally:
            if index is not None:
                index.close()
        if self._stop.requested is not None and status == "completed":
            status = "interrupted"
            code = EXIT_SIGINT if self._stop.requested == signal.SIGINT else EXIT_SIGTERM
        elif self._stop.budget_exhausted and status == "completed":
            status = "budget_exhausted"
            assert self.budget is not None
            message = (
                f"stopped before spending more than run.max_tokens={cfg.run.max_tokens:,} tokens "
                f"({self.budget.spent:,} spent); what was embedded is committed, run it again to continue"
            )
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._finish, status)
        totals = dict(self.writer.manifest.totals)
        if code == EXIT_OK and (too_many := too_many_failed(cfg, totals)):
            code, message = EXIT_TOO_MANY_FAILED, too_many
        summary = self.progress.fields()
        cost = None
        if cfg.embedding.usd_per_million_tokens is not None:
            cost = round(self.progress.total_tokens * cfg.embedding.usd_per_million_tokens / 1e6, 6)
        self.log.info(
            "run_finished",
            status=status,
            exit_code=code,
            **summary,
            prompt_tokens=self.progress.prompt_tokens,
            shards=self.progress.shards,
            cost_usd=cost,
            dataset_rows=totals.get("rows_embedded"),
            dataset_failed=totals.get("rows_failed"),
            **({"error": message} if message else {}),
        )
        return RunResult(status=status, exit_code=code, totals=totals, message=message)

    def _finish(self, status: str) -> None:
        assert self.writer is not None
        try:
            self._log_commits(self.writer.commit())
        finally:
            self.writer.close(status)  # records the run, even after a failed commit

    def _log_commits(self, entries: list[dict]) -> None:
        self.progress.shards += len(entries)
        log_commits(self.log, entries)

    def _on_retry(self, exc: ApiError, attempt: int) -> None:
        if exc.status == 429:
            self.progress.throttled += 1
        self.log.info("request_retried", attempt=attempt, status=exc.status, reason=exc.message)

    async def _round(self, fs: Any, files: list[InputFile], embedder: Embedder) -> None:
        """One pass of the stages over ``files``, drained or cut short by a signal."""
        cfg = self.cfg
        stop = self._stop
        if stop.requested is not None or stop.budget_exhausted:
            return
        records_send, records_receive = anyio.create_memory_object_stream[list[Any]](4)
        pieces_send, pieces_receive = anyio.create_memory_object_stream[list[Piece]](4)
        batches_send, batches_receive = anyio.create_memory_object_stream[Batch](cfg.embedding.concurrency)
        # as deep as the window: an embed worker never waits for the writer to take its answer
        results_send, results_receive = anyio.create_memory_object_stream[EmbeddedBatch](
            max(4, cfg.embedding.concurrency * 4)
        )
        # how far the batcher may run ahead of the writer: bounds the reorder buffer
        self._window = anyio.Semaphore(max(4, cfg.embedding.concurrency * 4))
        stop.reading = anyio.CancelScope()
        with anyio.CancelScope(deadline=self._deadline) as stop.drain:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.read_stage, fs, files, records_send)
                tg.start_soon(self.chunk_stage, records_receive, pieces_send)
                tg.start_soon(
                    lambda: batch_stage(
                        pieces_receive,
                        batches_send,
                        batch_size=cfg.embedding.batch_size,
                        before_send=self._window.acquire,
                    )
                )
                async with batches_receive, results_send:
                    for _ in range(cfg.embedding.concurrency):
                        tg.start_soon(self.embed_stage, embedder, batches_receive.clone(), results_send.clone())
                tg.start_soon(self.write_stage, results_receive)
        stop.reading = stop.drain = None

    async def _watch(self, embedder: Embedder) -> None:
        """Watch mode: list the source every ``poll_interval_s``; embed files that are
        new or changed once their size and time stopped changing between listings."""
        cfg = self.cfg
        assert self.writer is not None
        previous: dict[str, tuple[int | None, str | None]] = {}
        wait = min(5.0, cfg.run.poll_interval_s)  # the first settle check comes soon
        while self._stop.requested is None and not self._stop.budget_exhausted:
            try:
                fs, listed = await anyio.to_thread.run_sync(open_source, cfg.source)
            except SourceError as exc:  # nothing there yet, or the store blinked: try again later
                self.log.info("watch_listing_empty", reason=str(exc))
                fs, listed = None, []
            if fs is not None:
                listed = await anyio.to_thread.run_sync(assign, cfg, fs, listed)
            current = {f.key: (f.size, f.mtime) for f in listed}
            ready = [f for f in listed if previous.get(f.key) == current[f.key] and self._needs(f)]
            previous = current
            if ready and fs is not None:
                self.log.info("watch_found", files=len(ready))
                self._prepare(ready, restart_changed=True)
                await self._round(fs, ready, embedder)
                # commit now: the next listing must see these files as done, and
                # a watcher may then sleep for a long time
                await self._commit(self.writer.commit)
            with anyio.move_on_after(wait):
                await self._stop.event.wait()
            wait = cfg.run.poll_interval_s

    def _needs(self, inp: InputFile) -> bool:
        """Whether ``inp`` is new, unfinished, or changed since it was embedded."""
        assert self.writer is not None
        known = self.writer.manifest.extra.get("files", {}).get(inp.url)
        done = self.writer.manifest.progress.get(inp.key, 0) >= END_OF_FILE
        return not done or (known is not None and known != _signature(inp))

    def _prepare(self, files: list[InputFile], *, restart_changed: bool = False) -> None:
        """Record each file's signature (size and time or ETag) for watch mode.

        With ``restart_changed`` (watch mode), a file whose signature changed
        since it was embedded is read again from its first record.
        """
        assert self.writer is not None
        manifest = self.writer.manifest
        signatures = manifest.extra.setdefault("files", {})
        todo = {}
        for inp in files:
            sig = _signature(inp)
            known = signatures.get(inp.url)
            if restart_changed and known not in (None, sig):
                self.log.warning("file_changed", file=inp.key)
                manifest.progress.pop(inp.key, None)
                self._checkpoints.forget(inp.url, manifest)
            if restart_changed or known is None:
                signatures[inp.url] = sig
            if manifest.progress.get(inp.key, 0) < END_OF_FILE:
                todo[inp.key] = (inp.end or 0) - inp.start if inp.part.startswith("#bytes") else inp.size or 0
        self.progress.sizes = todo
        self.progress.bytes_total += sum(todo.values())


def _signature(inp: InputFile) -> str:
    return f"{inp.size}:{inp.mtime}"


async def run_job(cfg: Config, **kwargs: Any) -> RunResult:
    """Run ``cfg`` to its end (see :class:`Job`)."""
    return await Job(cfg, **kwargs).run()
