"""Where records are read: stream one input file as records, in file order.

:func:`read_records` picks the reader of the file's format (``jsonl``,
``text``, ``csv``, ``parquet``, ``arrow``) and turns each unusable record
into a :class:`~pipeline.types.Failure` in its place instead of stopping. It
is synchronous: callers run it in worker threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import fsspec

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.fields import FieldCheck
from pipeline.sources.jsonl import OnCheckpoint, read_jsonl, read_jsonl_range
from pipeline.sources.records import READ_ERRORS, failure, open_input
from pipeline.sources.tabular import read_arrow, read_csv, read_parquet
from pipeline.storage import storage_errors
from pipeline.types import Failure, InputFile, Record

__all__ = ["OnCheckpoint", "read_records", "text_record"]

_Items = Iterator[Record | Failure]


def read_records(
    cfg: SourceConfig,
    fs: fsspec.AbstractFileSystem,
    inp: InputFile,
    *,
    after: int = 0,
    seek: tuple[int, int] | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    fields: FieldCheck | None = None,
) -> _Items:
    """Stream the records of one file, in file order.

    Records whose ``location`` is at most ``after`` are skipped (to resume
    mid-file; a text file's single record, at location 0, is skipped when
    ``after >= 1``). Unusable records come out as :class:`Failure` values in
    their place. Raises :class:`~pipeline.errors.SourceError` when the file
    cannot be opened or turns out to be corrupt while being read.

    For uncompressed jsonl, ``seek=(lines, offset)`` (a checkpoint reported
    earlier through ``on_checkpoint``, with ``lines <= after``) starts
    reading at that byte offset instead of skipping lines from the top, so
    resuming deep in a 20 GB file does not read it all again. ``fields`` hears of a
    ``source.id_field`` or ``text_field`` that names nothing in the file.
    """
    reader = _READERS.get(inp.format)
    if reader is None:
        raise SourceError(f"{inp.url}: unknown source format {inp.format!r}")
    with storage_errors(SourceError, f"cannot read {inp.url}", catch=READ_ERRORS):
        if inp.format == "jsonl" and inp.part:
            yield from read_jsonl_range(cfg, fs, inp, after, fields)
        elif inp.format == "jsonl":
            yield from read_jsonl(cfg, fs, inp, after, seek, on_checkpoint, fields)
        elif inp.format == "text":
            yield from read_text(cfg, fs, inp, after)
        else:
            yield from reader(cfg, fs, inp, after, fields)


def read_text(cfg: SourceConfig, fs: fsspec.AbstractFileSystem, inp: InputFile, after: int) -> _Items:
    """A text file as one record: id = its path relative to the source root, location 0."""
    if after >= 1:
        return
    with open_input(fs, inp) as f:
        data = f.read()
    yield text_record(inp, data)


def text_record(inp: InputFile, data: bytes) -> Record | Failure:
    """The record of text file ``inp`` whose bytes are ``data`` (a failure when they are no usable text)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    doc_id = inp.rel_path
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return failure(inp, 0, doc_id, "invalid_utf8", f"{inp.rel_path}: not valid UTF-8 at byte {exc.start + 1}")
    if not text or text.isspace():
        return failure(inp, 0, doc_id, "empty_text", f"{inp.rel_path}: the file is empty", text)
    return Record(doc_id, text, inp.url, 0, {})


#: each reader takes (cfg, fs, inp, after); the tables' also the FieldCheck
_READERS: dict[str, Callable[..., _Items]] = {
    "jsonl": read_jsonl,
    "text": read_text,
    "csv": read_csv,
    "parquet": read_parquet,
    "arrow": read_arrow,
}
