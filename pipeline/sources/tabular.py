"""Tables: CSV, Parquet and Arrow IPC files, one record per row, read a batch of rows at a time.

Each format turns its file into Arrow record batches; one loop
(:func:`_rows`) turns the batches into records, row numbers counted from 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.fields import FieldCheck, no_column
from pipeline.sources.records import check_text, doc_id, failure, open_input
from pipeline.types import Failure, InputFile, Record

_BATCH_ROWS = 4096  # rows per Arrow batch for parquet
_CSV_BLOCK = 1 << 20  # bytes per CSV block

_Items = Iterator[Record | Failure]


def _columns(cfg: SourceConfig) -> list[str]:
    names = [cfg.id_field, cfg.text_field, *cfg.metadata_fields]
    return list(dict.fromkeys(names))


def _check_columns(inp: InputFile, cfg: SourceConfig, names: Iterable[str], fields: FieldCheck | None) -> None:
    """Tell ``fields`` of the named columns the table lacks; ``SourceError`` when the text column is one."""
    names = list(names)
    if fields is not None:
        fields.columns(inp, names)
    if (missing := no_column(cfg, inp, names)) is not None:
        raise SourceError(missing.line())


class _NotUtf8:
    """A value whose bytes are not valid UTF-8 (a string column written by another tool, a CSV cell)."""

    __slots__ = ("start",)

    def __init__(self, start: int) -> None:
        self.start = start  # the first bad byte


def _values(array: pa.Array, binary_as_text: bool) -> tuple[list[Any], bool]:
    """A column as Python values, and whether any of them is :class:`_NotUtf8`.

    Arrow does not check that a Parquet or IPC string column holds UTF-8,
    and CSV columns are read as bytes (one bad cell would fail the whole
    block as text): the column is decoded in one go when it is valid, value
    by value when it is not, so that only the rows holding bad bytes fail.
    """
    if binary_as_text and (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        try:
            return array.cast(pa.large_string()).to_pylist(), False
        except pa.ArrowInvalid:
            return [_decoded(value) for value in array.to_pylist()], True
    try:
        return array.to_pylist(), False
    except UnicodeDecodeError:
        values: list[Any] = []
        for i in range(len(array)):
            try:
                values.append(array[i].as_py())
            except UnicodeDecodeError as exc:
                values.append(_NotUtf8(exc.start))
        return values, True


def _decoded(value: bytes | None) -> str | _NotUtf8 | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _NotUtf8(exc.start)


def _rows(
    cfg: SourceConfig,
    inp: InputFile,
    batches: Iterable[pa.RecordBatch],
    after: int,
    first_row: int = 0,
    *,
    binary_as_text: bool = False,
) -> _Items:
    url = inp.url
    fields = (cfg.id_field, cfg.text_field, *cfg.metadata_fields)
    meta_fields = tuple(cfg.metadata_fields)
    row = first_row  # rows before this piece of the file
    for batch in batches:
        size = batch.num_rows
        if row + size <= after:
            row += size
            continue
        names = set(batch.schema.names)
        decoded = [_values(batch.column(f), binary_as_text) if f in names else ([None] * size, False) for f in fields]
        ids, texts, *metas = [values for values, _ in decoded]
        suspect = any(bad for _, bad in decoded)
        for i in range(size):
            row += 1
            if row <= after:
                continue
            if suspect and (bad := _not_utf8(inp, row, fields, [values[i] for values, _ in decoded])) is not None:
                yield bad
                continue
            ident = doc_id(ids[i])
            text = texts[i]
            if isinstance(text, bytes):
                text = _decoded(text)
                if isinstance(text, _NotUtf8):
                    message = f"row {row}: not valid UTF-8 at byte {text.start + 1}"
                    yield failure(inp, row, ident, "invalid_utf8", message)
                    continue
            problem = check_text(text, cfg.text_field, f"row {row}")
            if problem is not None:
                yield failure(inp, row, ident, problem[0], problem[1], text)
                continue
            metadata = {name: values[i] for name, values in zip(meta_fields, metas)}
            yield Record(ident if ident is not None else f"{url}:{row}", text, url, row, metadata, inp.part)


def _not_utf8(inp: InputFile, row: int, fields: tuple[str, ...], values: list[Any]) -> Failure | None:
    """The failure of a row holding bytes that are not UTF-8, or None when it holds none."""
    ident = None if isinstance(values[0], _NotUtf8) else doc_id(values[0])
    for index, (name, value) in enumerate(zip(fields, values)):
        if isinstance(value, _NotUtf8):
            field = "" if index == 1 else f"field {name!r} is "  # the text keeps its usual message
            message = f"row {row}: {field}not valid UTF-8 at byte {value.start + 1}"
            return failure(inp, row, ident, "invalid_utf8", message)
    return None


def read_csv(cfg: SourceConfig, fs: fsspec.AbstractFileSystem, inp: InputFile, after: int,
             fields: FieldCheck | None = None) -> _Items:
    """The rows of a CSV file (header first), every named column read as text."""
    _check_columns(inp, cfg, _csv_header(fs, inp), fields)
    wanted = _columns(cfg)
    with open_input(fs, inp) as f:
        reader = pa_csv.open_csv(
            f,
            read_options=pa_csv.ReadOptions(block_size=_CSV_BLOCK),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                include_columns=wanted,
                include_missing_columns=True,
                # bytes, decoded row by row in _rows: one bad cell fails its row, not its block
                column_types={name: pa.binary() for name in wanted},
                # Only an unquoted empty cell is null (a missing value); "" is an
                # empty string, and words like NA or null stay text.
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        yield from _rows(cfg, inp, reader, after, binary_as_text=True)


def _csv_header(fs: fsspec.AbstractFileSystem, inp: InputFile) -> list[str]:
    """The CSV's own column names (the main reader fills missing ones with nulls)."""
    with open_input(fs, inp) as f:
        reader = pa_csv.open_csv(
            f,
            read_options=pa_csv.ReadOptions(block_size=1 << 16),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        )
        return reader.schema.names


def read_parquet(cfg: SourceConfig, fs: fsspec.AbstractFileSystem, inp: InputFile, after: int,
                 fields: FieldCheck | None = None) -> _Items:
    """The rows of a Parquet file, or of the row groups [start, end) of a piece of one."""
    with open_input(fs, inp) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        _check_columns(inp, cfg, names, fields)
        columns = [name for name in _columns(cfg) if name in names]
        groups = range(pf.num_row_groups)
        if inp.part:  # a piece of a shared file: row groups [start, end)
            groups = range(inp.start, inp.end if inp.end is not None else pf.num_row_groups)
        first_row = sum(pf.metadata.row_group(i).num_rows for i in range(groups.start))
        batches = pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns, row_groups=list(groups))
        yield from _rows(cfg, inp, batches, after, first_row)


def read_arrow(cfg: SourceConfig, fs: fsspec.AbstractFileSystem, inp: InputFile, after: int,
               fields: FieldCheck | None = None) -> _Items:
    """The rows of an Arrow IPC file, in the random-access file format or as a stream."""
    with open_input(fs, inp) as f:
        try:
            reader = pa_ipc.open_file(f)
        except (pa.ArrowInvalid, OSError, ValueError):
            reader = None
        if reader is not None:
            _check_columns(inp, cfg, reader.schema.names, fields)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            yield from _rows(cfg, inp, batches, after)
            return
    # Not the random-access file format: read it again as an IPC stream.
    with open_input(fs, inp) as f:
        stream = pa_ipc.open_stream(f)
        _check_columns(inp, cfg, stream.schema.names, fields)
        yield from _rows(cfg, inp, stream, after)
