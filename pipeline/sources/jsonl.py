"""JSON Lines: one JSON object a line, read a block at a time, resumable by line or byte offset.

A whole file is read in blocks of lines (:func:`read_jsonl`), reporting
checkpoints (lines before, byte offset) that let a later run seek instead of
reading from the top. A byte range of a large file shared by several workers
is read line by line (:func:`read_jsonl_range`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import orjson

from pipeline.config import SourceConfig
from pipeline.sources.fields import FieldCheck, RecordSample
from pipeline.sources.records import (
    MAX_METADATA_DEPTH,
    READ_ERRORS,
    check_text,
    default_id,
    doc_id,
    failure,
    json_type,
    open_input,
    too_deep,
    where,
)
from pipeline.types import Failure, InputFile, Record

_BLOCK = 1 << 20  # bytes read at a time from a jsonl stream
CHECKPOINT_BYTES = 64 << 20  # how often a jsonl reader reports (lines read, byte offset)

#: called with (lines before, byte offset) of a line start, to resume there by seeking
OnCheckpoint = Callable[[int, int], None]

_Items = Iterator[Record | Failure]


def _read_block(f: Any, size: int) -> tuple[bytes, BaseException | None]:
    """Up to ``size`` bytes of ``f``, and the error that stopped the read early, if any.

    A decompressing reader is read in the pieces it decodes (``read1``): a
    stream that breaks midway (a truncated ``.gz``) still gives every byte
    decoded before the break, where one big ``read`` would drop them all.
    """
    read = getattr(f, "read1", None) or f.read
    parts: list[bytes] = []
    got = 0
    try:
        while got < size:
            data = read(size - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
    except READ_ERRORS as exc:
        return b"".join(parts), exc
    return b"".join(parts), None


def _blocks(f: Any, start: int = 0) -> Iterator[tuple[list[bytes], int]]:
    """Lines of a binary stream, a block at a time (the last line may lack its newline),
    each block with the byte offset just past its last line (``start`` = where ``f`` is).

    A stream that breaks midway yields its complete lines before the break,
    then raises; the line it broke in is left to the error.
    """
    rest: list[bytes] = []
    consumed = start
    while True:
        data, error = _read_block(f, _BLOCK)
        if not data and error is None:
            break
        consumed += len(data)
        if b"\n" not in data:
            rest.append(data)
        else:
            if rest:
                rest.append(data)
                data = b"".join(rest)
            lines = data.split(b"\n")
            tail = lines.pop()
            rest = [tail] if tail else []
            yield lines, consumed - len(tail)
        if error is not None:
            raise error
    if rest:
        yield [b"".join(rest)], consumed


def read_jsonl(
    cfg: SourceConfig,
    fs: fsspec.AbstractFileSystem,
    inp: InputFile,
    after: int,
    seek: tuple[int, int] | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    fields: FieldCheck | None = None,
) -> _Items:
    """The records of a whole jsonl file after line ``after``, seeking to ``seek`` when given (its first
    records shown to ``fields``)."""
    sample = fields.records(inp) if fields is not None else None
    parse_line = line_parser(cfg, inp, sample)
    n = 0
    seekable = inp.compression is None
    with open_input(fs, inp) as f:
        start = 0
        if seek is not None and seekable and 0 < seek[0] <= after:
            n, start = seek
            f.seek(start)
        next_checkpoint = start + CHECKPOINT_BYTES
        for lines, end in _blocks(f, start):
            if on_checkpoint is not None and seekable and end >= next_checkpoint:
                on_checkpoint(n + len(lines), end)  # the line after this block starts at ``end``
                next_checkpoint = end + CHECKPOINT_BYTES
            if n + len(lines) <= after:  # resuming: skip whole blocks unparsed
                n += len(lines)
                continue
            for line in lines:
                n += 1
                if n <= after:
                    continue
                if n == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]  # UTF-8 byte order mark
                item = parse_line(line, n)
                if item is not None:
                    yield item
    if sample is not None:
        sample.end()


def line_parser(
    cfg: SourceConfig, inp: InputFile, sample: RecordSample | None = None
) -> Callable[[bytes, int], Record | Failure | None]:
    """The function that turns one jsonl line at ``location`` into a record, a failure,
    or None (a blank line); ``sample`` sees each object while it is open."""
    url = inp.url
    part = inp.part
    id_field = cfg.id_field
    text_field = cfg.text_field
    meta_fields = tuple(cfg.metadata_fields)
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError

    def parse(line: bytes, n: int) -> Record | Failure | None:
        try:
            obj = loads(line)
        except decode_error as exc:
            if not line.strip():
                return None  # blank line
            return _bad_json_line(inp, n, line, exc)
        if type(obj) is not dict:
            return failure(inp, n, None, "invalid_json", f"{where(inp, n)}: not a JSON object but {json_type(obj)}")
        if sample is not None and sample.open:
            sample.see(obj)
        ident = obj.get(id_field)
        if type(ident) is not str or not ident:
            ident = doc_id(ident)
        text = obj.get(text_field)
        if type(text) is not str or not text or text.isspace():
            problem = check_text(text, text_field, where(inp, n))
            if problem is not None:
                return failure(inp, n, ident, problem[0], problem[1], text)
        if ident is None:
            ident = default_id(inp, n)
        metadata = {name: obj.get(name) for name in meta_fields} if meta_fields else {}
        for name, value in metadata.items():
            if isinstance(value, (list, dict)) and too_deep(value):
                return failure(inp, n, ident, "invalid_metadata",
                               f"{where(inp, n)}: metadata field {name!r} nests deeper than {MAX_METADATA_DEPTH} levels")
        return Record(ident, text, url, n, metadata, part)

    return parse


def read_jsonl_range(cfg: SourceConfig, fs: fsspec.AbstractFileSystem, inp: InputFile, after: int,
                     fields: FieldCheck | None = None) -> _Items:
    """The lines that start in bytes [start, end) of an uncompressed jsonl file.

    A record's location is its line's byte offset + 1; ``after`` (such a
    location, committed) resumes just past that line. Its first records are shown to ``fields``.
    """
    sample = fields.records(inp) if fields is not None else None
    parse = line_parser(cfg, inp, sample)
    end = inp.end if inp.end is not None else math.inf
    with open_input(fs, inp) as f:
        if after:  # skip the committed line, which starts at after - 1
            f.seek(after - 1)
            pos = after - 1 + len(f.readline())
        elif inp.start > 0:  # the line running into ``start`` belongs to the piece before
            f.seek(inp.start - 1)
            pos = inp.start - 1 + len(f.readline())
        else:
            pos = 0
        while pos < end:
            line = f.readline()
            if not line:
                break
            location = pos + 1
            pos += len(line)
            item = parse(line.rstrip(b"\n"), location)
            if item is not None:
                yield item
    if sample is not None:
        sample.end()


def _bad_json_line(inp: InputFile, n: int, line: bytes, exc: Exception) -> Failure:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return failure(inp, n, None, "invalid_utf8", f"{where(inp, n)}: not valid UTF-8 at byte {uexc.start + 1}")
    msg = getattr(exc, "msg", None) or str(exc)
    col = getattr(exc, "colno", None)
    place = f" at column {col}" if col else ""
    return failure(inp, n, None, "invalid_json", f"{where(inp, n)}: not valid JSON: {msg}{place}")
