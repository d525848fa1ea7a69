"""The small frozen values that cross stage boundaries.

A :class:`Record` is read from a file; it is cut into :class:`Chunk` values;
chunks travel in a :class:`Batch` to the API and come back as an
:class:`EmbeddedBatch`. Anything that cannot be embedded becomes a
:class:`Failure` and ends in ``errors/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class InputFile:
    """One file of the source, as listed."""

    path: str  # as the filesystem knows it (no protocol for local files)
    url: str  # as shown to users and stored in the ``source`` column
    size: int | None
    format: str  # jsonl | text | csv | parquet | arrow
    compression: str | None  # gzip | zstd | bz2 | xz | None
    rel_path: str  # path relative to the source root (the id of a text record)
    mtime: str | None = None  # modification time or ETag, for change detection
    # A piece of a large file shared by several workers: bytes [start, end) of
    # a jsonl file, or row groups [start, end) of a parquet file; part names it.
    start: int = 0
    end: int | None = None
    part: str = ""  # e.g. "#bytes=0-268435456"; "" for the whole file

    @property
    def key(self) -> str:
        """What resume marks are kept under: the url, plus the piece if any."""
        return self.url + self.part


#: the location a file's mark takes once the whole file is done
END_OF_FILE = 2**53


@dataclass(frozen=True, slots=True)
class FileEnd:
    """Sent after a file's last record: the whole file is read."""

    url: str


@dataclass(frozen=True, slots=True)
class Record:
    """One usable document read from the source."""

    doc_id: str
    text: str
    source: str
    location: int  # 1-based line number (jsonl, csv) or row number (parquet, arrow); 0 for text files
    metadata: dict[str, Any] = field(default_factory=dict)
    part: str = ""  # the piece of ``source`` it was read from (InputFile.part)


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a record small enough for the API."""

    id: str  # doc_id for an unsplit record, f"{doc_id}#{chunk_index}" otherwise
    doc_id: str
    chunk_index: int
    text: str
    source: str
    location: int
    content_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)
    part: str = ""


@dataclass(frozen=True, slots=True)
class Failure:
    """A record or chunk that ends in ``errors/``, with why."""

    id: str
    doc_id: str
    chunk_index: int
    text: str | None
    source: str
    location: int
    error_type: str
    message: str
    status: int | None = None
    attempts: int = 0
    part: str = ""

    @classmethod
    def of(
        cls,
        item: Record | Chunk,
        error_type: str,
        message: str,
        *,
        status: int | None = None,
        attempts: int = 0,
    ) -> Failure:
        """The failure of a whole record (id = its doc_id) or of one chunk."""
        if isinstance(item, Chunk):
            return cls(item.id, item.doc_id, item.chunk_index, item.text, item.source, item.location,
                       error_type, message, status, attempts, item.part)
        return cls(item.doc_id, item.doc_id, 0, item.text, item.source, item.location,
                   error_type, message, status, attempts, item.part)


@dataclass(frozen=True, slots=True)
class Stored:
    """A chunk whose vector is already stored (the dataset's own, or ``run.reuse_from``'s): it costs nothing."""

    chunk: Chunk
    vector: np.ndarray


#: one record's outcome after chunking (its chunks, or why it failed), or a file's end. Before batching,
#: a chunk whose vector is stored becomes :class:`Stored`, one whose id is taken a ``duplicate_id`` failure
Piece = tuple[Chunk | Stored | Failure, ...] | Failure | FileEnd


#: (file url, last location of that file whose every row is in this batch or before)
Mark = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Batch:
    """Chunks sent together in one request, numbered in read order.

    ``failures`` are records that failed while being read or cut, in the same
    stretch of the input; they ride along so that everything reaches the sink
    in read order. ``records`` counts the records completed by this batch
    (their last chunk or their failure is in it) and ``marks`` says how far
    each file touched is complete, for resuming. ``found``, when the chunks
    were looked up before batching, says which have a stored vector (in
    ``stored``, in order): those ride along unpaid, and the request carries
    only the others.
    """

    seq: int
    chunks: tuple[Chunk, ...]
    failures: tuple[Failure, ...] = ()
    records: int = 0
    marks: tuple[Mark, ...] = ()
    found: np.ndarray | None = None  # bool per chunk; None: not looked up
    stored: np.ndarray | None = None  # the found chunks' vectors; None when none was found


@dataclass(frozen=True, slots=True)
class Skipped:
    """Batch ``seq`` was never sent (the token budget ran out): nothing from it on is written."""

    seq: int


@dataclass(frozen=True, slots=True)
class Usage:
    """What the API reported, and what it cost us to get it."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.requests + other.requests,
            self.retries + other.retries,
            self.prompt_tokens + other.prompt_tokens,
            self.total_tokens + other.total_tokens,
        )


@dataclass(frozen=True, slots=True)
class EmbeddedBatch:
    """The answer to one batch: a vector per chunk, plus inputs that failed.

    ``vectors[i]`` belongs to ``chunks[i]``. ``vectors`` is a 2-D numpy array
    whose dtype follows the embedding type (float32, int8 or uint8; the binary
    types are bit-packed, ``dimensions / 8`` columns). ``failures`` holds the
    inputs of the original batch that the API rejected on their own, plus the
    batch's read failures; ``seq``, ``records`` and ``marks`` are the batch's.
    """

    seq: int
    chunks: tuple[Chunk, ...]
    vectors: np.ndarray
    usage: Usage
    failures: tuple[Failure, ...] = ()
    records: int = 0
    marks: tuple[Mark, ...] = ()
    reused: int = 0  # how many of ``chunks`` took their vector from run.reuse_from
    #: (source, doc_id) of rows kept under ``run.on_deleted: keep`` whose ids ``chunks`` take over: the sink
    #: removes them in the commit that brings these rows (see :meth:`IdRegistry.yield_sources`)
    displaced: tuple[tuple[str, str], ...] = ()

    @classmethod
    def answering(
        cls,
        batch: Batch,
        chunks: tuple[Chunk, ...],
        vectors: np.ndarray,
        usage: Usage,
        failures: tuple[Failure, ...] | None = None,
        reused: int = 0,
    ) -> EmbeddedBatch:
        """The answer to ``batch``: its ``seq``, ``records`` and ``marks``; its failures unless given."""
        return cls(
            seq=batch.seq,
            chunks=chunks,
            vectors=vectors,
            usage=usage,
            failures=batch.failures if failures is None else failures,
            records=batch.records,
            marks=batch.marks,
            reused=reused,
        )


@dataclass(frozen=True, slots=True)
class Counts:
    """What a stretch of work amounts to: records, rows and what the API cost.

    The one set of counters behind progress lines, each shard's accounting
    and the dataset's totals (``_manifest.json`` ``totals`` use these names).
    """

    records_read: int = 0
    rows_embedded: int = 0
    rows_reused: int = 0
    rows_failed: int = 0
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, batch: EmbeddedBatch) -> Counts:
        """The counts of one answered batch."""
        u = batch.usage
        return cls(batch.records, len(batch.chunks), batch.reused, len(batch.failures),
                   u.requests, u.retries, u.prompt_tokens, u.total_tokens)

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[int, ...]:
        return (self.records_read, self.rows_embedded, self.rows_reused, self.rows_failed,
                self.requests, self.retries, self.prompt_tokens, self.total_tokens)

    def as_dict(self) -> dict[str, int]:
        """The counts by name, as the manifest's ``totals`` holds them."""
        return dict(zip(COUNT_KEYS, self.as_tuple()))


COUNT_KEYS = ("records_read", "rows_embedded", "rows_reused", "rows_failed",
              "requests", "retries", "prompt_tokens", "total_tokens")
