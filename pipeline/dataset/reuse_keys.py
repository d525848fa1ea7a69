"""The reuse index's key file: 64-bit prefixes of content hashes, sorted on local disk.

:func:`hash_prefixes` turns hex hashes into keys without a Python object per
hash; a :class:`Partitioner` collects (key, row) entries in partition files
by their top bits (one radix pass), then sorts each partition on its own
into one key file and one row file, keeping the first row of each key and a
sparse fence (every ``block``-th key) for lookups. Peak memory is one flush
buffer or one partition, never the whole set. :func:`probe` looks keys up,
one block read per key at most.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["Partitioner", "hash_prefixes", "probe", "remove_index"]

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


class Partitioner:
    """Appends (key, row) entries to partition files, then merges them into one sorted index."""

    def __init__(self, directory: str, bits: int, row_dtype: np.dtype, *, flush_entries: int, block: int) -> None:
        self.directory = directory
        self.bits = bits
        self.flush_entries = flush_entries  # entries buffered before they go to the partition files
        self.block = block  # keys per fence entry
        self.record = np.dtype([("k", "<u8"), ("r", row_dtype)])
        self._keys: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._buffered = 0

    def _path(self, p: int) -> str:
        return os.path.join(self.directory, f"part-{p:05d}.bin")

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Buffer (key, row) entries, flushing them to the partition files now and then."""
        self._keys.append(keys)
        self._rows.append(rows)
        self._buffered += len(keys)
        if self._buffered >= self.flush_entries:
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
                first = (-total) % self.block  # the first position here that is a multiple of block overall
                fence.append(keys[first :: self.block].copy())
                keys.tofile(kf)
                rows.tofile(rf)
                total += len(keys)
        return total, (np.concatenate(fence) if fence else np.empty(0, np.uint64))


def probe(
    keys: np.ndarray,
    valid: np.ndarray,
    fence: np.ndarray,
    block: int,
    keys_fd: int,
    rows_fd: int | None,
    row_dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray]:
    """Which ``valid`` keys the key file holds, and the row of each (0 where not found, or without ``rows_fd``).

    ``fence`` holds every ``block``-th key of the file, which narrows each
    key to one block of ``block`` keys read with ``pread``.
    """
    n = len(keys)
    rows = np.zeros(n, np.int64)
    at_block = np.searchsorted(fence, keys, side="right") - 1
    valid = valid & (at_block >= 0)
    which = np.flatnonzero(valid)
    found = np.zeros(n, bool)
    if not which.size:
        return found, rows
    # one positional read per block needed: the kernel's page cache keeps the
    # hot ones, and none of the key file counts in this process's RSS (with a
    # memory map, random hashes would in time make all of it resident)
    blocks = np.unique(at_block[which])
    size = block * 8
    stored = np.frombuffer(b"".join([os.pread(keys_fd, size, int(j) * size) for j in blocks]), dtype="<u8")
    # blocks are slices of one sorted file, taken in order: together still sorted,
    # and a key present in its block is found at its place there
    at = np.searchsorted(stored, keys[which])
    hit = (at < len(stored)) & (stored[np.minimum(at, len(stored) - 1)] == keys[which])
    which, at = which[hit], at[hit]
    found[which] = True
    if rows_fd is not None:
        positions = blocks[at // block] * block + at % block
        item = row_dtype.itemsize
        raw = b"".join([os.pread(rows_fd, item, int(p) * item) for p in positions])
        rows[which] = np.frombuffer(raw, dtype=row_dtype)
    return found, rows


def remove_index(directory: str, fds: list[int]) -> None:
    """Close the index files and delete them (also run by the finalizer)."""
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass
    shutil.rmtree(directory, ignore_errors=True)
