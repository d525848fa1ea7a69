"""The reuse index's view of the earlier dataset's data shards: scanning hashes, fetching vectors.

:func:`scan_shard` streams a shard's ``content_hash`` column into the key
file being built and numbers its rows; a :class:`ShardReader` fetches the
``embedding`` and ``content_hash`` columns of one row group when a lookup
needs them, decoded a slice at a time into one numpy array.
"""

from __future__ import annotations

from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa

from pipeline.dataset.manifest import MANIFEST
from pipeline.dataset.reuse_keys import Partitioner, hash_prefixes
from pipeline.dataset.shards import ShardFile, is_arrow, open_shard
from pipeline.embed import vectors
from pipeline.errors import SinkError

__all__ = ["FETCHED", "IndexedShard", "RowGroup", "ShardReader", "check_schema", "decode", "scan_shard"]

#: the columns a fetch reads
FETCHED = ("embedding", "content_hash")
#: the read buffer of a Parquet fetch: column chunks are read in pieces this large
READ_BUFFER = 1 << 20


@dataclass(frozen=True, slots=True)
class IndexedShard:
    """A data shard of the earlier dataset, as the index numbers its rows."""

    path: str  # as the filesystem knows it
    rel: str  # as the manifest lists it
    start: int  # global number of its first row
    rows: int
    group_starts: np.ndarray  # first row (in the shard) of each row group / record batch


@dataclass(frozen=True, slots=True)
class RowGroup:
    """The vectors and hashes of one row group, decoded."""

    vectors: np.ndarray
    hashes: pa.Array
    usable: np.ndarray  # rows whose embedding is not null

    @property
    def nbytes(self) -> int:
        """Bytes it holds (what the row-group cache counts)."""
        return int(self.vectors.nbytes + self.hashes.nbytes + self.usable.nbytes)


class ShardReader:
    """One open shard file, for fetching row groups ``read_rows`` rows at a time."""

    def __init__(self, fs: fsspec.AbstractFileSystem, shard: IndexedShard, read_rows: int) -> None:
        self._shard = shard
        self._read_rows = read_rows
        self._file: ShardFile = open_shard(fs, shard.path, buffer_size=READ_BUFFER)

    def read(self, group: int, width: int, embedding_type: str) -> RowGroup:
        """The vectors and hashes of one row group (Parquet) or record batch (Arrow IPC)."""
        starts = self._shard.group_starts
        end = int(starts[group + 1]) if group + 1 < len(starts) else self._shard.rows
        rows = end - int(starts[group])
        # decoded a slice at a time into one numpy array: Arrow's share stays a few MB
        matrix = np.empty((rows, width), vectors.DTYPES[embedding_type])
        usable = np.zeros(rows, bool)
        hashes: list[pa.Array] = []
        done = 0
        for batch in self._file.iter_batches(FETCHED, self._read_rows, groups=[group]):
            part = decode(batch, width, embedding_type)
            n = min(len(part.hashes), rows - done)
            matrix[done : done + n] = part.vectors[:n]
            usable[done : done + n] = part.usable[:n]
            hashes.append(part.hashes.slice(0, n))
            done += n
        stored = pa.concat_arrays(hashes) if hashes else pa.array([], pa.string())
        return RowGroup(matrix[:done], stored, usable[:done])

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def check_schema(schema: pa.Schema, rel: str, embedding_type: str) -> int:
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


def decode(table: pa.Table | pa.RecordBatch, width: int, embedding_type: str) -> RowGroup:
    """The ``embedding`` and ``content_hash`` columns of a batch as numpy vectors and Arrow hashes."""
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
    return RowGroup(matrix.reshape(n, width), hashes, usable)


def scan_shard(
    fs: fsspec.AbstractFileSystem,
    path: str,
    rel: str,
    start: int,
    embedding_type: str,
    parts: Partitioner,
    scan_rows: int,
) -> tuple[IndexedShard, int]:
    """Stream one shard's ``content_hash`` column into ``parts``, ``scan_rows`` at a time;
    returns the shard and the width of its vectors."""
    group_rows: list[int] = []
    limit = np.iinfo(parts.record["r"]).max
    position = 0
    with open_shard(fs, path) as shard:
        width = check_schema(shard.schema, rel, embedding_type)
        for group in range(shard.num_groups):
            before = position
            for batch in shard.iter_batches(["content_hash"], scan_rows, groups=[group]):
                column = batch.column(0)
                keys, valid = hash_prefixes(column)
                rows = np.arange(len(column), dtype=np.int64) + (start + position)
                if len(rows) and rows[-1] > limit:
                    raise SinkError(f"run.reuse_from: the data shards hold more rows than {MANIFEST} lists")
                parts.add(keys[valid], rows[valid].astype(parts.record["r"]))
                position += len(column)
            group_rows.append(position - before)
        # an IPC file knows its row count only by reading every batch's header: not worth a second pass
        if not is_arrow(path) and position != shard.num_rows:
            raise SinkError(f"run.reuse_from: shard {rel} holds {position} rows, its row groups {shard.num_rows}")
    starts = np.zeros(len(group_rows), np.int64)
    if group_rows:
        starts[1:] = np.cumsum(group_rows)[:-1]
    return IndexedShard(path=path, rel=rel, start=start, rows=position, group_starts=starts), width
