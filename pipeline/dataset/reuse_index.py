"""Incremental re-index: unchanged chunks take their vector from an earlier dataset.

``run.reuse_from`` names a dataset written earlier with the same model,
input_type and embedding_type. :class:`ReuseIndex` indexes the
``content_hash`` column of its data shards;
:class:`~pipeline.embed.reuse.ReusingEmbedder` wraps the embedder so that a
chunk whose hash is there takes the stored vector, and only new or changed
chunks reach the API (and the bill).

The index is sized for a 512 MB worker dyno whatever the size of the earlier
dataset. It holds, on local temp disk, the 64-bit prefix of every distinct
hash (its first 16 hex digits), sorted, next to the global number of a row
that holds it (data shards in manifest order, rows in file order):

- *build*: the ``content_hash`` column alone is streamed from each shard, a
  batch at a time; the entries are appended to partition files by their top
  bits (one radix pass), then each partition is sorted on its own, stripped
  of duplicate prefixes and appended to one key file and one row file. Peak
  memory is one flush buffer or one partition, never the whole set
  (:mod:`pipeline.dataset.reuse_keys`; the shards are read by
  :mod:`pipeline.dataset.reuse_shards`).
- *lookup*: a sparse fence in RAM (every ``BLOCK``-th key: 8 bytes per 512
  distinct hashes) narrows each hash to one 4 KB block of the key file, read
  with ``pread``; the kernel's page cache, not this process, holds the hot
  blocks. A memory map would do as well at first, but random hashes touch
  every page in time and the whole file would end up in the process's RSS.
- *fetch*: a prefix hit is confirmed against the full ``content_hash`` stored
  in the row when its vector is read, so a prefix collision costs an API
  call, never a wrong vector. Hits are grouped by row group; only the
  ``embedding`` and ``content_hash`` columns of those row groups are read,
  and a small byte-bounded LRU keeps the last ones decoded, since a re-index
  reads the same files in the same order as the run that wrote them. A
  corpus whose records come in another order pays a row-group read per
  reused chunk: correct, but slow.

Disk: 12 bytes per distinct hash (16 past 2**31 rows) in ``tmp_dir``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from typing import Any, Self

import fsspec
import numpy as np
import pyarrow as pa

from pipeline.dataset.manifest import MANIFEST, Manifest, load_dataset_manifest
from pipeline.dataset.reuse_keys import Partitioner, hash_prefixes, probe, remove_index
from pipeline.dataset.reuse_shards import IndexedShard, RowGroup, ShardReader, scan_shard
from pipeline.embed import vectors
from pipeline.errors import SinkError
from pipeline.logs import get_logger
from pipeline.storage import STORE_ERRORS, Location, join, storage_errors

__all__ = ["ReuseIndex", "count_reusable", "hash_prefixes"]

#: keys per fence entry: one 4 KB page of uint64 keys is read per looked-up hash
BLOCK = 512
#: hashes probed at a time (a 4 KB block read each, at most)
PROBE_ROWS = 4096
#: entries buffered before they are appended to the partition files (3-4 MB)
FLUSH_ENTRIES = 1 << 18
#: target entries per partition: sorting one needs about 40 bytes per entry (20 MB)
PARTITION_ENTRIES = 1 << 19
#: content hashes converted per Arrow batch while building
SCAN_ROWS = 1 << 16
#: rows decoded at a time when a row group is fetched
READ_ROWS = 1024
#: decoded row groups kept: at most this many, and beyond the last two, at most this many bytes
#: (two row groups of 8192 float vectors of 1024 dimensions take 65 MB)
CACHE_ROW_GROUPS = 4
CACHE_BYTES = 64 << 20
#: shard files kept open for fetching (a remote open costs a footer read)
CACHE_READERS = 4
#: what a shard that changed or broke under us raises while read
SHARD_ERRORS: tuple[type[BaseException], ...] = (*STORE_ERRORS, pa.ArrowException, KeyError, ValueError)


# --------------------------------------------------------------------------- the index


class ReuseIndex:
    """The content hashes of an earlier dataset, and a way to their vectors.

    Open with :meth:`open` (blocking: call it in a worker thread); look hashes
    up with :meth:`lookup`; :meth:`close` (or leaving the ``with`` block)
    removes the index's temp files. Lookups may come from several threads.
    """

    def __init__(
        self,
        *,
        fs: fsspec.AbstractFileSystem,
        root: str,
        manifest: Manifest,
        embedding_type: str,
        width: int,
        shards: list[IndexedShard],
        directory: str,
        rows: int,
        entries: int,
        fence: np.ndarray,
        row_dtype: np.dtype,
    ) -> None:
        self.fs = fs
        self.root = root
        self.manifest = manifest
        self.embedding_type = embedding_type
        self.dtype = vectors.DTYPES[embedding_type]
        #: stored elements per vector (``dimensions / 8`` for the packed types)
        self.width = width
        self._shards = shards
        self._shard_starts = np.array([s.start for s in shards], dtype=np.int64)
        self._directory = directory
        self._rows = rows
        self._entries = entries
        self._fence = fence
        self._row_dtype = row_dtype
        self._fds: list[int] = []
        # the temp files go even if close() is never called
        self._cleanup = weakref.finalize(self, remove_index, directory, self._fds)
        self._fds.append(os.open(os.path.join(directory, "keys.u64"), os.O_RDONLY))
        self._fds.append(os.open(os.path.join(directory, "rows.bin"), os.O_RDONLY))
        self._keys_fd, self._rows_fd = self._fds
        self._lock = threading.Lock()
        self._groups: OrderedDict[tuple[int, int], RowGroup] = OrderedDict()
        self._group_bytes = 0
        self._readers: OrderedDict[int, ShardReader] = OrderedDict()
        self._unreadable: set[int] = set()
        self._closed = False

    # ------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str,
        storage_options: dict[str, Any] | None = None,
        *,
        model: str,
        input_type: str | None,
        embedding_type: str,
        dimensions: int | None = None,
        fs: fsspec.AbstractFileSystem | None = None,
        tmp_dir: str | None = None,
    ) -> ReuseIndex:
        """Index the data shards of the dataset at ``path`` (a local path or fsspec URL).

        Raises ``SinkError`` (one line) when ``path`` holds no dataset, when the
        dataset was made with another model, input_type or embedding_type (no
        vector could be reused), when its vectors have other ``dimensions``
        than configured, or when a listed shard cannot be read.
        """
        role = "run.reuse_from"
        location = Location.open(path, storage_options, role=role) if fs is None else Location.on(fs, path, role=role)
        fs, root = location.fs, location.root
        where = f"{role} {location.shown}"
        with location.errors("cannot read it"):
            manifest = load_dataset_manifest(fs, root)
        manifest = _check_reusable(where, manifest, model, input_type, embedding_type, dimensions)
        try:
            directory = tempfile.mkdtemp(prefix="pipeline-reuse-", dir=tmp_dir)
        except OSError as exc:
            raise SinkError(f"run.reuse_from: cannot create the index's temp directory: {exc}") from exc
        try:
            return _build(fs, root, manifest, embedding_type, directory)
        except OSError as exc:  # the local temp files: disk full, most likely
            shutil.rmtree(directory, ignore_errors=True)
            raise SinkError(f"run.reuse_from: cannot write the index in {directory}: {exc}") from exc
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    # ------------------------------------------------------------ public

    @property
    def rows(self) -> int:
        """Data rows indexed (every row of every data shard of the earlier dataset)."""
        return self._rows

    @property
    def distinct(self) -> int:
        """Distinct content hashes indexed (duplicate texts share one entry)."""
        return self._entries

    @property
    def dimensions(self) -> int | None:
        """The vectors' dimensions, as the earlier dataset's manifest records them."""
        return self.manifest.dimensions

    def contains(self, hashes: list[str]) -> np.ndarray:
        """Which hashes have their 64-bit prefix in the index (no vector read: an estimate).

        A prefix is a full match but for a one-in-2**64 chance; :meth:`lookup`
        confirms it.
        """
        self._check_open()
        found, _ = self._probe(hashes, with_rows=False)
        return found

    def lookup(self, hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Which hashes the earlier dataset holds, and their vectors.

        Returns a boolean mask over ``hashes`` and a 2-D array with the vector
        of each found hash, in order (the embedding type's dtype,
        :data:`pipeline.vectors.DTYPES`). A hash is found only when a row
        carries exactly that ``content_hash`` and can be read.
        """
        self._check_open()
        found, rows = self._probe(hashes)
        hits = np.flatnonzero(found)
        if not hits.size:
            return found, np.empty((0, self.width), self.dtype)
        with self._lock:
            ok, matrix = self._fetch([hashes[i] for i in hits], rows[hits].astype(np.int64))
        found[hits[~ok]] = False
        return found, matrix[ok]

    def close(self) -> None:
        """Close the shard files and remove the index's temp files."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for reader in self._readers.values():
                _quiet_close(reader)
            self._readers.clear()
            self._groups.clear()
        self._cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise SinkError("run.reuse_from: the reuse index is closed")

    def _probe(self, hashes: list[str], with_rows: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(found by prefix, global row of each found hash or 0)."""
        if len(hashes) > PROBE_ROWS:  # a block read per hash: bound what one call holds
            parts = [self._probe(hashes[i : i + PROBE_ROWS], with_rows) for i in range(0, len(hashes), PROBE_ROWS)]
            return np.concatenate([f for f, _ in parts]), np.concatenate([r for _, r in parts])
        n = len(hashes)
        if not n or not self._entries:
            return np.zeros(n, bool), np.zeros(n, np.int64)
        try:
            array = pa.array(hashes, pa.string())
        except (pa.ArrowException, TypeError):
            array = pa.array([h if isinstance(h, str) else None for h in hashes], pa.string())
        keys, valid = hash_prefixes(array)
        return probe(keys, valid, self._fence, BLOCK, self._keys_fd, self._rows_fd if with_rows else None,
                     self._row_dtype)

    def _fetch(self, hashes: list[str], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read the vectors of global ``rows``; ``ok`` is False where the stored hash differs."""
        n = len(rows)
        ok = np.zeros(n, bool)
        matrix = np.zeros((n, self.width), self.dtype)
        shard_of = np.searchsorted(self._shard_starts, rows, side="right") - 1
        local = rows - self._shard_starts[shard_of]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i in range(n):
            s = int(shard_of[i])
            g = int(np.searchsorted(self._shards[s].group_starts, local[i], side="right")) - 1
            groups[(s, g)].append(i)
        for (s, g), members in groups.items():  # dict order: the first hit's group first
            group = self._row_group(s, g)
            if group is None:
                continue
            base = int(self._shards[s].group_starts[g])
            for i in members:
                r = int(local[i]) - base
                if r < len(group.hashes) and group.usable[r] and group.hashes[r].as_py() == hashes[i]:
                    ok[i] = True
                    matrix[i] = group.vectors[r]
        return ok, matrix

    def _row_group(self, s: int, g: int) -> RowGroup | None:
        key = (s, g)
        group = self._groups.get(key)
        if group is not None:
            self._groups.move_to_end(key)
            return group
        if s in self._unreadable:
            return None
        shard = self._shards[s]
        try:
            group = self._reader(s).read(g, self.width, self.embedding_type)
            # Arrow's allocator keeps freed pages for reuse; the next read is tens of
            # batches away, so hand them back rather than count them in the dyno's RSS
            pa.default_memory_pool().release_unused()
        except SHARD_ERRORS as exc:
            # the earlier dataset changed under us: its rows are embedded again instead
            self._unreadable.add(s)
            get_logger().warning("reuse_shard_unreadable", shard=shard.rel, error=str(exc))
            return None
        self._groups[key] = group
        self._group_bytes += group.nbytes
        while len(self._groups) > 2 and (
            len(self._groups) > CACHE_ROW_GROUPS or self._group_bytes > CACHE_BYTES
        ):
            _, old = self._groups.popitem(last=False)
            self._group_bytes -= old.nbytes
        return group

    def _reader(self, s: int) -> ShardReader:
        reader = self._readers.get(s)
        if reader is not None:
            self._readers.move_to_end(s)
            return reader
        reader = ShardReader(self.fs, self._shards[s], READ_ROWS)
        self._readers[s] = reader
        while len(self._readers) > CACHE_READERS:
            _, old = self._readers.popitem(last=False)
            _quiet_close(old)
        return reader


def _check_reusable(
    where: str,
    manifest: Manifest | None,
    model: str,
    input_type: str | None,
    embedding_type: str,
    dimensions: int | None,
) -> Manifest:
    """``manifest``, unless it is missing or its vectors could not serve this run (``SinkError``)."""
    if manifest is None:
        raise SinkError(f"{where}: no dataset there ({MANIFEST} not found)")
    mine = (manifest.model, manifest.input_type, manifest.embedding_type)
    if mine != (model, input_type, embedding_type):
        raise SinkError(
            f"{where}: that dataset was made with model={manifest.model!r}, "
            f"input_type={manifest.input_type!r}, embedding_type={manifest.embedding_type!r}, "
            f"this run uses model={model!r}, input_type={input_type!r}, "
            f"embedding_type={embedding_type!r}: none of its vectors could be reused"
        )
    if dimensions is not None and manifest.dimensions is not None and manifest.dimensions != dimensions:
        raise SinkError(
            f"{where}: that dataset holds {manifest.dimensions}-dimensional vectors, "
            f"this run asks for {dimensions}: none of its vectors could be reused"
        )
    return manifest


def _build(
    fs: fsspec.AbstractFileSystem, root: str, manifest: Manifest, embedding_type: str, directory: str
) -> ReuseIndex:
    """Scan every data shard's hashes into the key and row files in ``directory``; the index on them.

    The retired shards the manifest keeps for an unfinished replacement are
    indexed too (those still there): they hold the vectors of the rest of it.
    """
    entries = [s for s in manifest.shards if s["kind"] == "data"]
    entries += [s for s in manifest.retired if fs.exists(join(root, s["path"]))]
    listed = sum(int(s.get("rows", 0)) for s in entries)
    row_dtype = np.dtype(np.uint32 if listed < 2**31 else np.uint64)
    bits = min(16, max(0, int(np.ceil(np.log2(max(listed, 1) / PARTITION_ENTRIES)))))
    parts = Partitioner(directory, bits, row_dtype, flush_entries=FLUSH_ENTRIES, block=BLOCK)
    width = vectors.width(embedding_type, manifest.dimensions) if manifest.dimensions else None
    shards: list[IndexedShard] = []
    start = 0
    for entry in entries:
        rel = entry["path"]
        missing = f"run.reuse_from: shard {rel} is listed in {MANIFEST} but missing"
        with storage_errors(SinkError, f"run.reuse_from: cannot read shard {rel}", missing=missing,
                            catch=(*STORE_ERRORS, pa.ArrowException)):
            shard, shard_width = scan_shard(fs, join(root, rel), rel, start, embedding_type, parts, SCAN_ROWS)
        if width is None:
            width = shard_width
        elif shard_width != width and shard.group_starts.size:
            raise SinkError(
                f"run.reuse_from: shard {rel} holds vectors {shard_width} wide, the dataset says {width}"
            )
        shards.append(shard)
        start += shard.rows
        pa.default_memory_pool().release_unused()
    keys_path = os.path.join(directory, "keys.u64")
    rows_path = os.path.join(directory, "rows.bin")
    count, fence = parts.finish(keys_path, rows_path)
    pa.default_memory_pool().release_unused()
    return ReuseIndex(
        fs=fs,
        root=root,
        manifest=manifest,
        embedding_type=embedding_type,
        width=width or 0,
        shards=shards,
        directory=directory,
        rows=start,
        entries=count,
        fence=fence,
        row_dtype=row_dtype,
    )


def _quiet_close(reader: ShardReader) -> None:
    try:
        reader.close()
    except SHARD_ERRORS:
        pass


# --------------------------------------------------------------------------- helpers


def count_reusable(index: ReuseIndex, hashes: Iterable[str], *, batch_rows: int = SCAN_ROWS) -> int:
    """How many of ``hashes`` the index holds (by prefix, reading no vector): for ``pipeline validate``."""
    total = 0
    buffer: list[str] = []
    for h in hashes:
        buffer.append(h)
        if len(buffer) >= batch_rows:
            total += int(index.contains(buffer).sum())
            buffer = []
    if buffer:
        total += int(index.contains(buffer).sum())
    return total

