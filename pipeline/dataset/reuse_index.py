"""Incremental re-index: unchanged chunks take their vector from an earlier dataset.

``run.reuse_from`` names a dataset written earlier with the same model,
input_type and embedding_type. :class:`ReuseIndex` indexes the
``content_hash`` column of its data shards; :class:`ReusingEmbedder` wraps the
embedder so that a chunk whose hash is there takes the stored vector, and only
new or changed chunks reach the API (and the bill).

The index is sized for a 512 MB worker dyno whatever the size of the earlier
dataset. It holds, on local temp disk, the 64-bit prefix of every distinct
hash (its first 16 hex digits), sorted, next to the global number of a row
that holds it (data shards in manifest order, rows in file order):

- *build*: the ``content_hash`` column alone is streamed from each shard, a
  batch at a time; the entries are appended to partition files by their top
  bits (one radix pass), then each partition is sorted on its own, stripped
  of duplicate prefixes and appended to one key file and one row file. Peak
  memory is one flush buffer or one partition, never the whole set.
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
from collections import OrderedDict, defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Self

import anyio
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from pipeline.embed import vectors
from pipeline.errors import SinkError
from pipeline.logs import get_logger
from pipeline.dataset.manifest import MANIFEST, Manifest, is_local, join, load_dataset_manifest
from pipeline.types import Batch, EmbeddedBatch, Usage

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
#: rows decoded at a time when a Parquet row group is fetched, and the read buffer
READ_ROWS = 1024
READ_BUFFER = 1 << 20
#: decoded row groups kept: at most this many, and beyond the last two, at most this many bytes
#: (two row groups of 8192 float vectors of 1024 dimensions take 65 MB)
CACHE_ROW_GROUPS = 4
CACHE_BYTES = 64 << 20
#: shard files kept open for fetching (a remote open costs a footer read)
CACHE_READERS = 4

HASH_HEX = 64  # hex digits of a SHA-256

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_NIBBLES = np.arange(16, dtype=np.int32)


def hash_prefixes(hashes: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit prefixes of hex content hashes, and which ones are well-formed.

    ``hashes`` is an Arrow string array; an entry that is null or not 64 hex
    digits gets ``valid = False`` (and a meaningless key). Vectorised: no
    Python object per hash.
    """
    if isinstance(hashes, pa.ChunkedArray):
        hashes = hashes.combine_chunks()
    if pa.types.is_large_string(hashes.type):
        offset_type: Any = np.int64
    elif pa.types.is_string(hashes.type):
        offset_type = np.int32
    else:
        hashes = hashes.cast(pa.string())
        offset_type = np.int32
    n = len(hashes)
    if n == 0:
        return np.empty(0, np.uint64), np.empty(0, bool)
    _, off_buf, data_buf = hashes.buffers()
    offsets = np.frombuffer(off_buf, dtype=offset_type)[hashes.offset : hashes.offset + n + 1]
    starts = offsets[:-1]
    valid = (offsets[1:] - starts) == HASH_HEX
    if hashes.null_count:
        valid &= hashes.is_valid().to_numpy(zero_copy_only=False)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    if len(data) == 0:
        return np.zeros(n, np.uint64), np.zeros(n, bool)
    where = np.minimum(starts[:, None] + _NIBBLES.astype(starts.dtype), len(data) - 1)
    nibbles = _HEX[data[where]]
    valid &= (nibbles != 255).all(axis=1)
    packed = (nibbles[:, 0::2] << 4) | (nibbles[:, 1::2] & 15)  # (n, 8) bytes, big-endian order
    keys = np.ascontiguousarray(packed).view(">u8")[:, 0].astype(np.uint64)
    return keys, valid


# --------------------------------------------------------------------------- building


class _Partitioner:
    """Appends (key, row) entries to partition files, then merges them into one sorted index."""

    def __init__(self, directory: str, bits: int, row_dtype: np.dtype) -> None:
        self.directory = directory
        self.bits = bits
        self.record = np.dtype([("k", "<u8"), ("r", row_dtype)])
        self._keys: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._buffered = 0

    def _path(self, p: int) -> str:
        return os.path.join(self.directory, f"part-{p:05d}.bin")

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        self._keys.append(keys)
        self._rows.append(rows)
        self._buffered += len(keys)
        if self._buffered >= FLUSH_ENTRIES:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        keys = np.concatenate(self._keys)
        rows = np.concatenate(self._rows)
        self._keys, self._rows, self._buffered = [], [], 0
        records = np.empty(len(keys), self.record)
        if self.bits == 0:
            records["k"], records["r"] = keys, rows
            with open(self._path(0), "ab") as f:
                records.tofile(f)
            return
        part = (keys >> np.uint64(64 - self.bits)).astype(np.int64)
        order = np.argsort(part, kind="stable")  # stable: rows stay in scan order
        records["k"], records["r"] = keys[order], rows[order]
        ends = np.cumsum(np.bincount(part, minlength=1 << self.bits))
        start = 0
        for p, end in enumerate(ends):
            if end > start:
                with open(self._path(p), "ab") as f:
                    records[start:end].tofile(f)
            start = int(end)

    def finish(self, keys_path: str, rows_path: str) -> tuple[int, np.ndarray]:
        """Sort each partition into the key and row files; returns (entries, fence)."""
        self._flush()
        total = 0
        fence: list[np.ndarray] = []
        with open(keys_path, "wb") as kf, open(rows_path, "wb") as rf:
            for p in range(1 << self.bits):
                path = self._path(p)
                if not os.path.exists(path):
                    continue
                records = np.fromfile(path, dtype=self.record)
                os.remove(path)
                order = np.argsort(records["k"], kind="stable")  # stable: the first row of a hash wins
                keys = records["k"][order]
                rows = records["r"][order]
                del records, order
                keep = np.empty(len(keys), bool)
                keep[0] = True
                np.not_equal(keys[1:], keys[:-1], out=keep[1:])
                keys, rows = keys[keep], rows[keep]
                first = (-total) % BLOCK  # the first position here that is a multiple of BLOCK overall
                fence.append(keys[first::BLOCK].copy())
                keys.tofile(kf)
                rows.tofile(rf)
                total += len(keys)
        return total, (np.concatenate(fence) if fence else np.empty(0, np.uint64))


def _remove(directory: str, fds: list[int]) -> None:
    """Close the index files and delete them (also run by the finalizer)."""
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass
    shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- reading shards


@dataclass(frozen=True, slots=True)
class _Shard:
    path: str  # as the filesystem knows it
    rel: str  # as the manifest lists it
    arrow: bool
    start: int  # global number of its first row
    rows: int
    group_starts: np.ndarray  # first row (in the shard) of each row group / record batch


@dataclass(frozen=True, slots=True)
class _RowGroup:
    vectors: np.ndarray
    hashes: pa.Array
    usable: np.ndarray  # rows whose embedding is not null

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.hashes.nbytes + self.usable.nbytes)


class _Reader:
    """One open shard file, for fetching row groups."""

    def __init__(self, fs: fsspec.AbstractFileSystem, shard: _Shard) -> None:
        self._file: Any = _open(fs, shard.path)
        self._pq: Any = None
        self._ipc: Any = None
        try:
            if shard.arrow:
                schema = pa.ipc.open_file(self._file).schema
                fields = [schema.get_field_index(c) for c in ("embedding", "content_hash")]
                options = pa.ipc.IpcReadOptions(included_fields=sorted(fields))
                self._ipc = pa.ipc.open_file(self._file, options=options)
            else:
                # no pre-buffering: it would hold the whole compressed column chunk
                # (30 MB for 8192 float vectors of 1024 dimensions) on top of the result
                self._pq = pq.ParquetFile(self._file, pre_buffer=False, buffer_size=READ_BUFFER)
        except BaseException:
            self.close()
            raise

    def read(self, group: int, width: int, embedding_type: str) -> _RowGroup:
        """The vectors and hashes of one row group (Parquet) or record batch (Arrow IPC)."""
        if self._ipc is not None:
            return _decode(self._ipc.get_batch(group), width, embedding_type)
        # decoded a slice at a time into one numpy array: Arrow's share stays a few MB
        rows = self._pq.metadata.row_group(group).num_rows
        matrix = np.empty((rows, width), vectors.DTYPES[embedding_type])
        usable = np.zeros(rows, bool)
        hashes: list[pa.Array] = []
        done = 0
        for batch in self._pq.iter_batches(
            batch_size=READ_ROWS, row_groups=[group], columns=["embedding", "content_hash"], use_threads=False
        ):
            part = _decode(batch, width, embedding_type)
            n = min(len(part.hashes), rows - done)
            matrix[done : done + n] = part.vectors[:n]
            usable[done : done + n] = part.usable[:n]
            hashes.append(part.hashes.slice(0, n))
            done += n
        stored = pa.concat_arrays(hashes) if hashes else pa.array([], pa.string())
        return _RowGroup(matrix[:done], stored, usable[:done])

    def close(self) -> None:
        if self._pq is not None:
            self._pq.close()
        close = getattr(self._file, "close", None)
        if close is not None:
            close()


def _open(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    # local files through Arrow's own reader (no GIL, no Python file object);
    # plain reads rather than a memory map, which would count towards the dyno's RSS
    if is_local(fs):
        return pa.OSFile(path, "rb")
    return fs.open(path, "rb")


def _check_schema(schema: pa.Schema, rel: str, embedding_type: str) -> int:
    """The stored width of the shard's vectors; ``SinkError`` unless it has what reuse needs."""
    for name in ("content_hash", "embedding"):
        if schema.get_field_index(name) < 0:
            raise SinkError(f"run.reuse_from: shard {rel} has no {name!r} column; it cannot be reused from")
    etype = schema.field("embedding").type
    expected = vectors.ARROW_VALUE_TYPES[embedding_type]
    if not pa.types.is_fixed_size_list(etype) or etype.value_type != expected:
        raise SinkError(
            f"run.reuse_from: shard {rel} stores embeddings as {etype}, not {embedding_type} vectors"
        )
    return int(etype.list_size)


def _decode(table: pa.Table | pa.RecordBatch, width: int, embedding_type: str) -> _RowGroup:
    column = table.column("embedding")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    # .values with the slice offset (not .flatten()): null lists keep their slots
    values = column.values.slice(column.offset * width, n * width)
    matrix = values.to_numpy(zero_copy_only=False).astype(vectors.DTYPES[embedding_type], copy=False)
    usable = np.ones(n, bool) if not column.null_count else column.is_valid().to_numpy(zero_copy_only=False)
    hashes = table.column("content_hash")
    if isinstance(hashes, pa.ChunkedArray):
        hashes = hashes.combine_chunks()
    return _RowGroup(matrix.reshape(n, width), hashes, usable)


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
        shards: list[_Shard],
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
        self._cleanup = weakref.finalize(self, _remove, directory, self._fds)
        self._fds.append(os.open(os.path.join(directory, "keys.u64"), os.O_RDONLY))
        self._fds.append(os.open(os.path.join(directory, "rows.bin"), os.O_RDONLY))
        self._keys_fd, self._rows_fd = self._fds
        self._lock = threading.Lock()
        self._groups: OrderedDict[tuple[int, int], _RowGroup] = OrderedDict()
        self._group_bytes = 0
        self._readers: OrderedDict[int, _Reader] = OrderedDict()
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
        where = f"run.reuse_from {path}"
        if fs is None:
            try:
                fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
            except (ImportError, ValueError, OSError) as exc:
                raise SinkError(f"{where}: cannot open it: {exc}") from exc
        else:
            root = fs._strip_protocol(path)
        root = root.rstrip("/") or "/"
        try:
            manifest = load_dataset_manifest(fs, root)
        except OSError as exc:
            raise SinkError(f"{where}: cannot read it: {exc}") from exc
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
        try:
            directory = tempfile.mkdtemp(prefix="pipeline-reuse-", dir=tmp_dir)
        except OSError as exc:
            raise SinkError(f"run.reuse_from: cannot create the index's temp directory: {exc}") from exc
        try:
            return cls._build(fs, root, manifest, embedding_type, directory)
        except OSError as exc:  # the local temp files: disk full, most likely
            shutil.rmtree(directory, ignore_errors=True)
            raise SinkError(f"run.reuse_from: cannot write the index in {directory}: {exc}") from exc
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    @classmethod
    def _build(
        cls, fs: fsspec.AbstractFileSystem, root: str, manifest: Manifest, embedding_type: str, directory: str
    ) -> ReuseIndex:
        entries = [s for s in manifest.shards if s["kind"] == "data"]
        listed = sum(int(s.get("rows", 0)) for s in entries)
        row_dtype = np.dtype(np.uint32 if listed < 2**31 else np.uint64)
        bits = min(16, max(0, int(np.ceil(np.log2(max(listed, 1) / PARTITION_ENTRIES)))))
        parts = _Partitioner(directory, bits, row_dtype)
        width = vectors.width(embedding_type, manifest.dimensions) if manifest.dimensions else None
        shards: list[_Shard] = []
        start = 0
        for entry in entries:
            rel = entry["path"]
            path = join(root, rel)
            try:
                shard, shard_width = _scan(fs, path, rel, start, embedding_type, parts)
            except FileNotFoundError as exc:
                raise SinkError(f"run.reuse_from: shard {rel} is listed in {MANIFEST} but missing") from exc
            except (OSError, pa.ArrowException) as exc:
                raise SinkError(f"run.reuse_from: cannot read shard {rel}: {exc}") from exc
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
        return cls(
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

    @property
    def resident_bytes(self) -> int:
        """Bytes the index keeps in RAM besides the row-group cache (its key and row files stay on disk)."""
        return int(self._fence.nbytes + self._shard_starts.nbytes + sum(s.group_starts.nbytes for s in self._shards))

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
        rows = np.zeros(n, np.int64)
        if not n or not self._entries:
            return np.zeros(n, bool), rows
        try:
            array = pa.array(hashes, pa.string())
        except (pa.ArrowException, TypeError):
            array = pa.array([h if isinstance(h, str) else None for h in hashes], pa.string())
        keys, valid = hash_prefixes(array)
        block = np.searchsorted(self._fence, keys, side="right") - 1
        valid &= block >= 0
        which = np.flatnonzero(valid)
        found = np.zeros(n, bool)
        if not which.size:
            return found, rows
        # one positional read per block needed: the kernel's page cache keeps the
        # hot ones, and none of the key file counts in this process's RSS (with a
        # memory map, random hashes would in time make all of it resident)
        blocks = np.unique(block[which])
        size = BLOCK * 8
        fd = self._keys_fd
        stored = np.frombuffer(b"".join([os.pread(fd, size, int(j) * size) for j in blocks]), dtype="<u8")
        # blocks are slices of one sorted file, taken in order: together still sorted,
        # and a key present in its block is found at its place there
        at = np.searchsorted(stored, keys[which])
        hit = (at < len(stored)) & (stored[np.minimum(at, len(stored) - 1)] == keys[which])
        which, at = which[hit], at[hit]
        found[which] = True
        if with_rows:
            positions = blocks[at // BLOCK] * BLOCK + at % BLOCK
            item = self._row_dtype.itemsize
            raw = b"".join([os.pread(self._rows_fd, item, int(p) * item) for p in positions])
            rows[which] = np.frombuffer(raw, dtype=self._row_dtype)
        return found, rows

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

    def _row_group(self, s: int, g: int) -> _RowGroup | None:
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
        except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
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

    def _reader(self, s: int) -> _Reader:
        reader = self._readers.get(s)
        if reader is not None:
            self._readers.move_to_end(s)
            return reader
        reader = _Reader(self.fs, self._shards[s])
        self._readers[s] = reader
        while len(self._readers) > CACHE_READERS:
            _, old = self._readers.popitem(last=False)
            _quiet_close(old)
        return reader


def _quiet_close(reader: _Reader) -> None:
    try:
        reader.close()
    except (OSError, pa.ArrowException):
        pass


def _scan(
    fs: fsspec.AbstractFileSystem, path: str, rel: str, start: int, embedding_type: str, parts: _Partitioner
) -> tuple[_Shard, int]:
    """Stream one shard's ``content_hash`` column into ``parts``; returns the shard and its width."""
    arrow = path.endswith(".arrow")
    group_rows: list[int] = []
    limit = np.iinfo(parts.record["r"]).max
    with _open(fs, path) as f:
        if arrow:
            schema = pa.ipc.open_file(f).schema
            width = _check_schema(schema, rel, embedding_type)
            options = pa.ipc.IpcReadOptions(included_fields=[schema.get_field_index("content_hash")])
            reader = pa.ipc.open_file(f, options=options)
            batches: Iterator[pa.RecordBatch] = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            pf = pq.ParquetFile(f)
            width = _check_schema(pf.schema_arrow, rel, embedding_type)
            group_rows = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            batches = pf.iter_batches(batch_size=SCAN_ROWS, columns=["content_hash"], use_threads=False)
        position = 0
        for batch in batches:
            if arrow:
                group_rows.append(batch.num_rows)
            column = batch.column(0)
            for offset in range(0, len(column), SCAN_ROWS):
                piece = column.slice(offset, SCAN_ROWS)
                keys, valid = hash_prefixes(piece)
                rows = np.arange(len(piece), dtype=np.int64) + (start + position + offset)
                if len(rows) and rows[-1] > limit:
                    raise SinkError(f"run.reuse_from: the data shards hold more rows than {MANIFEST} lists")
                parts.add(keys[valid], rows[valid].astype(parts.record["r"]))
            position += len(column)
        if not arrow and position != sum(group_rows):
            raise SinkError(f"run.reuse_from: shard {rel} holds {position} rows, its row groups {sum(group_rows)}")
    starts = np.zeros(len(group_rows), np.int64)
    if group_rows:
        starts[1:] = np.cumsum(group_rows)[:-1]
    shard = _Shard(path=path, rel=rel, arrow=arrow, start=start, rows=position, group_starts=starts)
    return shard, width


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

