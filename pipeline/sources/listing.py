"""Which files are the input: list ``source.path``, tell each file's format, share big files out.

:func:`open_source` resolves ``source.path`` (a file, a directory, a glob or
any fsspec URL) into the sorted :class:`~pipeline.sources.listed.Inputs`
(a sequence of :class:`~pipeline.types.InputFile`, kept column by column);
:func:`split_for_workers` cuts large files into pieces several workers can
share and :func:`assign` picks the files and pieces of one worker. All are
synchronous: callers run them in worker threads.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from array import array
from dataclasses import replace
from typing import Any, Callable, Sequence

import fsspec
import fsspec.asyn
import numpy as np
import pyarrow.parquet as pq

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.listed import Inputs, Listing, piece_part
from pipeline.sources.local_walk import is_hidden_name, runs_below
from pipeline.sources.records import READ_ERRORS, open_input
from pipeline.storage import Location, storage_errors
from pipeline.types import InputFile

__all__ = [
    "COMPRESSIONS",
    "FORMATS",
    "assign",
    "detect_format",
    "list_files",
    "open_source",
    "split_for_workers",
]

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

_MAGIC = re.compile(r"[*?\[]")


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


def open_source(
    cfg: SourceConfig, skipped: dict[str, int] | None = None
) -> tuple[fsspec.AbstractFileSystem, Inputs]:
    """List the input files of ``source.path``, sorted by path; returns the filesystem too.

    See :func:`list_files`. Raises :class:`~pipeline.errors.SourceError` when
    the filesystem cannot be made, the path cannot be listed or nothing matches.
    """
    location = Location.open(cfg.path, source_options(cfg.path, cfg.storage_options), role="source.path")
    return location.fs, list_files(location, cfg, skipped)


#: connections to S3 a source may hold: botocore's default (10) would cap the small objects fetched ahead
S3_CONNECTIONS = 64


def source_options(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """``source.storage_options``, with room for the objects fetched at once on S3 unless set.

    Small objects are fetched many at a time (:mod:`pipeline.sources.fetch`);
    on S3 each needs a connection of its own, and botocore keeps 10.
    """
    if not path.startswith(("s3://", "s3a://")):
        return options
    config = dict(options.get("config_kwargs") or {})
    if "max_pool_connections" in config:
        return options
    config["max_pool_connections"] = S3_CONNECTIONS
    return {**options, "config_kwargs": config}


def list_files(location: Location, cfg: SourceConfig, skipped: dict[str, int] | None = None) -> Inputs:
    """The input files at ``location`` (``source.path``), sorted by path, listed afresh.

    They are kept column by column as they come (:class:`Listing`): a
    million objects take about 100 MB, not the 500 of as many InputFile values.

    ``source.path`` may be a file, a directory (every supported file below it),
    a glob (``**`` recurses) or an fsspec URL. Hidden files and directories
    (names starting with ``.`` or ``_``) are skipped, and so are files whose
    extension says nothing under ``format: auto``. Cached listings of the
    filesystem are dropped first, so that watch mode sees new and changed
    objects. Files left out for their extension are counted in ``skipped``
    (by extension), when given. Raises :class:`~pipeline.errors.SourceError`
    when the path cannot be listed or nothing matches.
    """
    fs, root = location.fs, location.root
    single = False
    pattern = _MAGIC.search(root) is not None
    with location.errors("cannot list", missing=f"source.path not found: {location.url}", catch=(Exception,)):
        # Listing is the boundary with fsspec's backends (s3fs, gcsfs, ...), whose
        # errors are not all OSError: anything they raise here is translated.
        location.invalidate(_glob_base(root) if pattern else root)
        # a path that exists as written is used as written, wildcards or not (``docs [2024]``)
        info = _info_if_exists(fs, root) if pattern else fs.info(root)
        entries: list[tuple[str, dict[str, Any]]] | None = None  # None: every file below root
        if info is None:
            base = _glob_base(root)
            listing = fs.glob(root, detail=True)
            entries = [(path, meta) for path, meta in listing.items() if meta.get("type") != "directory"]
        elif info.get("type") == "directory":
            base = root
        else:
            base, single = posixpath.dirname(root), True
            entries = [(info.get("name", root), info)]
        files = Listing()

        def add_file(path: str, size: int | None, mtime: str | None) -> None:
            if (inp := _input_file(location, cfg, path, size, mtime, base, single, skipped)) is not None:
                files.append(inp)

        def add(path: str, meta: dict[str, Any]) -> None:
            add_file(path, meta.get("size"), _mtime(meta))

        cut = len(root.rstrip("/")) + 1  # a walked path's relative path starts there
        # a walked name does not start with a dot (hidden): its format and compression depend only on what
        # follows its first dot, and a folder's files mostly share that (no splitting of every name)
        formats: dict[str, tuple[str | None, str | None]] = {}

        def add_run(folder: str, names: list[str], sizes: list[int], mtimes: list[str]) -> None:
            """Files of the local walk, of one folder: their paths normalised, below root, not hidden (what
            _input_file checks); kept in bulk, those of no known format left out."""
            found = []
            for name in names:
                dot = name.find(".")
                ending = name[dot:] if dot > 0 else ""
                known = formats.get(ending)
                if known is None:
                    known = formats[ending] = detect_format(folder + name, cfg.format)
                found.append(known)
            keep = [i for i, (fmt, _) in enumerate(found) if fmt is not None]
            if len(keep) < len(names):
                for name, (fmt, _) in zip(names, found):
                    if fmt is None:
                        _count_skipped(folder + name, skipped)
                names, sizes, mtimes, found = ([values[i] for i in keep] for values in (names, sizes, mtimes, found))
            below = folder[cut:]  # (the folder's path below root; root is the rest)
            files.add_run(folder[:cut], [below + name for name in names] if below else names,
                          sizes, mtimes, [fmt for fmt, _ in found], [compression for _, compression in found])

        if entries is None and location.local:  # as fsspec's find would list it, without its cost a file
            runs_below(root, add_run)
        elif entries is None:
            _each_below(fs, root, add)
        for path, meta in entries or ():
            add(path, meta)
    if not len(files):
        raise SourceError(f"no input files match source.path: {location.shown}")
    return Inputs(files, files.sorted_rows())


def _input_file(
    location: Location, cfg: SourceConfig, path: str, size: int | None, mtime: str | None, base: str,
    single: bool, skipped: dict[str, int] | None = None,
) -> InputFile | None:
    """The input file at ``path`` (listed with ``size`` and ``mtime``), or None when it is hidden or of no
    known format."""
    if location.local:
        path = posixpath.normpath(path)
    rel = posixpath.basename(path) if single else _relative(path, base)
    if not single and _is_hidden(rel):
        return None
    fmt, compression = detect_format(path, cfg.format)
    if fmt is None:
        if single:
            raise SourceError(
                f"source.path {location.shown}: cannot tell the format from the extension; "
                "set source.format (jsonl, text, csv, parquet or arrow)"
            )
        _count_skipped(path, skipped)
        return None
    return InputFile(
        path=path,
        url=location.url_of(path),
        size=int(size) if size is not None else None,
        format=fmt,
        compression=compression,
        rel_path=rel,
        mtime=mtime,
    )


def _count_skipped(path: str, skipped: dict[str, int] | None) -> None:
    """Count the file at ``path``, left out for its extension, in ``skipped`` (by extension), when given."""
    if skipped is not None:
        ext = posixpath.splitext(posixpath.basename(path))[1].lower() or "(no extension)"
        skipped[ext] = skipped.get(ext, 0) + 1


def _each_below(fs: fsspec.AbstractFileSystem, root: str, each: Callable[[str, dict[str, Any]], None]) -> None:
    """``each(path, info)`` for every file below directory ``root``.

    On S3 the listing is streamed a page (1,000 keys) at a time, each entry
    handed over as it comes: s3fs's ``find`` would first gather every key's
    info dict (and cache the tree besides), twice the memory of the input
    files made from them. Elsewhere ``find`` lists the whole tree.
    """
    if not _pages(fs):
        for path, info in fs.find(root, detail=True).items():
            each(path, info)
        return
    bucket, key, _ = fs.split_path(root)
    prefix = key.rstrip("/") + "/" if key else ""

    async def walk() -> None:
        async for info in fs._iterdir(bucket, prefix=prefix, delimiter=""):
            if info.get("type") != "directory" and not info["name"].endswith("/"):  # not a folder marker
                each(info["name"], info)

    fsspec.asyn.sync(fs.loop, walk)


def _pages(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` lists a page at a time (s3fs's ``_iterdir``; not a version-aware store)."""
    return (hasattr(fs, "_iterdir") and hasattr(fs, "split_path") and "s3" in _protocols(fs)
            and not getattr(fs, "version_aware", False))


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _info_if_exists(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None


def _mtime(info: dict[str, Any]) -> str | None:
    for key in ("ETag", "etag", "e_tag", "mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if value is not None and value != "":
            return str(value)
    return None


def _is_hidden(rel_path: str) -> bool:
    return any(map(is_hidden_name, rel_path.split("/")))


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


# --------------------------------------------------------------------------- sharing out


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
                out.append(replace(inp, start=start, end=end, part=piece_part("jsonl", start, end)))
        elif inp.format == "parquet":
            out.extend(_row_group_pieces(fs, inp, split_bytes))
        else:
            out.append(inp)
    return out


def _row_group_pieces(fs: fsspec.AbstractFileSystem, inp: InputFile, split_bytes: int) -> list[InputFile]:
    with open_input(fs, inp) as f, storage_errors(SourceError, f"cannot read {inp.url}", catch=READ_ERRORS):
        meta = pq.ParquetFile(f).metadata
    pieces, start, acc = [], 0, 0
    for i in range(meta.num_row_groups):
        acc += meta.row_group(i).total_byte_size
        if acc >= split_bytes or i == meta.num_row_groups - 1:
            pieces.append(replace(inp, start=start, end=i + 1, part=piece_part("parquet", start, i + 1)))
            start, acc = i + 1, 0
    return pieces if len(pieces) > 1 else [inp]


def assign(
    fs: fsspec.AbstractFileSystem, files: Sequence[InputFile], rank: int, world_size: int, split_bytes: int
) -> Inputs:
    """The files (or pieces of large files) worker ``rank`` of ``world_size`` owns, in listing order.

    With several workers, files over ``split_bytes`` are first cut into
    pieces; each file or piece goes to the worker its key hashes to, a choice
    that is stable across reruns and listing order.
    """
    inputs = files if isinstance(files, Inputs) else Inputs.of(files)
    if world_size == 1:
        return inputs
    positions, starts, ends = array("q"), array("q"), array("q")
    for i, inp in enumerate(inputs):
        big = (inp.size or 0) > split_bytes and inp.compression is None and not inp.part
        for piece in split_for_workers(fs, [inp], split_bytes) if big else (inp,):
            if _owner(piece.key, world_size) == rank:
                positions.append(i)
                starts.append(piece.start)
                ends.append(-1 if not piece.part or piece.end is None else piece.end)
    mine = inputs.take(np.frombuffer(positions, np.int64) if positions else np.zeros(0, np.int64))
    return mine.pieces(np.array(starts, np.int64), np.array(ends, np.int64))


def _owner(key: str, world_size: int) -> int:
    """The worker an input of ``key`` goes to."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % world_size

