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

import time
from typing import Any, Callable, Sequence

import fsspec
import pyarrow as pa

from pipeline.config import SinkConfig
from pipeline.dataset.lease import Lease
from pipeline.dataset.ledger import Ledger
from pipeline.dataset.manifest import utc_now
from pipeline.dataset.opening import KINDS, clean_up, forget_missing, load_or_create
from pipeline.dataset.open_shards import OpenShards
from pipeline.dataset.pending import Pending
from pipeline.dataset.replace import Rewritten, affected, keep_for_reuse, release_replaced, rewrite, sources_in, swap
from pipeline.dataset.resume_state import ResumeState
from pipeline.dataset.retrying import StoreRetry, transient
from pipeline.dataset.shard_writer import ShardWriter
from pipeline.dataset.tables import ERRORS_SCHEMA, RowTables
from pipeline.errors import CommitFailed, SinkError
from pipeline.storage import Location, join
from pipeline.types import EmbeddedBatch

class DatasetWriter(ResumeState):
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
        self._retry = retry or StoreRetry()
        where = Location.on(fs, cfg.path) if fs is not None else Location.open(cfg.path, cfg.storage_options)
        self.fs = fs = where.fs
        self.root = where.root
        try:
            manifest = load_or_create(fs, self.root, cfg.path, rank, world_size, model, input_type, embedding_type)
            forget_missing(fs, self.root, cfg.path, rank, manifest)
            clean_up(fs, self.root, rank, manifest)
        except OSError as exc:
            raise SinkError(f"cannot open the dataset at {cfg.path}: {exc}") from exc
        self._manifest = manifest
        self._ledger = Ledger(where, rank, world_size, lease, self._retry)
        self._tables = RowTables(manifest, embedding_type=embedding_type, metadata_fields=metadata_fields,
                                 include_text=cfg.include_text, where=cfg.path)
        self._shards = OpenShards(
            fs, self.root, shown=cfg.path, rank=rank, next_seq={k: manifest.last_seq(rank, k) + 1 for k in KINDS},
            fmt=cfg.format, compression=None if cfg.compression in (None, "none") else cfg.compression,
            dictionary_fields=["doc_id", "source", *self._tables.metadata_fields],
            fenced=lambda: self._ledger.fenced, clock=clock,
        )
        self._pending = Pending()
        self._replacing: dict[str, Any] | None = None
        #: changed inputs (url → their new signature) whose old rows leave with their first new rows
        self._changed: dict[str, str | None] = {}
        #: sources whose rows leave with the next commit, and whether each is gone for good
        self._removing: dict[str, bool] = {}
        #: documents of kept inputs (source → doc_ids) whose rows leave with the next commit (their ids moved)
        self._displaced: dict[str, set[str]] = {}
        self._new_signatures: dict[str, str] = {}
        #: changed inputs → the resume keys they were restarted with (whole again once all are committed)
        self._restarted: dict[str, set[str]] = {}
        #: keep the files of retired shards until close (an index opened at the start reads them)
        self.hold_retired = False
        self._held: list[str] = []
        #: sources of shards written before entries listed them, as their files said
        self._sources_read: dict[str, set[str]] = {}
        self._failed: BaseException | None = None
        self._closed = False
        self._run = manifest.start_run(run_started_at, rank=rank)
        try:
            self._save()
        except CommitFailed as exc:  # nothing was started yet
            raise SinkError(str(exc)) from exc

    def _save(self) -> None:
        self._ledger.save(self._manifest)

    # ------------------------------------------------------------ writing

    def replace(self, old: dict[str, Any]) -> None:
        """Start rewriting the rows of shard ``old`` (``pipeline retry-failed``).

        Until the next :meth:`commit`, batches are only appended: the commit
        then publishes the new shards and drops ``old`` from the manifest in
        the same save, and only after that deletes its file, so its rows are
        never both in the dataset twice nor missing from it.
        """
        self._check_usable()
        if self._shards.files:
            self.commit()
        self._replacing = old

    def write(self, batch: EmbeddedBatch) -> list[dict[str, Any]]:
        """Append one batch (in read order); returns the shard entries it caused to be committed."""
        self._check_usable()
        committed: list[dict[str, Any]] = []
        data = self._tables.data(batch) if batch.chunks else None
        errors = self._tables.errors(batch.failures) if batch.failures else None
        shards, limit = self._shards, self.cfg.shard_rows
        if shards.must_roll("data", data, limit) or shards.must_roll("errors", errors, limit):
            committed += self.commit()
        if self._changed:
            self._replace_touched(batch)
        for source, doc_id in batch.displaced:  # kept rows whose ids these take over: they leave together
            self._displaced.setdefault(source, set()).add(doc_id)
        if data is not None:
            shards.open("data", data.schema).append(data)
        if errors is not None:
            shards.open("errors", ERRORS_SCHEMA).append(errors)
        self._pending.add(batch)
        if self._replacing is None and any(s.rows >= limit for s in shards.files.values()):
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
        opened_at = self._shards.opened_at
        return opened_at is not None and self._clock() - opened_at >= self.cfg.shard_seconds

    def commit_if_due(self) -> list[dict[str, Any]]:
        """Commit when the open shard has been open for ``shard_seconds`` or more."""
        self._check_usable()
        if self.commit_due():
            return self.commit()
        return []

    def commit(self) -> list[dict[str, Any]]:
        """Publish the open data and errors shards together, then save the manifest once (with the resume
        state, which may be all that changed: inputs marked gone under ``run.on_deleted: keep``)."""
        self._check_usable()
        open_ = self._shards.files
        if (not open_ and not self._pending.marks and self._replacing is None and not self._removing
                and not self.state.dirty):
            return []
        old, self._replacing = self._replacing, None
        removing, self._removing = self._removing, {}
        displaced, self._displaced = self._displaced, {}
        retired: list[dict[str, Any]] = []
        try:
            rewritten = self._rewrite_without(set(removing), displaced)
            entries = self._publish()
            self._manifest.add_commit(
                entries,
                self._pending.marks,
                schema=open_["data"].schema if "data" in open_ else None,
                last=self._pending.last,
            )
            if old is not None:
                self._manifest.shards.remove(old)
                self.state.drop_shard(old["path"])
                retired.append(old)
            held = self._replaced_by_shard(rewritten, removing)
            retired += self._swap(rewritten, removing)
            kept = keep_for_reuse(self._manifest, held)
            retired = [e for e in retired if e not in kept] + release_replaced(self._manifest, self._changed)
            self._shards.published()
            if entries:
                self._pending = Pending()
            else:  # only marks: any counts wait for the next shard
                self._pending.marks.clear()
                self._pending.last.clear()
            self._save()
        except BaseException as exc:
            # rows of this commit are lost to this process; later marks would
            # then claim them, so the writer refuses any further batch
            self._failed = exc
            self._shards.discard()
            if isinstance(exc, (OSError, pa.ArrowException)) or transient(exc):  # the store's, after retries
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise CommitFailed(
                    f"cannot commit shards to {self.cfg.path}: {reason}; "
                    "what was committed before is intact, run again to resume"
                ) from exc
            raise
        # listed nowhere now; a crash before they are deleted leaves files clean_up removes
        self._held += [join(self.root, gone["path"]) for gone in retired]
        if not self.hold_retired:
            self._delete_held()
        return entries + [new for _, new in rewritten if new is not None]

    def release_retired(self) -> None:
        """Delete the files of shards commits retired while ``hold_retired`` kept them (an index read them)."""
        self._delete_held()

    def renew(self) -> None:
        """Keep the write lease alive between commits; :class:`CommitFailed` if it was lost."""
        self._ledger.renew()

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
            self._shards.discard()
            self._closed = True
            self._run["finished_at"] = utc_now()
            self._run["status"] = "failed" if self._failed is not None else status
            try:  # records the run, even after a failed commit, if the store lets us
                self._save()
            except CommitFailed as exc:
                error = error or exc
        finally:
            try:
                self._delete_held()
            except OSError:  # left for the next start's clean-up
                pass
            self._ledger.release()
        if error is not None:
            raise error

    # ------------------------------------------------------------ checks

    def _check_usable(self) -> None:
        if self._closed:
            raise CommitFailed(f"the dataset writer for {self.cfg.path} is closed")
        if self._failed is not None:
            raise CommitFailed(f"an earlier commit to {self.cfg.path} failed: {self._failed}")

    # ------------------------------------------------------------ replacing sources

    def _rewrite_without(self, urls: set[str], docs: dict[str, set[str]] | None = None) -> list[Rewritten]:
        """Copies of the listed shards that hold rows of ``urls`` (or of ``docs``: source → doc_ids), without
        them: (old entry, new or None)."""
        if not urls and not docs:
            return []
        finished_at = utc_now()

        def publish(shard: ShardWriter, entry: dict[str, Any]) -> None:
            entry["finished_at"] = finished_at
            shard.publish(entry, self._retry)
            entry["bytes"] = shard.size  # in the manifest only, as for any shard

        shards = affected(self.fs, self.root, self._manifest.shards, urls | set(docs or ()), self.state,
                          self._sources_read)
        return [(old, rewrite(self.fs, self.root, old, urls, self._shards.new, publish, self.state, docs))
                for old in shards]

    def _replaced_by_shard(
        self, rewritten: list[Rewritten], removing: dict[str, bool]
    ) -> list[tuple[dict[str, Any], dict[str, list[str]]]]:
        """Each rewritten shard, with the changed inputs (url → resume keys) whose old rows it held."""
        changed = {url: sorted(self._restarted.pop(url, None) or {url}) for url, gone in removing.items() if not gone}
        if not changed:
            return []
        out = []
        for old, _ in rewritten:
            sources = sources_in(self.fs, self.root, old, self.state, self._sources_read)
            out.append((old, {url: keys for url, keys in changed.items() if url in sources}))
        return out

    def replacing(self) -> set[str]:
        """Inputs whose replacement a run left unfinished: the shards of their old rows are kept for reuse."""
        return {url for r in self._manifest.retired for url in r["inputs"]}

    def _swap(self, rewritten: list[Rewritten], removing: dict[str, bool]) -> list[dict[str, Any]]:
        """List the rewritten shards in place of the old ones; the old entries, now retired."""
        retired = swap(self._manifest, rewritten, [url for url, gone in removing.items() if gone])
        self.state.set_signatures(self._new_signatures)
        self._new_signatures = {}
        return retired

    def _publish(self) -> list[dict[str, Any]]:
        """Publish the open shards; the data shard carries the batches' accounting."""
        finished_at = utc_now()
        entries = []
        owner = "data" if "data" in self._shards.files else "errors"
        for kind in KINDS:
            shard = self._shards.files.get(kind)
            if shard is None:
                continue
            counts = self._pending.entry_fields(kind, owner=kind == owner)
            sources, marks = counts.pop("sources"), counts.pop("marks")  # in the resume state
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
            self.state.add_shard(shard.rel, sources, marks)
            entries.append(entry)
        return entries

    def _delete_held(self) -> None:
        """Delete the files of retired shards (the manifest no longer lists them)."""
        held, self._held = self._held, []
        for path in held:
            self.fs.rm_file(path)
