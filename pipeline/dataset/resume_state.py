"""The file dataset's resume state, as the Sink protocol asks for it: kept in ``_state/`` files the manifest lists.

How far each input is committed, the signature it had when read, seek
checkpoints, the model that answered, which inputs changed or are gone:
what :class:`~pipeline.dataset.writer.DatasetWriter` saves with each commit.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping

import fsspec
import pyarrow.compute as pc

from pipeline.dataset.manifest import Manifest
from pipeline.dataset.shards import open_shard
from pipeline.dataset.state import State, held_back, of_url
from pipeline.dataset.state_base import Column
from pipeline.stages.ids import DUPLICATE_ID, losers_of
from pipeline.storage import join
from pipeline.types import Counts, EmbeddedBatch


class ResumeState:
    """The resume-state half of the file sink (its writing half is the subclass)."""

    fs: fsspec.AbstractFileSystem
    root: str
    rank: int
    _manifest: Manifest
    #: changed inputs (url → their new signature) whose old rows leave with their first new rows
    _changed: dict[str, str | None]
    #: sources whose rows leave with the next commit, and whether each is gone for good
    _removing: dict[str, bool]
    #: new signatures of changed inputs, saved with the commit that removes their old rows
    _new_signatures: dict[str, str]
    #: changed inputs → the resume keys they were restarted with
    _restarted: dict[str, set[str]]


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

    @property
    def state(self) -> State:
        """The resume state as of the last commit, plus what this run changed since."""
        return self._manifest.loaded

    def signature(self, url: str) -> str | None:
        """The signature input ``url`` had when it was last read, if it was."""
        return self.state.files.get(url)

    def signatures(self) -> Mapping[str, str]:
        """Every input the dataset knows, with the signature it had when last read (a read-only view, not a copy:
        a million of them would be a million Python strings)."""
        return MappingProxyType(self.state.files)

    def unlisted(self, urls: Iterable[str]) -> list[str]:
        """The inputs the dataset knows that are none of ``urls`` (a listing's, walked once): found through
        the state's own index of names, rather than an index of the listing built for the purpose."""
        files = self.state.files
        if isinstance(files, Column):
            return files.unlisted(urls)
        listed = set(urls)
        return [url for url in files if url not in listed]

    def set_signature(self, url: str, signature: str) -> None:
        """Record ``url``'s signature; saved with the next commit (a changed input's: with its new rows)."""
        if url in self._changed:
            self._changed[url] = signature
        else:
            self.state.set_signature(url, signature)

    def set_signatures(self, pairs: Iterable[tuple[str, str]]) -> None:
        """:meth:`set_signature` of each url and signature, in one call."""
        self.state.set_signatures(held_back(self._changed, pairs))

    def restart(self, key: str, url: str) -> None:
        """Input ``key`` changed: the next read starts at its top.

        Its old rows leave in the commit that brings its first new rows (or
        its end), together with its new signature: a reader never sees both
        versions, and a crash before that commit finds it changed again.
        """
        self.state.restart(key, url)
        self._changed.setdefault(url, None)
        self._restarted.setdefault(url, set()).add(key)

    def append(self, key: str, url: str) -> bool:
        """Input ``key`` only grew at its end: read on after its last record; False when that is unknown."""
        return self.state.read_on(key)

    def share_of(self, urls: list[str]) -> float:
        """The share of the dataset's records whose source is one of ``urls``."""
        return self.state.share_of(urls)

    def remove_sources(self, urls: list[str]) -> None:
        """Rows whose ``source`` is one of ``urls`` leave with the next commit (inputs that are gone)."""
        for url in urls:
            self._removing[url] = True

    def note_model(self, reported: str) -> None:
        """Record the model the server says answered; saved with the next commit."""
        self._manifest.reported_model = reported

    def offsets(self) -> dict[str, list[list[int]]]:
        """The seek checkpoints of big input files, as saved."""
        return {url: [list(c) for c in cs] for url, cs in self.state.offsets.items()}

    def set_offsets(self, offsets: dict[str, list[list[int]]]) -> None:
        """Replace the seek checkpoints; saved with the next commit (the changed ones)."""
        self.state.set_offsets(offsets)

    def known_ids(self) -> Iterator[tuple[list[str], list[str]]]:
        """The ids and sources of this rank's committed data rows, a block at a time."""
        return known_ids(self.fs, self.root, self._manifest.shards, self.rank)

    def id_losers(self, holders: set[str]) -> set[str]:
        """The inputs with ``duplicate_id`` error rows whose id one of ``holders`` held."""
        return id_losers(self.fs, self.root, self._manifest.shards, holders)

    def _replace_touched(self, batch: EmbeddedBatch) -> None:
        """A batch brings the first new rows (or the end) of changed inputs: their old rows leave now."""
        touched = {c.source for c in batch.chunks} | {f.source for f in batch.failures}
        for url in list(self._changed):
            if url in touched or any(of_url(key, url) for key, _ in batch.marks):
                signature = self._changed.pop(url)
                self._removing.setdefault(url, False)
                if signature is not None:
                    self._new_signatures[url] = signature


def known_ids(fs: fsspec.AbstractFileSystem, root: str, shards: Iterable[dict[str, Any]],
              rank: int) -> Iterator[tuple[list[str], list[str]]]:
    """The ids and sources of the rows of rank ``rank``'s data ``shards`` (manifest entries), a block at a time."""
    mine = f"part-{rank:05d}-"
    for entry in shards:
        if entry["kind"] != "data" or mine not in entry["path"]:
            continue
        with open_shard(fs, join(root, entry["path"])) as shard:
            for block in shard.iter_batches(columns=["id", "source"]):
                yield block.column(0).to_pylist(), block.column(1).to_pylist()


def id_losers(fs: fsspec.AbstractFileSystem, root: str, shards: Iterable[dict[str, Any]],
              holders: set[str]) -> set[str]:
    """The inputs with ``duplicate_id`` error rows in the errors ``shards`` (manifest entries) whose id
    one of ``holders`` held (see :func:`~pipeline.stages.ids.losers_of`): no data shard is opened, and
    only the source, error_type and message columns of the errors shards are read."""
    found: set[str] = set()
    for entry in shards if holders else ():
        if entry["kind"] != "errors":
            continue
        with open_shard(fs, join(root, entry["path"])) as shard:
            for block in shard.iter_batches(columns=["source", "error_type", "message"]):
                dup = pc.equal(block.column(1), DUPLICATE_ID)
                if pc.any(dup).as_py():
                    sources, messages = pc.filter(block.column(0), dup), pc.filter(block.column(2), dup)
                    found |= losers_of(holders, zip(sources.to_pylist(), messages.to_pylist()))
    return found
