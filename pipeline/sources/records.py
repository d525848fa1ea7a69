"""What every reader shares: opening an input file, and turning raw values into records or failures.

A value that cannot be used (no text, a number where text belongs, invalid
UTF-8) becomes a :class:`~pipeline.types.Failure` with its file and line or
row, never an exception: only a file that cannot be read at all raises.
"""

from __future__ import annotations

import io
import lzma
import zlib
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import zstandard

from pipeline.errors import SourceError
from pipeline.storage import STORE_ERRORS, storage_errors
from pipeline.types import Failure, InputFile

# What a broken file raises while being read: the store's errors, truncated or
# corrupt compressed streams, and Arrow's own errors (bad parquet, CSV, IPC).
# Bytes that are not UTF-8 fail their own rows; should a decoder meet some
# where no row can take the blame, the file fails instead of the run.
READ_ERRORS: tuple[type[BaseException], ...] = (
    *STORE_ERRORS,
    lzma.LZMAError,
    zlib.error,
    zstandard.ZstdError,
    pa.ArrowException,
    UnicodeDecodeError,
)


def open_input(fs: fsspec.AbstractFileSystem, inp: InputFile) -> Any:
    """``inp`` opened for reading, decompressed; ``SourceError`` naming it when it cannot be opened."""
    with storage_errors(SourceError, f"cannot open {inp.url}", missing=f"input file not found: {inp.url}",
                        catch=READ_ERRORS):
        try:
            if inp.compression == "zstd":
                return io.BufferedReader(_ZstdReader(fs.open(inp.path, "rb")), buffer_size=_ZSTD_CHUNK)
            return fs.open(inp.path, "rb", compression=inp.compression)
        except PermissionError as exc:
            raise SourceError(f"cannot open {inp.url}: permission denied") from exc


_ZSTD_CHUNK = 1 << 17  # compressed bytes fed to the decompressor at a time


class _ZstdReader(io.RawIOBase):
    """Zstandard frames, one after another, decompressed; a stream cut inside a frame raises ``EOFError``.

    The ``zstandard`` package's stream reader (what fsspec uses) ends quietly
    where a truncated file ends, and its records would vanish without an
    error row; gzip, bz2 and xz raise, and so does this.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._context = zstandard.ZstdDecompressor()
        self._frame = self._context.decompressobj()
        self._in_frame = False  # bytes of a frame were fed and its end not seen yet
        self._pending = memoryview(b"")  # decompressed, not read yet

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self._raw.read(_ZSTD_CHUNK)
            if not chunk:
                if self._in_frame:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                return 0
            self._pending = memoryview(self._feed(chunk))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _feed(self, chunk: bytes) -> bytes:
        out = []
        while chunk:
            out.append(self._frame.decompress(chunk))
            self._in_frame = not self._frame.eof
            chunk = b""
            if self._frame.eof:  # the next frame, if any, starts in what is left
                chunk = self._frame.unused_data
                self._frame = self._context.decompressobj()
        return b"".join(out)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def failure(
    inp: InputFile, location: int, doc_id: str | None, error_type: str, message: str, text: Any = None
) -> Failure:
    """The failure of the record at ``location`` (its own id if it has one)."""
    ident = doc_id if doc_id is not None else default_id(inp, location)
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


def default_id(inp: InputFile, location: int) -> str:
    """The id of a record that has none: ``{url}:{line}``, or ``{url}@{byte offset}`` in a
    byte range of a shared file (whose line numbers no worker knows)."""
    if inp.part.startswith("#bytes"):
        return f"{inp.url}@{location - 1}"
    return f"{inp.url}:{location}"


def where(inp: InputFile, location: int) -> str:
    """``line N``, or ``byte N`` in a byte range of a shared file: the start of a failure's message."""
    return f"byte {location - 1}" if inp.part.startswith("#bytes") else f"line {location}"


def doc_id(value: Any) -> str | None:
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


def check_text(value: Any, field: str, place: str) -> tuple[str, str] | None:
    """``(error_type, message)`` when ``value`` is not a usable text, else ``None``."""
    if value is None:
        return "missing_text", f"{place}: no text (field {field!r} is missing or null)"
    if type(value) is not str:
        return "invalid_text", f"{place}: field {field!r} is {json_type(value)}, not a string"
    if not value or value.isspace():
        return "empty_text", f"{place}: field {field!r} is empty"
    return None


def json_type(value: Any) -> str:
    """``a number``, ``an object``...: what a value is, in a user's words."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


#: how deep a metadata value may nest (JSON text in the dataset; orjson writes at most 255 levels)
MAX_METADATA_DEPTH = 64


def too_deep(value: Any, limit: int = MAX_METADATA_DEPTH) -> bool:
    """Whether ``value`` (lists and dicts, as JSON gives them) nests deeper than ``limit`` levels."""
    level = [value]
    for _ in range(limit + 1):
        level = [v for item in level if isinstance(item, (list, dict))
                 for v in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return False
    return True
