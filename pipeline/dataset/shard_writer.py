"""One shard being written: rows stream into a temp file, published whole at commit.

Local disk: a hidden temp file next to the final name, fsynced, then renamed.
Object stores: a local temp file, then one PUT. Either way a reader never
sees a half-written shard, and the file carries its own accounting in its
schema metadata (``pipeline``), the same entry the manifest lists.
"""

from __future__ import annotations

import base64
import os
import tempfile
from typing import Any, Callable

import fsspec
import orjson
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from pipeline.dataset.manifest import utc_now
from pipeline.dataset.shards import META_KEY
from pipeline.storage import is_local, join

#: rows buffered before they are written out as one Parquet row group / IPC batch
ROW_GROUP_ROWS = 8192

IPC_CODECS = ("zstd", "lz4")


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


class ShardWriter:
    """One shard being written: rows stream into a temp file, published at commit."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        root: str,
        rel: str,
        schema: pa.Schema,
        *,
        fmt: str,
        compression: str | None,
        dictionary: list[str] | bool,
    ) -> None:
        self.fs = fs
        self.rel = rel
        self.final = join(root, rel)
        self.schema = schema
        self.fmt = fmt
        self.compression = compression
        self.local = is_local(fs)
        self.rows = 0
        self.size: int | None = None  # bytes of the published file, once published
        self.started_at = utc_now()
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        directory, name = self.final.rsplit("/", 1)
        if self.local:
            # hidden (dot) names: readers of the directory skip them, and a
            # crash leaves them where the next start finds and deletes them
            fs.makedirs(directory, exist_ok=True)
            self.tmp = f"{directory}/.{name}.tmp"
        else:
            fd, self.tmp = tempfile.mkstemp(prefix=f"pipeline-.{name}.", suffix=".tmp")
            os.close(fd)
        if fmt == "parquet":
            self._writer: Any = pq.ParquetWriter(
                self.tmp, schema, compression=compression or "none", use_dictionary=dictionary
            )
            self._sink = None
        else:
            # the final file needs the metadata in its schema, which is written
            # first: stream uncompressed here and compress while re-streaming
            self._sink = pa.OSFile(self.tmp, "wb")
            self._writer = pa.ipc.new_file(self._sink, schema)

    def append(self, table: pa.Table) -> None:
        """Add rows; they reach the temp file in row groups of ~``ROW_GROUP_ROWS``."""
        self._buffer.append(table)
        self._buffered += table.num_rows
        self.rows += table.num_rows
        if self._buffered >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        if self.fmt == "parquet":
            self._writer.write_table(table, row_group_size=table.num_rows)
        else:
            self._writer.write_table(table.combine_chunks())

    def publish(self, entry: dict[str, Any], retry: Callable[[Callable[[], None], str], None]) -> None:
        """Finish the file with ``entry`` in its schema metadata and put it in place.

        ``retry(operation, what)`` runs the step that may meet a blinking
        store (the upload), retrying it as it sees fit.
        """
        meta = {META_KEY: _json(entry).decode()}
        self._flush()
        if self.fmt == "parquet":
            # ParquetWriter stored the Arrow schema (without metadata) when it
            # opened; replacing that key makes read_schema() show ours
            with_meta = self.schema.with_metadata(meta)
            arrow_schema = base64.b64encode(with_meta.serialize().to_pybytes()).decode()
            self._writer.add_key_value_metadata({**meta, "ARROW:schema": arrow_schema})
            self._writer.close()
            ready = self.tmp
        else:
            self._writer.close()
            self._sink.close()
            ready = self.tmp[: -len(".tmp")] + ".meta.tmp"
            self._restream(ready, meta)
            os.remove(self.tmp)
        if self.local:
            self.size = os.path.getsize(ready)
            with open(ready, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(ready, self.final)
        else:
            # create-only (If-None-Match on S3): a shard object is never overwritten, so a
            # writer that lost its lease can never clobber one its successor committed
            self.size = os.path.getsize(ready)
            retry(lambda: self.fs.put_file(ready, self.final, mode="create"), f"uploading {self.rel}")
            os.remove(ready)

    def _restream(self, target: str, meta: dict[str, str]) -> None:
        codec = self.compression if self.compression in IPC_CODECS else None
        options = pa.ipc.IpcWriteOptions(compression=codec)
        # plain reads, one batch at a time: a memory map of a 400 MB temp file
        # would count towards the dyno's memory
        with pa.OSFile(self.tmp, "rb") as source, pa.OSFile(target, "wb") as sink:
            reader = pa.ipc.open_file(source)
            with pa.ipc.new_file(sink, self.schema.with_metadata(meta), options=options) as writer:
                for i in range(reader.num_record_batches):
                    writer.write_batch(reader.get_batch(i))

    def discard(self) -> None:
        """Drop the file (never published); quiet, for cleanup after a failure."""
        for close in (self._writer.close, getattr(self._sink, "close", None)):
            try:
                if close is not None:
                    close()
            except (OSError, pa.ArrowException):
                pass
        for path in (self.tmp, self.tmp[: -len(".tmp")] + ".meta.tmp"):
            try:
                os.remove(path)
            except OSError:  # gone already, or a read-only directory: the next start cleans up
                pass
