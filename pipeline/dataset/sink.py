"""The Sink seam: where answers go, committed atomically with resume state and accounting.

The job hands a sink batches in read order and asks it how far each input is
committed; it never edits the sink's state itself. The file dataset
(:class:`~pipeline.dataset.writer.DatasetWriter`) is the first sink; a
``postgresql://`` path opens :class:`~pipeline.dataset.postgres.PostgresSink`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from pipeline.config import Config
from pipeline.dataset.lease import Lease
from pipeline.dataset.manifest import Manifest, load_rank
from pipeline.dataset.opening import enclosing_dataset, local_problem
from pipeline.dataset.postgres_schema import is_postgres
from pipeline.dataset.writer import DatasetWriter
from pipeline.errors import SinkError
from pipeline.storage import Location
from pipeline.types import Counts, EmbeddedBatch


class Sink(Protocol):
    """What the job needs of a place that stores vectors.

    Calls are synchronous (the job makes them in a worker thread) and never
    overlap. Every ``commit*`` returns the shard entries it published.
    """

    @property
    def counts(self) -> Counts:
        """The dataset's totals as of the last commit."""
        ...

    def done_upto(self, key: str) -> int:
        """How far input ``key`` is committed: a location, ``END_OF_FILE`` when whole, 0 if not started."""
        ...

    def signature(self, url: str) -> str | None:
        """The signature (size and time or ETag) input ``url`` had when last read."""
        ...

    def signatures(self) -> Mapping[str, str]:
        """Every input the sink holds rows of, with its signature when last read (a read-only mapping)."""
        ...

    def set_signature(self, url: str, signature: str) -> None:
        """Record ``url``'s signature with the next commit."""
        ...

    def set_signatures(self, pairs: Iterable[tuple[str, str]]) -> None:
        """:meth:`set_signature` of each url and signature."""
        ...

    def restart(self, key: str, url: str) -> None:
        """Input ``key`` changed: read it again from its top; its old rows leave with its first new ones."""
        ...

    def append(self, key: str, url: str) -> bool:
        """Input ``key`` only grew at its end: read on after its last record; False when that is unknown."""
        ...

    def note_model(self, reported: str) -> None:
        """Record the model the server says answered (``model`` in its answers)."""
        ...

    def offsets(self) -> dict[str, list[list[int]]]:
        """Seek checkpoints of big input files."""
        ...

    def share_of(self, urls: list[str]) -> float:
        """The share of the dataset's records (a table's rows) whose source is one of ``urls``."""
        ...

    def remove_sources(self, urls: list[str]) -> None:
        """The rows whose ``source`` is one of ``urls`` leave with the next commit."""
        ...

    def id_losers(self, holders: set[str]) -> set[str]:
        """The inputs with ``duplicate_id`` error rows whose id one of ``holders`` held."""
        ...

    def set_offsets(self, offsets: dict[str, list[list[int]]]) -> None:
        """Seek checkpoints to save with the next commit."""
        ...

    def known_ids(self) -> Iterator[tuple[list[str], list[str]]]:
        """The ids of the rows this writer's part of the dataset holds, with their sources, in blocks."""
        ...

    def write_many(self, batches: Sequence[EmbeddedBatch]) -> list[dict[str, Any]]:
        """Take answered batches (in read order); commit when a shard fills or is due."""
        ...

    def commit_due(self) -> bool:
        """Whether open work has waited ``sink.shard_seconds`` (no I/O)."""
        ...

    def commit_if_due(self) -> list[dict[str, Any]]:
        """Commit if :meth:`commit_due`."""
        ...

    def commit(self) -> list[dict[str, Any]]:
        """Publish what was taken, with its accounting and resume marks, atomically."""
        ...

    def release_retired(self) -> None:
        """Let go of what commits replaced but an index of the sink still read (a file dataset's old shards)."""
        ...

    def replacing(self) -> set[str]:
        """Inputs whose replacement a run left unfinished: their old rows' vectors are kept for the next run."""
        ...

    def renew(self) -> None:
        """Keep this writer's exclusive right alive between commits."""
        ...

    def close(self, status: str) -> None:
        """Commit, record how the run ended, and let go of the right to write."""
        ...


def take_lease(cfg: Config, on_wait: Callable[[dict[str, Any]], None] | None = None) -> Lease:
    """The write lease of this rank, waiting for a draining predecessor to let go."""
    where = Location.open(cfg.sink.path, cfg.sink.storage_options)
    lease = Lease(where.fs, where.root, cfg.run.rank)
    # The lease is the run's first touch of the sink. A bad storage option is
    # a TypeError only when s3fs first connects, so anything is translated here.
    with where.errors(f"cannot write the lease {lease.path}", catch=(Exception,)):
        lease.acquire(cfg.run.shutdown_grace_s + 10, on_wait=on_wait)  # an old dyno drains this long
    return lease


def open_sink(
    cfg: Config,
    *,
    started_at: str,
    metadata_fields: list[str],
    fresh: bool = False,
    on_wait: Callable[[dict[str, Any]], None] | None = None,
    hold_retired: bool = False,
) -> Sink:
    """This rank's sink, holding its lease, refusing a dataset made with other settings.

    ``fresh`` deletes an existing dataset at ``sink.path`` first (its
    shards, manifests, resume state and errors; only with ``world_size: 1``). A
    ``postgresql://`` path is a :class:`~pipeline.dataset.postgres.PostgresSink`.
    ``hold_retired`` keeps shard files a commit replaced until the file
    sink closes (an index of the dataset opened at the start still reads them).
    """
    if is_postgres(cfg.sink.path):
        from pipeline.dataset.postgres import open_postgres_sink  # psycopg only for this sink

        return open_postgres_sink(cfg, started_at=started_at, metadata_fields=metadata_fields, fresh=fresh,
                                  on_wait=on_wait)
    _refuse_unusable(cfg)
    lease = take_lease(cfg, on_wait)
    try:
        writer = _open_writer(cfg, lease, started_at, metadata_fields, fresh)
        writer.hold_retired = hold_retired
        return writer
    except BaseException:
        lease.release()
        raise


def _refuse_unusable(cfg: Config) -> None:
    """``SinkError`` when ``sink.path`` lies inside another dataset, or is a local path that cannot be a
    writable folder (a file in the way), before anything is written there."""
    where = Location.open(cfg.sink.path, cfg.sink.storage_options)
    if where.local and (problem := local_problem(os.path.abspath(where.root))) is not None:
        raise SinkError(f"sink.path {where.shown}: {problem}")
    with where.errors(f"cannot look at {where.shown}", catch=(Exception,)):
        outer = enclosing_dataset(where.fs, where.root)
    if outer is not None:
        raise SinkError(
            f"sink.path {where.shown} is inside the dataset at {Location.on(where.fs, outer).shown}: its files "
            "would mix with that dataset's shards for every reader; use a path outside it"
        )


def refuse_mixing(cfg: Config, existing: Manifest | None) -> None:
    """``SinkError`` when the dataset whose manifest is ``existing`` (this rank's; None: no dataset yet) was
    cut with other chunking settings, or made with another model or embedding types, than ``cfg``, or took its ids from another
    ``source.id_field``: rows of both would mix in one dataset. The run checks it before writing; ``pipeline validate`` asks it too."""
    if existing is None:
        return
    chunking = cfg.chunking.model_dump()
    if existing.chunking is not None and existing.chunking != chunking:
        raise SinkError(
            f"dataset at {cfg.sink.path} was cut with chunking {existing.chunking}; this config says {chunking}. "
            "Refusing to mix them: use another sink.path, or `pipeline run --fresh` to start it over"
        )
    id_field = cfg.source.id_field
    if existing.id_field is not None and existing.id_field != id_field:
        raise SinkError(
            f"dataset at {cfg.sink.path} took its ids from source.id_field {existing.id_field!r}; this config says "
            f"{id_field!r}. Refusing to mix them: use another sink.path, or `pipeline run --fresh` to start it over"
        )
    emb = cfg.embedding
    existing.check_compatible(emb.model, emb.input_type, emb.embedding_type, where=cfg.sink.path)


def _open_writer(
    cfg: Config, lease: Lease, started_at: str, metadata_fields: list[str], fresh: bool
) -> DatasetWriter:
    emb, fs = cfg.embedding, lease.fs
    root = Location.on(fs, cfg.sink.path).root
    if fresh:
        if cfg.run.world_size != 1:
            raise SinkError("--fresh deletes the whole dataset; use it with world_size 1 only")
        for name in ("_manifest.json", "_manifests", "_state", "data", "errors"):
            if fs.exists(f"{root}/{name}"):
                fs.rm(f"{root}/{name}", recursive=True)
    chunking = cfg.chunking.model_dump()
    refuse_mixing(cfg, load_rank(fs, root, cfg.run.rank, cfg.run.world_size))
    writer = DatasetWriter(
        cfg.sink,
        rank=cfg.run.rank,
        model=emb.model,
        input_type=emb.input_type,
        embedding_type=emb.embedding_type,
        metadata_fields=metadata_fields,
        run_started_at=started_at,
        world_size=cfg.run.world_size,
        fs=fs,
        lease=lease,
    )
    writer.manifest.chunking = chunking
    writer.manifest.id_field = cfg.source.id_field  # recorded from now on in a dataset made before it was
    return writer
