"""``pipeline retry-failed``: embed again the rows the API refused or never answered."""

from __future__ import annotations

from typing import Any, Iterator

import anyio

from pipeline.config import Config
from pipeline.dataset.manifest import load_dataset_manifest, utc_now
from pipeline.dataset.postgres_schema import is_postgres
from pipeline.dataset.shards import open_shard
from pipeline.dataset.sink import open_sink
from pipeline.dataset.writer import DatasetWriter
from pipeline.embed import Embedder, make_embedder
from pipeline.errors import EXIT_OK, EXIT_TOO_MANY_FAILED, CommitFailed, FatalApiError, SinkError
from pipeline.jobs.outcome import (RunResult, close_quietly, first_leaf, log_commits, too_many_failed,
                                   warn_if_batch_capped)
from pipeline.logs import get_logger
from pipeline.stages.chunk import make_hasher
from pipeline.storage import Location
from pipeline.types import Batch, Chunk, Counts, EmbeddedBatch, Failure, Usage

#: error types worth sending again: the API's answers, not the input's faults
RETRYABLE_ERRORS = frozenset({"api_error", "rejected"})


def _read_failures(fs: Any, path: str, batch_rows: int) -> Iterator[list[Failure]]:
    """The rows of an ``errors/`` shard, as failures, a batch at a time."""
    with open_shard(fs, path) as shard:
        for batch in shard.iter_batches(batch_size=batch_rows):
            yield [Failure(**row) for row in batch.to_pylist()]


def _dataset_must_exist(cfg: Config) -> None:
    """``SinkError`` when ``sink.path`` holds no dataset: opening the sink would make an empty one there, and
    a mistyped path would report a completed retry of nothing."""
    where = Location.open(cfg.sink.path, cfg.sink.storage_options)
    with where.errors("cannot read the dataset", catch=(Exception,)):
        manifest = load_dataset_manifest(where.fs, where.root)
    if manifest is None:
        raise SinkError(f"no dataset at {where.shown} yet: `pipeline run` writes it")


async def retry_failed(cfg: Config, *, embedder: Embedder | None = None) -> RunResult:
    """Embed again the retryable rows of this rank's ``errors/`` shards.

    Each errors shard is replaced in one commit: the rows that now succeed go
    to a new data shard, the rest (and rows that cannot be retried) to a new
    errors shard, and the old shard leaves the manifest in the same save.
    """
    log = get_logger()
    if not is_postgres(cfg.sink.path):
        await anyio.to_thread.run_sync(_dataset_must_exist, cfg)
    writer = await anyio.to_thread.run_sync(lambda: open_sink(cfg, started_at=utc_now(), metadata_fields=[]))
    try:
        return await _retry(cfg, writer, embedder, log)
    finally:  # after a bug: let go of the lease at least (a no-op after a clean close)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close_quietly, writer)



async def _retry(cfg: Config, writer: DatasetWriter, embedder: Embedder | None, log: Any) -> RunResult:
    emb = cfg.embedding
    mine = f"part-{cfg.run.rank:05d}-"
    old_shards = [s for s in writer.manifest.shards if s["kind"] == "errors" and mine in s["path"]]
    hasher = make_hasher(emb.model, emb.input_type, emb.embedding_type)
    embedder = embedder or make_embedder(emb, cfg.api_key, world_size=cfg.run.world_size)
    done = Counts()
    status, code, message = "completed", EXIT_OK, None
    log.info("retry_started", shards=len(old_shards), sink=cfg.sink.path)
    warn_if_batch_capped(cfg, log)
    try:
        async with embedder:  # type: ignore[attr-defined]
            for old in old_shards:
                writer.replace(old)
                # what the old shard carried must survive it
                carried = Usage(
                    requests=old.get("requests", 0), retries=old.get("retries", 0),
                    prompt_tokens=old.get("prompt_tokens", 0), total_tokens=old.get("total_tokens", 0),
                )
                records = old.get("records", 0)
                seq = 0
                path = f"{writer.root}/{old['path']}"
                for rows in await anyio.to_thread.run_sync(
                    lambda: list(_read_failures(writer.fs, path, cfg.batch_size))
                ):
                    again = [f for f in rows if f.error_type in RETRYABLE_ERRORS and f.text]
                    kept = tuple(f for f in rows if f not in again)
                    chunks = tuple(
                        Chunk(id=f.id, doc_id=f.doc_id, chunk_index=f.chunk_index, text=f.text or "",
                              source=f.source, location=f.location, content_hash=hasher(f.text or ""))
                        for f in again
                    )
                    result = await embedder.embed(Batch(seq=seq, chunks=chunks, failures=kept))
                    seq += 1
                    result = EmbeddedBatch(
                        seq=result.seq, chunks=result.chunks, vectors=result.vectors,
                        usage=result.usage + carried, failures=result.failures, records=records,
                    )
                    carried, records = Usage(), 0
                    done += Counts.of(result)
                    await anyio.to_thread.run_sync(writer.write, result)
                log_commits(log, await anyio.to_thread.run_sync(writer.commit))
                log.info("shard_retried", path=old["path"], rows=old["rows"])
    except* (FatalApiError, CommitFailed) as group:
        leaf = first_leaf(group)
        status, code, message = "failed", leaf.exit_code, str(leaf)  # type: ignore[attr-defined]
    with anyio.CancelScope(shield=True):
        try:
            await anyio.to_thread.run_sync(writer.close, status)
        except CommitFailed as exc:
            if code == EXIT_OK:
                status, code, message = "failed", exc.exit_code, str(exc)
    totals = writer.counts.as_dict()
    log.info("retry_finished", status=status, moved_to_data=done.rows_embedded,
             still_failed=done.rows_failed, tokens=done.total_tokens)
    if code == EXIT_OK and (too_many := too_many_failed(cfg, totals)):
        code, message = EXIT_TOO_MANY_FAILED, too_many
    return RunResult(status=status, exit_code=code, totals=totals, message=message)
