"""Where records are read: list the input files, then stream records out of each.

:func:`open_source` resolves ``source.path`` (a file, a directory, a glob or
any fsspec URL) into a sorted list of :class:`~pipeline.types.InputFile`;
:func:`read_records` streams one file as :class:`~pipeline.types.Record`
values, turning each unusable record into a :class:`~pipeline.types.Failure`
instead of stopping. Both are synchronous: the runner calls them in worker
threads.
"""

from __future__ import annotations

import math
from dataclasses import replace

import lzma
import posixpath
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import zstandard

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.types import Failure, InputFile, Record

__all__ = ["FORMATS", "COMPRESSIONS", "detect_format", "open_source", "read_records"]

#: file extension → format, for ``format: auto``
FORMATS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "text",
    ".md": "text",
    ".markdown": "text",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
}

#: compression suffix → fsspec compression name
COMPRESSIONS: dict[str, str] = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".xz": "xz"}

_BLOCK = 1 << 20  # bytes read at a time from a jsonl stream
CHECKPOINT_BYTES = 64 << 20  # how often a jsonl reader reports (lines read, byte offset)

#: called with (lines before, byte offset) of a line start, to resume there by seeking
OnCheckpoint = Callable[[int, int], None]
_BATCH_ROWS = 4096  # rows per Arrow batch for csv, parquet and arrow
_MAGIC = re.compile(r"[*?\[]")

_FS = fsspec.AbstractFileSystem
_Items = Iterator[Record | Failure]

# What a broken file raises while being read: I/O errors, truncated or corrupt
# compressed streams, and Arrow's own errors (bad parquet, bad CSV, bad IPC).
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    lzma.LZMAError,
    zlib.error,
    zstandard.ZstdError,
    pa.ArrowException,
)


# --------------------------------------------------------------------------- listing


def detect_format(name: str, configured: str = "auto") -> tuple[str | None, str | None]:
    """Return ``(format, compression)`` for a file name.

    The compression comes from a ``.gz``/``.zst``/``.bz2``/``.xz`` suffix. The
    format is ``configured`` unless that is ``auto``, in which case it comes
    from the extension left once the compression suffix is stripped (``None``
    when the extension is unknown).
    """
    base = posixpath.basename(name).lower()
    stem, ext = posixpath.splitext(base)
    compression = COMPRESSIONS.get(ext)
    if compression is not None:
        base = stem
    if configured != "auto":
        return configured, compression
    return FORMATS.get(posixpath.splitext(base)[1]), compression


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def _mtime(info: dict[str, Any]) -> str | None:
    for key in ("ETag", "etag", "e_tag", "mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if value is not None and value != "":
            return str(value)
    return None


def _is_hidden(rel_path: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel_path.split("/"))


def open_source(cfg: SourceConfig) -> tuple[fsspec.AbstractFileSystem, list[InputFile]]:
    """List the input files of ``source.path``, sorted by path.

    ``source.path`` may be a file, a directory (every supported file below it),
    a glob (``**`` recurses) or an fsspec URL. Hidden files and directories
    (names starting with ``.`` or ``_``) are skipped, and so are files whose
    extension says nothing under ``format: auto``. Raises
    :class:`~pipeline.errors.SourceError` when the path cannot be listed or
    nothing matches.
    """
    # Listing is the boundary with fsspec and its backends (s3fs, gcsfs, ...),
    # whose errors are not all OSError: anything they raise here is translated.
    try:
        fs, root = fsspec.core.url_to_fs(cfg.path, **cfg.storage_options)
    except Exception as exc:
        raise SourceError(f"source.path {cfg.path}: cannot open the filesystem: {_one_line(exc)}") from exc
    # s3fs keeps a listings cache on its instance, which fsspec shares
    # process-wide: find and glob list afresh, but info and ls may answer from
    # it, so a later listing in this process (to see new or changed objects)
    # calls fs.invalidate_cache(root) first.
    local = _is_local(fs)
    if local:
        root = posixpath.normpath(root)

    try:
        if _MAGIC.search(root):
            base = _glob_base(root)
            listing = fs.glob(root, detail=True)
            entries = [(path, info) for path, info in listing.items() if info.get("type") != "directory"]
            single = False
        else:
            info = fs.info(root)
            if info.get("type") == "directory":
                base = root
                entries = list(fs.find(root, detail=True).items())
                single = False
            else:
                base = posixpath.dirname(root)
                entries = [(info.get("name", root), info)]
                single = True
    except FileNotFoundError as exc:
        raise SourceError(f"source.path not found: {cfg.path}") from exc
    except PermissionError as exc:
        raise SourceError(f"source.path {cfg.path}: permission denied: {_one_line(exc)}") from exc
    except Exception as exc:
        raise SourceError(f"source.path {cfg.path}: cannot list: {_one_line(exc)}") from exc

    files: list[InputFile] = []
    for path, info in entries:
        if local:
            path = posixpath.normpath(path)
        rel = posixpath.basename(path) if single else _relative(path, base)
        if not single and _is_hidden(rel):
            continue
        fmt, compression = detect_format(path, cfg.format)
        if fmt is None:
            if single:
                raise SourceError(
                    f"source.path {cfg.path}: cannot tell the format from the extension; "
                    "set source.format (jsonl, text, csv, parquet or arrow)"
                )
            continue
        size = info.get("size")
        files.append(
            InputFile(
                path=path,
                url=path if local else fs.unstrip_protocol(path),
                size=int(size) if size is not None else None,
                format=fmt,
                compression=compression,
                rel_path=rel,
                mtime=_mtime(info),
            )
        )
    if not files:
        raise SourceError(f"no input files match source.path: {cfg.path}")
    files.sort(key=lambda f: f.path)
    return fs, files


def _glob_base(pattern: str) -> str:
    """The directory part of a glob before its first wildcard."""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if _MAGIC.search(part):
            return "/".join(parts[:i])
    return posixpath.dirname(pattern)


def _relative(path: str, base: str) -> str:
    base = base.rstrip("/")
    if base and path.startswith(base + "/"):
        return path[len(base) + 1 :]
    if not base and path.startswith("/"):
        return path[1:]
    return path.lstrip("/")


# --------------------------------------------------------------------------- reading


def read_records(
    cfg: SourceConfig,
    fs: fsspec.AbstractFileSystem,
    inp: InputFile,
    *,
    after: int = 0,
    seek: tuple[int, int] | None = None,
    on_checkpoint: OnCheckpoint | None = None,
) -> Iterator[Record | Failure]:
    """Stream the records of one file, in file order.

    Records whose ``location`` is at most ``after`` are skipped (to resume
    mid-file; a text file's single record, at location 0, is skipped when
    ``after >= 1``). Unusable records come out as :class:`Failure` values in
    their place. Raises :class:`~pipeline.errors.SourceError` when the file
    cannot be opened or turns out to be corrupt while being read.

    For uncompressed jsonl, ``seek=(lines, offset)`` (a checkpoint reported
    earlier through ``on_checkpoint``, with ``lines <= after``) starts
    reading at that byte offset instead of skipping lines from the top, so
    resuming deep in a 20 GB file does not read it all again.
    """
    reader = _READERS.get(inp.format)
    if reader is None:
        raise SourceError(f"{inp.url}: unknown source format {inp.format!r}")
    try:
        if inp.format == "jsonl" and inp.part:
            yield from _read_jsonl_range(cfg, fs, inp, after)
        elif inp.format == "jsonl":
            yield from _read_jsonl(cfg, fs, inp, after, seek, on_checkpoint)
        else:
            yield from reader(cfg, fs, inp, after)
    except SourceError:
        raise
    except _READ_ERRORS as exc:
        raise SourceError(f"cannot read {inp.url}: {_one_line(exc)}") from exc


def _open(fs: fsspec.AbstractFileSystem, inp: InputFile) -> Any:
    try:
        return fs.open(inp.path, "rb", compression=inp.compression)
    except FileNotFoundError as exc:
        raise SourceError(f"input file not found: {inp.url}") from exc
    except PermissionError as exc:
        raise SourceError(f"cannot open {inp.url}: permission denied") from exc
    except _READ_ERRORS as exc:
        raise SourceError(f"cannot open {inp.url}: {_one_line(exc)}") from exc


def _failure(
    inp: InputFile, location: int, doc_id: str | None, error_type: str, message: str, text: Any = None
) -> Failure:
    ident = doc_id if doc_id is not None else _default_id(inp, location)
    return Failure(
        id=ident,
        doc_id=ident,
        chunk_index=0,
        text=text if isinstance(text, str) else None,
        source=inp.url,
        location=location,
        error_type=error_type,
        message=message,
        part=inp.part,
    )


def _default_id(inp: InputFile, location: int) -> str:
    """The id of a record that has none: ``{url}:{line}``, or ``{url}@{byte offset}`` in a
    byte range of a shared file (whose line numbers no worker knows)."""
    if inp.part.startswith("#bytes"):
        return f"{inp.url}@{location - 1}"
    return f"{inp.url}:{location}"


def _where(inp: InputFile, location: int) -> str:
    return f"byte {location - 1}" if inp.part.startswith("#bytes") else f"line {location}"


def _doc_id(value: Any) -> str | None:
    """A record's id as a string; ``None`` when it has none (missing, null or empty)."""
    if value is None:
        return None
    if type(value) is str:
        return value or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace") or None
    return orjson.dumps(value, default=str).decode()


def _check_text(value: Any, field: str, where: str) -> tuple[str, str] | None:
    """``(error_type, message)`` when ``value`` is not a usable text, else ``None``."""
    if value is None:
        return "missing_text", f"{where}: no text (field {field!r} is missing or null)"
    if type(value) is not str:
        return "invalid_text", f"{where}: field {field!r} is {_json_type(value)}, not a string"
    if not value or value.isspace():
        return "empty_text", f"{where}: field {field!r} is empty"
    return None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _blocks(f: Any, start: int = 0) -> Iterator[tuple[list[bytes], int]]:
    """Lines of a binary stream, a block at a time (the last line may lack its newline),
    each block with the byte offset just past its last line (``start`` = where ``f`` is)."""
    rest: list[bytes] = []
    read = f.read
    consumed = start
    while True:
        data = read(_BLOCK)
        if not data:
            break
        consumed += len(data)
        if b"\n" not in data:
            rest.append(data)
            continue
        if rest:
            rest.append(data)
            data = b"".join(rest)
        lines = data.split(b"\n")
        tail = lines.pop()
        rest = [tail] if tail else []
        yield lines, consumed - len(tail)
    if rest:
        yield [b"".join(rest)], consumed


def _read_jsonl(
    cfg: SourceConfig,
    fs: _FS,
    inp: InputFile,
    after: int,
    seek: tuple[int, int] | None = None,
    on_checkpoint: OnCheckpoint | None = None,
) -> _Items:
    parse_line = _line_parser(cfg, inp)
    n = 0
    seekable = inp.compression is None
    with _open(fs, inp) as f:
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


def _line_parser(cfg: SourceConfig, inp: InputFile) -> Callable[[bytes, int], Record | Failure | None]:
    """The function that turns one jsonl line at ``location`` into a record, a failure,
    or None (a blank line)."""
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
            return _failure(inp, n, None, "invalid_json", f"{_where(inp, n)}: not a JSON object but {_json_type(obj)}")
        doc_id = obj.get(id_field)
        if type(doc_id) is not str or not doc_id:
            doc_id = _doc_id(doc_id)
        text = obj.get(text_field)
        if type(text) is not str or not text or text.isspace():
            problem = _check_text(text, text_field, _where(inp, n))
            if problem is not None:
                return _failure(inp, n, doc_id, problem[0], problem[1], text)
        if doc_id is None:
            doc_id = _default_id(inp, n)
        metadata = {name: obj.get(name) for name in meta_fields} if meta_fields else {}
        return Record(doc_id, text, url, n, metadata, part)

    return parse


def _read_jsonl_range(cfg: SourceConfig, fs: _FS, inp: InputFile, after: int) -> _Items:
    """The lines that start in bytes [start, end) of an uncompressed jsonl file.

    A record's location is its line's byte offset + 1; ``after`` (such a
    location, committed) resumes just past that line.
    """
    parse = _line_parser(cfg, inp)
    end = inp.end if inp.end is not None else math.inf
    with _open(fs, inp) as f:
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


def _bad_json_line(inp: InputFile, n: int, line: bytes, exc: Exception) -> Failure:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return _failure(inp, n, None, "invalid_utf8", f"{_where(inp, n)}: not valid UTF-8 at byte {uexc.start + 1}")
    msg = getattr(exc, "msg", None) or str(exc)
    col = getattr(exc, "colno", None)
    where = f" at column {col}" if col else ""
    return _failure(inp, n, None, "invalid_json", f"{_where(inp, n)}: not valid JSON: {msg}{where}")


def _read_text(cfg: SourceConfig, fs: _FS, inp: InputFile, after: int) -> _Items:
    if after >= 1:
        return
    with _open(fs, inp) as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    doc_id = inp.rel_path
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield _failure(inp, 0, doc_id, "invalid_utf8", f"{inp.rel_path}: not valid UTF-8 at byte {exc.start + 1}")
        return
    if not text or text.isspace():
        yield _failure(inp, 0, doc_id, "empty_text", f"{inp.rel_path}: the file is empty", text)
        return
    yield Record(doc_id, text, inp.url, 0, {})


# Tabular formats (csv, parquet, arrow) share one loop over record batches.


def _columns(cfg: SourceConfig) -> list[str]:
    names = [cfg.id_field, cfg.text_field, *cfg.metadata_fields]
    return list(dict.fromkeys(names))


def _require_text_column(inp: InputFile, cfg: SourceConfig, names: Iterable[str]) -> None:
    if cfg.text_field not in set(names):
        raise SourceError(f"{inp.url}: no column {cfg.text_field!r} (source.text_field)")


def _rows(
    cfg: SourceConfig,
    inp: InputFile,
    batches: Iterable[pa.RecordBatch],
    after: int,
    first_row: int = 0,
) -> Iterator[Record | Failure]:
    url = inp.url
    meta_fields = tuple(cfg.metadata_fields)
    row = first_row  # rows before this piece of the file
    for batch in batches:
        size = batch.num_rows
        if row + size <= after:
            row += size
            continue
        names = set(batch.schema.names)

        def column(name: str) -> list[Any]:
            return batch.column(name).to_pylist() if name in names else [None] * size

        ids = column(cfg.id_field)
        texts = column(cfg.text_field)
        metas = [column(name) for name in meta_fields]
        for i in range(size):
            row += 1
            if row <= after:
                continue
            doc_id = _doc_id(ids[i])
            text = texts[i]
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError as exc:
                    message = f"row {row}: not valid UTF-8 at byte {exc.start + 1}"
                    yield _failure(inp, row, doc_id, "invalid_utf8", message)
                    continue
            problem = _check_text(text, cfg.text_field, f"row {row}")
            if problem is not None:
                yield _failure(inp, row, doc_id, problem[0], problem[1], text)
                continue
            metadata = {name: values[i] for name, values in zip(meta_fields, metas)}
            yield Record(doc_id if doc_id is not None else f"{url}:{row}", text, url, row, metadata, inp.part)


def _read_csv(cfg: SourceConfig, fs: _FS, inp: InputFile, after: int) -> _Items:
    _require_text_column(inp, cfg, _csv_header(fs, inp))
    wanted = _columns(cfg)
    with _open(fs, inp) as f:
        reader = pa_csv.open_csv(
            f,
            read_options=pa_csv.ReadOptions(block_size=_BLOCK),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                include_columns=wanted,
                include_missing_columns=True,
                column_types={name: pa.string() for name in wanted},
                # Only an unquoted empty cell is null (a missing value); "" is an
                # empty string, and words like NA or null stay text.
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        yield from _rows(cfg, inp, reader, after)


def _csv_header(fs: fsspec.AbstractFileSystem, inp: InputFile) -> list[str]:
    """The CSV's own column names (the main reader fills missing ones with nulls)."""
    with _open(fs, inp) as f:
        reader = pa_csv.open_csv(
            f,
            read_options=pa_csv.ReadOptions(block_size=1 << 16),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        )
        return reader.schema.names


def _read_parquet(cfg: SourceConfig, fs: _FS, inp: InputFile, after: int) -> _Items:
    with _open(fs, inp) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        _require_text_column(inp, cfg, names)
        columns = [name for name in _columns(cfg) if name in names]
        groups = range(pf.num_row_groups)
        if inp.part:  # a piece of a shared file: row groups [start, end)
            groups = range(inp.start, inp.end if inp.end is not None else pf.num_row_groups)
        first_row = sum(pf.metadata.row_group(i).num_rows for i in range(groups.start))
        batches = pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns, row_groups=list(groups))
        yield from _rows(cfg, inp, batches, after, first_row)


def split_for_workers(
    fs: fsspec.AbstractFileSystem, files: list[InputFile], split_bytes: int
) -> list[InputFile]:
    """Cut files larger than ``split_bytes`` into pieces several workers can share.

    Uncompressed jsonl is cut into byte ranges (a line belongs to the range
    its first byte is in); parquet into runs of row groups of about
    ``split_bytes``. Other files, and compressed ones, stay whole.
    """
    out: list[InputFile] = []
    for inp in files:
        size = inp.size or 0
        if size <= split_bytes or inp.compression is not None:
            out.append(inp)
        elif inp.format == "jsonl":
            for start in range(0, size, split_bytes):
                end = min(start + split_bytes, size)
                out.append(replace(inp, start=start, end=end, part=f"#bytes={start}-{end}"))
        elif inp.format == "parquet":
            out.extend(_row_group_pieces(fs, inp, split_bytes))
        else:
            out.append(inp)
    return out


def _row_group_pieces(fs: fsspec.AbstractFileSystem, inp: InputFile, split_bytes: int) -> list[InputFile]:
    try:
        with _open(fs, inp) as f:
            meta = pq.ParquetFile(f).metadata
    except _READ_ERRORS as exc:
        raise SourceError(f"cannot read {inp.url}: {_one_line(exc)}") from exc
    pieces, start, acc = [], 0, 0
    for i in range(meta.num_row_groups):
        acc += meta.row_group(i).total_byte_size
        if acc >= split_bytes or i == meta.num_row_groups - 1:
            pieces.append(replace(inp, start=start, end=i + 1, part=f"#row_groups={start}-{i + 1}"))
            start, acc = i + 1, 0
    return pieces if len(pieces) > 1 else [inp]


def _read_arrow(cfg: SourceConfig, fs: _FS, inp: InputFile, after: int) -> _Items:
    with _open(fs, inp) as f:
        try:
            reader = pa_ipc.open_file(f)
        except (pa.ArrowInvalid, OSError, ValueError):
            reader = None
        if reader is not None:
            _require_text_column(inp, cfg, reader.schema.names)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            yield from _rows(cfg, inp, batches, after)
            return
    # Not the random-access file format: read it again as an IPC stream.
    with _open(fs, inp) as f:
        stream = pa_ipc.open_stream(f)
        _require_text_column(inp, cfg, stream.schema.names)
        yield from _rows(cfg, inp, stream, after)


_READERS: dict[str, Callable[[SourceConfig, _FS, InputFile, int], _Items]] = {
    "jsonl": _read_jsonl,
    "text": _read_text,
    "csv": _read_csv,
    "parquet": _read_parquet,
    "arrow": _read_arrow,
}
