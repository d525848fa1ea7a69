"""The file dataset as a sink: shard files in ``data/`` and ``errors/``, then the manifest.

:class:`DatasetWriter` receives embedded batches in read order and streams
their rows into an open data shard (and their failures into an open errors
shard). A *commit* publishes both files together (see :mod:`shard_writer`) and
only then lists them in the manifest, with the resume marks of every batch
they hold, in one save. Whatever was not committed is read and paid for again
by the next run; nothing committed is written twice.

The writer is plain synchronous code (the job calls it in a worker thread);
calls must not overlap. Opening may raise :class:`SinkError` (nothing was
started); once open, a failed commit or a lost lease is :class:`CommitFailed`.
"""

from __future__ import annotations

import errno
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import fsspec
import pyarrow as pa

from pipeline.config import SinkConfig
from pipeline.dataset.lease import Lease
from pipeline.dataset.retrying import StoreRetry, transient
from pipeline.dataset.manifest import Manifest, load_rank, manifest_name, save_rank, shard_rank_seq, utc_now
from pipeline.dataset.shard_writer import ShardWriter
from pipeline.dataset.shards import open_shard
from pipeline.dataset.tables import ERRORS_SCHEMA, RowTables
from pipeline.errors import CommitFailed, SinkError
from pipeline.logs import get_logger
from pipeline.storage import STORE_ERRORS, Location, describe, join
from pipeline.types import Counts, EmbeddedBatch

KINDS = ("data", "errors")


@dataclass
class _Pending:
    """Accounting of the batches written since the last commit."""

    counts: Counts = field(default_factory=Counts)
    marks: dict[str, int] = field(default_factory=dict)

    def add(self, batch: EmbeddedBatch) -> None:
        self.counts += Counts.of(batch)
        for url, location in batch.marks:
            if location > self.marks.get(url, -1):
                self.marks[url] = location

    def entry_fields(self) -> dict[str, Any]:
        """What a shard entry records of these batches (rows are the shard's own)."""
        c = self.counts
        return {
            "requests": c.requests,
            "retries": c.retries,
            "prompt_tokens": c.prompt_tokens,
            "total_tokens": c.total_tokens,
            "records": c.records_read,
            "rows_reused": c.rows_reused,
            "marks": dict(sorted(self.marks.items())),
        }


class DatasetWriter:
    """Appends embedded batches to a sharded dataset and commits them with the manifest."""

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
        fs: fsspec.AbstractFileSystem | None = None,
        clock: Callable[[], float] = time.monotonic,
        world_size: int = 1,
        lease: Lease | None = None,
        retry: StoreRetry | None = None,
    ) -> None:
        """Open (or create) the dataset at ``cfg.path`` for this rank.

        ``lease`` (held by the caller) is renewed before every manifest save,
        which stops if another writer took it (fencing); :meth:`close`
        releases it. Uploads, saves and renewals that meet a blinking store
        are retried by ``retry`` (a minute, by default).

        Loads the manifest (checking it was made with the same model and
        types), deletes what a crash of this rank left behind (hidden temp
        files, shard files the manifest does not list), and records the run.
        """
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self._clock = clock
        self._lease = lease
        self._retry = retry or StoreRetry()
        where = Location.on(fs, cfg.path) if fs is not None else Location.open(cfg.path, cfg.storage_options)
        self.fs = fs = where.fs
        self.root = where.root
        self._ext = ".arrow" if cfg.format == "arrow" else ".parquet"
        self._compression = None if cfg.compression in (None, "none") else cfg.compression
        try:
            manifest = _load_or_create(fs, self.root, cfg.path, rank, world_size, model, input_type, embedding_type)
            _forget_missing(fs, self.root, cfg.path, rank, manifest)
            _clean_up(fs, self.root, rank, manifest)
        except OSError as exc:
            raise SinkError(f"cannot open the dataset at {cfg.path}: {exc}") from exc
        self._manifest = manifest
        # Object stores: each save of this rank's manifest is conditional on the
        # version we last saw (If-Match on its ETag; create-only when there is
        # none), so a writer that lost the lease while paused cannot overwrite
        # its successor's manifest even if its last lease renewal got through.
        self._fenced = not where.local
        self._etag: str | None = self._current_etag() if self._fenced else None
        self._tables = RowTables(manifest, embedding_type=embedding_type, metadata_fields=metadata_fields,
                                 include_text=cfg.include_text, where=cfg.path)
        self._next_seq = {k: manifest.last_seq(rank, k) + 1 for k in KINDS}
        self._open: dict[str, ShardWriter] = {}
        self._opened_at: float | None = None
        self._pending = _Pending()
        self._replacing: dict[str, Any] | None = None
        self._failed: BaseException | None = None
        self._closed = False
        self._run = manifest.start_run(run_started_at, rank=rank)
        try:
            self._save()
        except CommitFailed as exc:  # nothing was started yet
            raise SinkError(str(exc)) from exc

    # ------------------------------------------------------------ resume state

    @property
    def manifest(self) -> Manifest:
        """The manifest as of the last commit (plus the current run)."""
        return self._manifest

    @property
    def counts(self) -> Counts:
        """The dataset's totals as of the last commit."""
        return self._manifest.counts

    def done_upto(self, key: str) -> int:
        """How far input ``key`` is committed (a location; ``END_OF_FILE`` when whole)."""
        return self._manifest.done_upto(key)

    def signature(self, url: str) -> str | None:
        """The signature input ``url`` had when it was last read, if it was."""
        return self._manifest.files.get(url)

    def set_signature(self, url: str, signature: str) -> None:
        """Record ``url``'s signature; saved with the next commit."""
        self._manifest.files[url] = signature

    def restart(self, key: str, url: str) -> None:
        """Input ``key`` changed: the next read starts at its top (saved with the next commit)."""
        self._manifest.restart(key, url)

    def note_model(self, reported: str) -> None:
        """Record the model the server says answered; saved with the next commit."""
        self._manifest.reported_model = reported

    def offsets(self) -> dict[str, list[list[int]]]:
        """The seek checkpoints of big input files, as saved."""
        return {url: [list(c) for c in cs] for url, cs in self._manifest.offsets.items()}

    def set_offsets(self, offsets: dict[str, list[list[int]]]) -> None:
        """Replace the seek checkpoints; saved with the next commit."""
        self._manifest.offsets = offsets

    def known_ids(self) -> Iterator[tuple[list[str], list[str]]]:
        """The ids and sources of this rank's committed data rows, a block at a time."""
        mine = f"part-{self.rank:05d}-"
        for entry in self._manifest.shards:
            if entry["kind"] != "data" or mine not in entry["path"]:
                continue
            with open_shard(self.fs, join(self.root, entry["path"])) as shard:
                for block in shard.iter_batches(columns=["id", "source"]):
                    yield block.column(0).to_pylist(), block.column(1).to_pylist()

    # ------------------------------------------------------------ writing

    def replace(self, old: dict[str, Any]) -> None:
        """Start rewriting the rows of shard ``old`` (``pipeline retry-failed``).

        Until the next :meth:`commit`, batches are only appended: the commit
        then publishes the new shards and drops ``old`` from the manifest in
        the same save, and only after that deletes its file, so its rows are
        never both in the dataset twice nor missing from it.
        """
        self._check_usable()
        if self._open:
            self.commit()
        self._replacing = old

    def write(self, batch: EmbeddedBatch) -> list[dict[str, Any]]:
        """Append one batch (in read order); returns the shard entries it caused to be committed."""
        self._check_usable()
        committed: list[dict[str, Any]] = []
        data = self._tables.data(batch) if batch.chunks else None
        errors = self._tables.errors(batch.failures) if batch.failures else None
        if self._must_roll("data", data) or self._must_roll("errors", errors):
            committed += self.commit()
        if data is not None:
            self._shard("data", data.schema).append(data)
        if errors is not None:
            self._shard("errors", ERRORS_SCHEMA).append(errors)
        self._pending.add(batch)
        if self._replacing is None and any(s.rows >= self.cfg.shard_rows for s in self._open.values()):
            committed += self.commit()
        return committed

    def write_many(self, batches: Sequence[EmbeddedBatch]) -> list[dict[str, Any]]:
        """:meth:`write` each batch (in read order), then :meth:`commit_if_due`.

        One call for all the batches that are ready at once, so that the
        caller hops to a worker thread once for them instead of once each.
        """
        committed: list[dict[str, Any]] = []
        for batch in batches:
            committed += self.write(batch)
        return committed + self.commit_if_due()

    def commit_due(self) -> bool:
        """Whether the open shards have been open for ``shard_seconds`` or more.

        No I/O, only the clock: the job asks from the event loop and hops to
        a worker thread for :meth:`commit_if_due` only when it says yes.
        """
        return self._opened_at is not None and self._clock() - self._opened_at >= self.cfg.shard_seconds

    def commit_if_due(self) -> list[dict[str, Any]]:
        """Commit when the open shard has been open for ``shard_seconds`` or more."""
        self._check_usable()
        if self.commit_due():
            return self.commit()
        return []

    def commit(self) -> list[dict[str, Any]]:
        """Publish the open data and errors shards together, then save the manifest once."""
        self._check_usable()
        if not self._open and not self._pending.marks and self._replacing is None:
            return []
        old, self._replacing = self._replacing, None
        try:
            entries = self._publish()
            self._manifest.add_commit(
                entries,
                self._pending.marks,
                schema=self._open["data"].schema if "data" in self._open else None,
            )
            if old is not None:
                self._manifest.shards.remove(old)
            self._open.clear()
            self._opened_at = None
            if entries:
                self._pending = _Pending()
            else:  # only marks: any counts wait for the next shard
                self._pending.marks.clear()
            self._save()
        except BaseException as exc:
            # rows of this commit are lost to this process; later marks would
            # then claim them, so the writer refuses any further batch
            self._failed = exc
            self._discard()
            if isinstance(exc, (OSError, pa.ArrowException)) or transient(exc):  # the store's, after retries
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise CommitFailed(
                    f"cannot commit shards to {self.cfg.path}: {reason}; "
                    "what was committed before is intact, run again to resume"
                ) from exc
            raise
        if old is not None:  # listed nowhere now; a crash before this line leaves a file _clean_up removes
            self.fs.rm_file(join(self.root, old["path"]))
        return entries

    def renew(self) -> None:
        """Keep the write lease alive between commits; :class:`CommitFailed` if it was lost."""
        if self._lease is not None:
            self._renew_lease()

    def close(self, status: str) -> None:
        """Commit what is open, record the run's end with ``status``, save, release the lease.

        Raises :class:`CommitFailed` when the final commit fails; the run is
        then recorded as failed if the manifest can still be saved.
        """
        if self._closed:
            return
        error: CommitFailed | None = None
        try:
            if self._failed is None:
                try:
                    self.commit()
                except CommitFailed as exc:
                    error = exc
            self._discard()
            self._closed = True
            self._run["finished_at"] = utc_now()
            self._run["status"] = "failed" if self._failed is not None else status
            try:  # records the run, even after a failed commit, if the store lets us
                self._save()
            except CommitFailed as exc:
                error = error or exc
        finally:
            if self._lease is not None:
                try:
                    self._lease.release()
                except Exception:  # a lease we cannot delete goes stale; the next run takes it
                    pass
        if error is not None:
            raise error

    # ------------------------------------------------------------ shards

    def _check_usable(self) -> None:
        if self._closed:
            raise CommitFailed(f"the dataset writer for {self.cfg.path} is closed")
        if self._failed is not None:
            raise CommitFailed(f"an earlier commit to {self.cfg.path} failed: {self._failed}")

    def _must_roll(self, kind: str, table: pa.Table | None) -> bool:
        shard = self._open.get(kind)
        if shard is None or table is None:
            return False
        return shard.rows + table.num_rows > self.cfg.shard_rows or table.schema != shard.schema

    def _shard(self, kind: str, schema: pa.Schema) -> ShardWriter:
        shard = self._open.get(kind)
        if shard is None:
            seq = self._next_seq[kind]
            rel = f"{kind}/part-{self.rank:05d}-{seq:06d}{self._ext}"
            while self._fenced and self.fs.exists(join(self.root, rel)):
                # taken by a writer that lost the lease after we opened: never overwrite it
                seq += 1
                rel = f"{kind}/part-{self.rank:05d}-{seq:06d}{self._ext}"
            self._next_seq[kind] = seq + 1
            dictionary: list[str] | bool = True
            if kind == "data":  # not worth it for unique strings and vectors
                dictionary = ["doc_id", "source", *self._tables.metadata_fields]
            try:
                shard = ShardWriter(self.fs, self.root, rel, schema, fmt=self.cfg.format,
                                  compression=self._compression, dictionary=dictionary)
            except (OSError, pa.ArrowException) as exc:
                raise CommitFailed(f"cannot create {join(self.cfg.path, rel)}: {exc}") from exc
            self._open[kind] = shard
            if self._opened_at is None:
                self._opened_at = self._clock()
        return shard

    def _publish(self) -> list[dict[str, Any]]:
        """Publish the open shards; the data shard carries the batches' accounting."""
        finished_at = utc_now()
        entries = []
        owner = "data" if "data" in self._open else "errors"
        for kind in KINDS:
            shard = self._open.get(kind)
            if shard is None:
                continue
            counts = (self._pending if kind == owner else _Pending()).entry_fields()
            entry = {
                "path": shard.rel,
                "kind": kind,
                "rows": shard.rows,
                "started_at": shard.started_at,
                "finished_at": finished_at,
                **counts,
            }
            shard.publish(entry, self._retry)
            # in the manifest only (the file cannot hold its own size): a run checks it at start
            entry["bytes"] = shard.size
            entries.append(entry)
        return entries

    def _discard(self) -> None:
        for shard in self._open.values():
            shard.discard()
        self._open.clear()
        self._opened_at = None

    def _manifest_path(self) -> str:
        return join(self.root, manifest_name(self.rank, self.world_size))

    def _current_etag(self) -> str | None:
        """The ETag of this rank's manifest on the store, None when there is none (or no ETag)."""
        try:
            return _etag_of(self.fs.info(self._manifest_path()))
        except FileNotFoundError:
            return None

    def _save_once(self) -> None:
        """One conditional save of this rank's manifest (see ``_fenced``); remembers the new ETag."""
        condition: dict[str, Any] | None = None
        if self._fenced:
            condition = {"IfMatch": self._etag} if self._etag else {"mode": "create"}
            if self._etag is None and self.fs.exists(self._manifest_path()):
                condition = None  # a store without ETags: nothing to be conditional on
        answer = save_rank(self._manifest, self.fs, self.root, self.rank, self.world_size, condition)
        if self._fenced:
            self._etag = _etag_of(answer) or self._current_etag()

    def _renew_lease(self) -> None:
        assert self._lease is not None
        lease = self._lease
        try:
            self._retry(lease.renew, f"renewing the lease {lease.path}")
        except SinkError as exc:
            raise CommitFailed(str(exc)) from exc
        except Exception as exc:  # the store's own errors (botocore, OSError), after retries
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CommitFailed(
                f"cannot renew the write lease {lease.path}: {reason}; what was committed is intact, "
                "run again to resume"
            ) from exc

    def _save(self) -> None:
        # the lease checked, then the manifest replaced, with no other writer in between
        # (a compare-and-swap under the lease's lock on local disk; conditional PUTs on a store)
        with self._lease.exclusive() if self._lease is not None else nullcontext():
            self._save_checked()

    def _save_checked(self) -> None:
        if self._lease is not None:
            self._renew_lease()
        try:
            self._retry(self._save_once, "saving the manifest")
        except SinkError as exc:
            raise CommitFailed(str(exc)) from exc
        except STORE_ERRORS as exc:
            if self._fenced and (isinstance(exc, FileExistsError) or getattr(exc, "errno", None) == errno.EINVAL):
                raise CommitFailed(  # our condition failed: the manifest is not the version we last wrote
                    f"another pipeline has written the manifest of rank {self.rank:05d} of {self.cfg.path} "
                    "since this one last did (it took over the write lease); stopping without touching its work"
                ) from exc
            raise CommitFailed(
                f"cannot save the manifest of {self.cfg.path}: {describe(exc)}; what was committed before is "
                "intact, run again to resume"
            ) from exc
        except Exception as exc:  # the store's own errors, after retries
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CommitFailed(
                f"cannot save the manifest of {self.cfg.path}: {reason}; what was committed before is intact, "
                "run again to resume"
            ) from exc


# --------------------------------------------------------------------------- opening


def _etag_of(answer: Any) -> str | None:
    etag = answer.get("ETag") if isinstance(answer, dict) else None
    return etag if isinstance(etag, str) else None


def _glob(fs: fsspec.AbstractFileSystem, root: str, pattern: str) -> list[str]:
    return sorted(fs.glob(join(root, pattern)))


def _load_or_create(
    fs: fsspec.AbstractFileSystem, root: str, where: str, rank: int, world_size: int,
    model: str, input_type: str | None, embedding_type: str,
) -> Manifest:
    """This rank's manifest, checked against the config, or a new one for an empty place."""
    manifest = load_rank(fs, root, rank, world_size)
    if manifest is not None:
        manifest.check_compatible(model, input_type, embedding_type, where=where)
        return manifest
    leftovers = [p for k in KINDS for p in _glob(fs, root, f"{k}/part-{rank:05d}-*")]
    if leftovers:
        raise SinkError(
            f"{where} holds shard files of rank {rank} ({leftovers[0]}, ...) "
            "but no manifest; refusing to write into it (use another sink.path)"
        )
    return Manifest.new(model, input_type, embedding_type)


def _forget_missing(fs: fsspec.AbstractFileSystem, root: str, where: str, rank: int, manifest: Manifest) -> None:
    """Shards of this rank deleted from under the dataset (a lifecycle rule, a hand ``rm``): rebuild them.

    Commits are a prefix of each rank's input in read order, so the first
    missing shard and every later one of this rank leave the manifest (their
    files are then strays), and how far each input is done is recomputed
    from the shards that remain: the next read embeds their rows again.
    Shards written by ``retry-failed`` carry no read position; with one of
    them among the later shards the dataset is refused instead.
    """
    mine = [s for s in manifest.shards if (rs := shard_rank_seq(s["path"])) is not None and rs[0] == rank]
    present: dict[str, int | None] = {}
    for kind in KINDS:
        found = fs.glob(join(root, f"{kind}/part-{rank:05d}-*"), detail=True)
        present.update({path: info.get("size") for path, info in found.items()})

    def gone(entry: dict[str, Any]) -> bool:  # missing, or not the size it was published with (cut short)
        path = join(root, entry["path"])
        return path not in present or entry.get("bytes") not in (None, present[path])

    missing = [s for s in mine if gone(s)]
    if not missing:
        return
    first = mine.index(missing[0])
    dropped = mine[first:]
    names = ", ".join(s["path"] for s in missing[:3]) + (", ..." if len(missing) > 3 else "")
    if any(s["rows"] and not s.get("marks") and s["kind"] == "data" for s in dropped):
        raise SinkError(
            f"{where}: {len(missing)} listed shard(s) are missing ({names}) and pipeline retry-failed "
            "moved rows after them; restore the files, or `pipeline run --fresh` to start the dataset over"
        )
    kept = [s for s in manifest.shards if s not in dropped]
    manifest.shards[:] = kept
    manifest.progress.clear()
    for entry in kept:
        for key, location in (entry.get("marks") or {}).items():
            manifest.progress[key] = max(int(location), manifest.progress.get(key, -1))
    get_logger().warning(
        "shards_missing", missing=names, count=len(missing), rebuilding_rows=sum(s["rows"] for s in dropped),
        hint="these shards and the later ones of this rank leave the manifest; their rows are embedded again",
    )


def _clean_up(fs: fsspec.AbstractFileSystem, root: str, rank: int, manifest: Manifest) -> None:
    """Delete this rank's temp files and the shard files the manifest does not list.

    Those are left by a crash between publishing a shard and saving the
    manifest, or between retiring a shard and deleting its file.
    """
    listed = {join(root, s["path"]) for s in manifest.shards}
    for kind in KINDS:
        stray = _glob(fs, root, f"{kind}/.part-{rank:05d}-*.tmp")
        for path in _glob(fs, root, f"{kind}/part-{rank:05d}-*"):
            if shard_rank_seq(path) is not None and path not in listed:
                stray.append(path)
        for path in stray:
            fs.rm_file(path)
