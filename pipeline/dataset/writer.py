"""Writing the dataset: shard files in ``data/`` and ``errors/``, then the manifest.

:class:`DatasetWriter` receives embedded batches in read order and streams
their rows into an open data shard (and their failures into an open errors
shard). A *commit* publishes both files together — local disk: write a hidden
temp file next to the final name, then rename; object stores: one PUT of a
finished local temp file — and only then lists them in the manifest, with the
resume marks of every batch they hold. Whatever was not committed is read and
paid for again by the next run; nothing committed is written twice.

The writer is plain synchronous code (the runner calls it in a worker
thread); calls must not overlap.
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import fsspec
import orjson
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from pipeline.config import SinkConfig
from pipeline.errors import SinkError
from pipeline.dataset.manifest import (
    META_KEY,
    Manifest,
    is_local,
    join,
    load_rank,
    save_rank,
    shard_rank_seq,
    utc_now,
)
from pipeline.types import EmbeddedBatch, Failure
from pipeline.embed.vectors import is_packed, to_arrow

#: rows buffered before they are written out as one Parquet row group / IPC batch
ROW_GROUP_ROWS = 8192

KINDS = ("data", "errors")

#: columns every data shard has, before the metadata fields
BASE_COLUMNS = ("id", "doc_id", "chunk_index", "text", "embedding", "source", "content_hash")

ERRORS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("doc_id", pa.string()),
        ("chunk_index", pa.int32()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("location", pa.int64()),
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("status", pa.int32()),
        ("attempts", pa.int32()),
    ]
)

IPC_CODECS = ("zstd", "lz4")


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


# --------------------------------------------------------------------------- one shard file


class _ShardFile:
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

    def publish(self, entry: dict[str, Any]) -> None:
        """Finish the file with ``entry`` in its schema metadata and put it in place."""
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
            with open(ready, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(ready, self.final)
        else:
            try:
                self.fs.put_file(ready, self.final)
            finally:
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
            except FileNotFoundError:
                pass


# --------------------------------------------------------------------------- accounting


@dataclass
class _Pending:
    """Accounting of the batches written since the last commit."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    total_tokens: int = 0
    records: int = 0
    rows_reused: int = 0
    marks: dict[str, int] = field(default_factory=dict)

    def add(self, batch: EmbeddedBatch) -> None:
        u = batch.usage
        self.requests += u.requests
        self.retries += u.retries
        self.prompt_tokens += u.prompt_tokens
        self.total_tokens += u.total_tokens
        self.records += batch.records
        self.rows_reused += batch.reused
        for url, location in batch.marks:
            if location > self.marks.get(url, -1):
                self.marks[url] = location

    def counts(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "retries": self.retries,
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.total_tokens,
            "records": self.records,
            "rows_reused": self.rows_reused,
            "marks": dict(sorted(self.marks.items())),
        }


# --------------------------------------------------------------------------- metadata columns


def _text(value: Any) -> str | None:
    """A metadata value as text, for columns whose values do not share one type."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (dict, list, tuple)):
        return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return str(value)


def _promote(current: pa.DataType | None, new: pa.DataType) -> pa.DataType:
    """The type a column needs to hold values of both types."""
    if current is None or pa.types.is_null(current):
        return new
    if pa.types.is_null(new) or new == current:
        return current
    numeric = (pa.types.is_integer, pa.types.is_floating)
    if any(f(current) for f in numeric) and any(f(new) for f in numeric):
        return pa.float64()
    return pa.string()


def _metadata_array(values: list[Any], current: pa.DataType | None) -> pa.Array:
    """One metadata column of a batch, in a type that extends ``current``.

    Types come from pyarrow's inference; dicts and lists are stored as JSON
    text; values of mixed or conflicting types turn the column into strings.
    """
    values = [_text(v) if isinstance(v, (dict, list, tuple)) else v for v in values]
    try:
        array = pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        array = pa.array([_text(v) for v in values], pa.string())
    if pa.types.is_struct(array.type) or pa.types.is_list(array.type):
        array = pa.array([_text(v) for v in values], pa.string())
    target = _promote(current, array.type)
    if array.type != target:
        try:
            array = array.cast(target)
        except (pa.ArrowException, TypeError, ValueError):
            array = pa.array([_text(v) for v in values], pa.string())
    return array


def _parse_type(name: str) -> pa.DataType:
    """A type recorded in the manifest; one pyarrow cannot parse back is treated as string."""
    try:
        return pa.type_for_alias(name)
    except (ValueError, KeyError, TypeError):
        return pa.string()


# --------------------------------------------------------------------------- the writer


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
        guard: Callable[[], None] | None = None,
    ) -> None:
        """Open (or create) the dataset at ``cfg.path`` for this rank.

        ``guard`` is called before every manifest save and may raise to stop
        the save (the runner checks there that it still holds the lease).

        Loads the manifest (checking it was made with the same model and
        types), deletes what a crash of this rank left behind (hidden temp
        files, shard files the manifest does not list), and records the run.
        """
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.embedding_type = embedding_type
        self.metadata_fields = list(metadata_fields)
        self._clock = clock
        self._guard = guard
        clash = [f for f in self.metadata_fields if f in BASE_COLUMNS]
        if clash:
            raise SinkError(
                f"source.metadata_fields: {clash[0]!r} is also a dataset column; rename it in the source"
            )
        if fs is None:
            try:
                fs, root = fsspec.core.url_to_fs(cfg.path, **cfg.storage_options)
            except (ImportError, ValueError, OSError) as exc:
                raise SinkError(f"cannot open sink.path {cfg.path}: {exc}") from exc
        else:
            root = fs._strip_protocol(cfg.path)
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self._local = is_local(fs)
        self._ext = ".arrow" if cfg.format == "arrow" else ".parquet"
        self._compression = None if cfg.compression in (None, "none") else cfg.compression

        try:
            manifest = load_rank(fs, self.root, rank, world_size)
            if manifest is None:
                leftovers = self._own_shard_files()
                if leftovers:
                    raise SinkError(
                        f"{cfg.path} holds shard files of rank {rank} ({leftovers[0]}, ...) "
                        "but no manifest; refusing to write into it (use another sink.path)"
                    )
                manifest = Manifest.new(model, input_type, embedding_type)
            else:
                manifest.check_compatible(model, input_type, embedding_type, where=cfg.path)
            self._manifest = manifest
            self._clean_up()
        except OSError as exc:
            raise SinkError(f"cannot open the dataset at {cfg.path}: {exc}") from exc
        self._next_seq = {k: manifest.last_seq(rank, k) + 1 for k in KINDS}
        self._meta_types: dict[str, pa.DataType | None] = {
            c["name"]: _parse_type(c["type"]) for c in manifest.schema if c["name"] in self.metadata_fields
        }
        self._open: dict[str, _ShardFile] = {}
        self._opened_at: float | None = None
        self._pending = _Pending()
        self._replacing: dict[str, Any] | None = None
        self._failed: BaseException | None = None
        self._closed = False
        self._run = manifest.start_run(run_started_at, rank=rank)
        self._save()

    # ------------------------------------------------------------ public

    @property
    def manifest(self) -> Manifest:
        """The manifest as of the last commit (plus the current run)."""
        return self._manifest

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
        data = self._data_table(batch) if batch.chunks else None
        errors = self._errors_table(batch.failures) if batch.failures else None
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

        No I/O, only the clock: the runner asks from the event loop and hops
        to a worker thread for :meth:`commit_if_due` only when it says yes.
        """
        return self._opened_at is not None and self._clock() - self._opened_at >= self.cfg.shard_seconds

    def commit_if_due(self) -> list[dict[str, Any]]:
        """Commit when the open shard has been open for ``shard_seconds`` or more."""
        self._check_usable()
        if self.commit_due():
            return self.commit()
        return []

    def commit(self) -> list[dict[str, Any]]:
        """Publish the open data and errors shards together, then update the manifest once."""
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
        except BaseException as exc:
            # rows of this commit are lost to this process; later marks would
            # then claim them, so the writer refuses any further batch
            self._failed = exc
            self._discard()
            if isinstance(exc, (OSError, pa.ArrowException)):
                raise SinkError(f"cannot commit shards to {self.cfg.path}: {exc}") from exc
            raise
        self._open.clear()
        self._opened_at = None
        if entries:
            self._pending = _Pending()
        else:  # only marks: any counts wait for the next shard
            self._pending.marks.clear()
        self._save()
        if old is not None:  # listed nowhere now; a crash before this line leaves a file _clean_up removes
            self.fs.rm_file(join(self.root, old["path"]))
        return entries

    def close(self, status: str) -> None:
        """Commit what is open, then record the run's end with ``status`` and save the manifest."""
        if self._closed:
            return
        error: SinkError | None = None
        if self._failed is None:
            try:
                self.commit()
            except SinkError as exc:
                error = exc
        self._discard()
        self._closed = True
        self._run["finished_at"] = utc_now()
        self._run["status"] = "failed" if self._failed is not None else status
        self._save()
        if error is not None:
            raise error

    # ------------------------------------------------------------ shards

    def _check_usable(self) -> None:
        if self._closed:
            raise SinkError(f"the dataset writer for {self.cfg.path} is closed")
        if self._failed is not None:
            raise SinkError(f"an earlier commit to {self.cfg.path} failed: {self._failed}")

    def _must_roll(self, kind: str, table: pa.Table | None) -> bool:
        shard = self._open.get(kind)
        if shard is None or table is None:
            return False
        return shard.rows + table.num_rows > self.cfg.shard_rows or table.schema != shard.schema

    def _shard(self, kind: str, schema: pa.Schema) -> _ShardFile:
        shard = self._open.get(kind)
        if shard is None:
            seq = self._next_seq[kind]
            self._next_seq[kind] = seq + 1
            rel = f"{kind}/part-{self.rank:05d}-{seq:06d}{self._ext}"
            dictionary: list[str] | bool = True
            if kind == "data":  # not worth it for unique strings and vectors
                dictionary = ["doc_id", "source", *self.metadata_fields]
            try:
                shard = _ShardFile(
                    self.fs,
                    self.root,
                    rel,
                    schema,
                    fmt=self.cfg.format,
                    compression=self._compression,
                    dictionary=dictionary,
                )
            except (OSError, pa.ArrowException) as exc:
                raise SinkError(f"cannot create {join(self.cfg.path, rel)}: {exc}") from exc
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
            counts = (self._pending if kind == owner else _Pending()).counts()
            entry = {
                "path": shard.rel,
                "kind": kind,
                "rows": shard.rows,
                "started_at": shard.started_at,
                "finished_at": finished_at,
                **counts,
            }
            shard.publish(entry)
            entries.append(entry)
        return entries

    def _discard(self) -> None:
        for shard in self._open.values():
            shard.discard()
        self._open.clear()
        self._opened_at = None

    def _save(self) -> None:
        if self._guard is not None:
            self._guard()
        save_rank(self._manifest, self.fs, self.root, self.rank, self.world_size)

    # ------------------------------------------------------------ crash leftovers

    def _glob(self, pattern: str) -> list[str]:
        return sorted(self.fs.glob(join(self.root, pattern)))

    def _own_shard_files(self) -> list[str]:
        return [p for k in KINDS for p in self._glob(f"{k}/part-{self.rank:05d}-*")]

    def _clean_up(self) -> None:
        """Delete this rank's temp files and the shard files the manifest does not list.

        Those are left by a crash between publishing a shard and saving the
        manifest, or between retiring a shard and deleting its file.
        """
        listed = {join(self.root, s["path"]) for s in self._manifest.shards}
        for kind in KINDS:
            stray = self._glob(f"{kind}/.part-{self.rank:05d}-*.tmp")
            for path in self._glob(f"{kind}/part-{self.rank:05d}-*"):
                if shard_rank_seq(path) is not None and path not in listed:
                    stray.append(path)
            for path in stray:
                self.fs.rm_file(path)

    # ------------------------------------------------------------ tables

    def _data_table(self, batch: EmbeddedBatch) -> pa.Table:
        chunks = batch.chunks
        vectors = batch.vectors
        if vectors.ndim != 2 or vectors.shape[0] != len(chunks):
            raise SinkError(
                f"batch {batch.seq}: {len(chunks)} chunks but vectors of shape {vectors.shape}"
            )
        dims = vectors.shape[1] * (8 if is_packed(self.embedding_type) else 1)
        self._manifest.set_dimensions(dims, where=self.cfg.path)
        columns: dict[str, pa.Array] = {
            "id": pa.array([c.id for c in chunks], pa.string()),
            "doc_id": pa.array([c.doc_id for c in chunks], pa.string()),
            "chunk_index": pa.array([c.chunk_index for c in chunks], pa.int32()),
        }
        if self.cfg.include_text:
            columns["text"] = pa.array([c.text for c in chunks], pa.string())
        columns["embedding"] = to_arrow(vectors, self.embedding_type)
        columns["source"] = pa.array([c.source for c in chunks], pa.string())
        columns["content_hash"] = pa.array([c.content_hash for c in chunks], pa.string())
        for name in self.metadata_fields:
            array = _metadata_array([c.metadata.get(name) for c in chunks], self._meta_types.get(name))
            self._meta_types[name] = array.type
            columns[name] = array
        return pa.Table.from_arrays(list(columns.values()), names=list(columns))

    @staticmethod
    def _errors_table(failures: Sequence[Failure]) -> pa.Table:
        return pa.Table.from_pydict(
            {
                "id": [f.id for f in failures],
                "doc_id": [f.doc_id for f in failures],
                "chunk_index": [f.chunk_index for f in failures],
                "text": [f.text for f in failures],
                "source": [f.source for f in failures],
                "location": [f.location for f in failures],
                "error_type": [f.error_type for f in failures],
                "message": [f.message for f in failures],
                "status": [f.status for f in failures],
                "attempts": [f.attempts for f in failures],
            },
            schema=ERRORS_SCHEMA,
        )
