"""The one reader of a shard file: Parquet, or Arrow IPC for ``.arrow``, told by the extension.

:func:`open_shard` opens a shard and answers in one shape for both formats:
its schema, its own accounting (the ``pipeline`` schema metadata), its row
count, and its rows by row group (Parquet) or record batch (Arrow IPC), the
unit both call a *group* here. It raises what the store and Arrow raise
(``FileNotFoundError``, ``OSError``, ``pyarrow.ArrowException``): callers
translate at their own boundary, since only they know whether a missing
shard is an error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, Self

import fsspec
import orjson
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from pipeline.storage import is_local

__all__ = ["META_KEY", "ShardFile", "is_arrow", "open_shard", "read_shard_footer"]

#: schema metadata key under which each shard file carries its own manifest entry
META_KEY = "pipeline"

#: rows per batch when a caller does not say
BATCH_ROWS = 1 << 16


def is_arrow(path: str) -> bool:
    """Whether the shard at ``path`` is an Arrow IPC file (else Parquet)."""
    return path.endswith(".arrow")


class ShardFile(ABC):
    """One open shard file. Use :func:`open_shard`; close it, or use it as a context manager."""

    def __init__(self, path: str, file: Any) -> None:
        self.path = path
        self._file = file

    # ------------------------------------------------------------ what both formats answer

    @property
    @abstractmethod
    def schema(self) -> pa.Schema:
        """The Arrow schema, with its metadata."""
        raise NotImplementedError

    @property
    @abstractmethod
    def num_rows(self) -> int:
        """Rows in the file."""
        raise NotImplementedError

    @property
    @abstractmethod
    def num_groups(self) -> int:
        """Row groups (Parquet) or record batches (Arrow IPC) in the file."""
        raise NotImplementedError

    @abstractmethod
    def iter_batches(
        self, columns: Sequence[str] | None = None, batch_size: int = BATCH_ROWS, groups: Sequence[int] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The rows of ``groups`` (default: all), in order, ``batch_size`` rows at most at a time."""
        raise NotImplementedError

    @abstractmethod
    def read_group(self, group: int, columns: Sequence[str] | None = None) -> pa.Table:
        """One row group (Parquet) or record batch (Arrow IPC), whole."""
        raise NotImplementedError

    @property
    def meta(self) -> dict[str, Any] | None:
        """The shard's own accounting (its ``pipeline`` schema metadata), or None when it has none."""
        raw = (self._key_values() or {}).get(META_KEY.encode())
        return orjson.loads(raw) if raw else None

    def _key_values(self) -> dict[bytes, bytes] | None:
        return self.schema.metadata

    def close(self) -> None:
        """Close the file."""
        close = getattr(self._file, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ParquetShard(ShardFile):
    def __init__(self, path: str, file: Any, buffer_size: int) -> None:
        super().__init__(path, file)
        # no pre-buffering: it would hold a whole compressed column chunk on top of the result
        self._pf = pq.ParquetFile(file, pre_buffer=False, buffer_size=buffer_size)

    @property
    def schema(self) -> pa.Schema:
        return self._pf.schema_arrow

    @property
    def num_rows(self) -> int:
        return int(self._pf.metadata.num_rows)

    def _key_values(self) -> dict[bytes, bytes] | None:
        return self._pf.metadata.metadata  # the file's own, whatever the Arrow schema stored

    @property
    def num_groups(self) -> int:
        return int(self._pf.num_row_groups)

    def iter_batches(
        self, columns: Sequence[str] | None = None, batch_size: int = BATCH_ROWS, groups: Sequence[int] | None = None
    ) -> Iterator[pa.RecordBatch]:
        return self._pf.iter_batches(
            batch_size=batch_size,
            row_groups=list(groups) if groups is not None else None,
            columns=list(columns) if columns is not None else None,
            use_threads=False,
        )

    def read_group(self, group: int, columns: Sequence[str] | None = None) -> pa.Table:
        return self._pf.read_row_group(group, columns=list(columns) if columns is not None else None, use_threads=False)

    def close(self) -> None:
        self._pf.close()
        super().close()


class _ArrowShard(ShardFile):
    def __init__(self, path: str, file: Any) -> None:
        super().__init__(path, file)
        self._all = pa.ipc.open_file(file)
        self._projected: dict[tuple[str, ...], Any] = {}

    def _reader(self, columns: Sequence[str] | None) -> Any:
        """A reader that decodes only ``columns`` (Arrow IPC projects when the file is opened)."""
        if columns is None:
            return self._all
        key = tuple(columns)
        reader = self._projected.get(key)
        if reader is None:
            schema = self._all.schema
            fields = sorted(schema.get_field_index(name) for name in key)
            if any(i < 0 for i in fields):
                missing = [name for name in key if schema.get_field_index(name) < 0]
                raise KeyError(f"{self.path} has no column {missing[0]!r}")
            options = pa.ipc.IpcReadOptions(included_fields=fields)
            reader = self._projected[key] = pa.ipc.open_file(self._file, options=options)
        return reader

    @property
    def schema(self) -> pa.Schema:
        return self._all.schema

    @property
    def num_rows(self) -> int:
        return int(self._all.count_rows())

    @property
    def num_groups(self) -> int:
        return int(self._all.num_record_batches)

    def iter_batches(
        self, columns: Sequence[str] | None = None, batch_size: int = BATCH_ROWS, groups: Sequence[int] | None = None
    ) -> Iterator[pa.RecordBatch]:
        reader = self._reader(columns)
        for i in groups if groups is not None else range(reader.num_record_batches):
            batch = reader.get_batch(i)
            for offset in range(0, batch.num_rows, batch_size):
                yield batch.slice(offset, batch_size)

    def read_group(self, group: int, columns: Sequence[str] | None = None) -> pa.Table:
        return pa.Table.from_batches([self._reader(columns).get_batch(group)])


def open_shard(fs: fsspec.AbstractFileSystem, path: str, *, buffer_size: int = 0) -> ShardFile:
    """The shard file at ``path``: Arrow IPC for ``.arrow``, else Parquet.

    Local files are read through Arrow's own reader (no GIL, no Python file
    object), with plain reads rather than a memory map, which would count in
    the process's memory. ``buffer_size`` (Parquet) reads column chunks in
    pieces of that many bytes instead of whole.
    """
    file: Any = pa.OSFile(path, "rb") if is_local(fs) else fs.open(path, "rb")
    try:
        return _ArrowShard(path, file) if is_arrow(path) else _ParquetShard(path, file, buffer_size)
    except BaseException:
        file.close()
        raise


def read_shard_footer(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, dict[str, Any] | None]:
    """Row count and ``pipeline`` schema metadata of one shard file, from its footer."""
    with open_shard(fs, path) as shard:
        return shard.num_rows, shard.meta
