"""Read: stream the records of the input files, in blocks, from where each was committed.

Blocking reads and parsing run in worker threads; a block of records (of
one file or of many small ones) makes one hop to the event loop, and small
files are fetched a few at a time ahead of the one being parsed. A file that breaks midway ends in one failure,
and every file ends with a :class:`FileEnd`, so the writer knows when a file
is whole.
"""

from __future__ import annotations

import threading
from functools import partial
from itertools import islice
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping

import anyio
from anyio.abc import ObjectSendStream

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.logs import get_logger
from pipeline.sources.fetch import AHEAD, Ahead, Fetched
from pipeline.sources.fields import FieldCheck
from pipeline.sources.readers import read_records, text_record
from pipeline.sources.records import open_input
from pipeline.types import END_OF_FILE, Failure, FileEnd, InputFile, Record

READ_BLOCK = 512  # records per hop between the reader thread and the event loop
PLAN_AHEAD = 2 * READ_BLOCK  # files handed to the reader thread ahead of what it read (> a block of files)
#: how a file other than a whole JSONL file is read: from where its mark says (one for all, not a dict a file)
_NO_SEEKING: Mapping[str, Any] = MappingProxyType({})

#: what the read stage sends: a block of a file's records, failures and ends
Item = Record | Failure | FileEnd


def file_items(
    cfg: SourceConfig, fs: Any, inp: InputFile, after: int, **seeking: Any
) -> Iterator[Item]:
    """A file's records after location ``after``, then its end; a file that breaks midway ends in one failure.

    ``seeking`` (``seek``, ``on_checkpoint``, ``fields``) goes to :func:`read_records`.
    """
    last = after
    try:
        for item in read_records(cfg, fs, inp, after=after, **seeking):
            last = item.location
            yield item
    except SourceError as exc:
        yield _unreadable(inp, last, exc)
    yield FileEnd(inp.key)


def text_in_hand(inp: InputFile, after: int, fetched: Fetched) -> list[Item]:
    """:func:`file_items` of an uncompressed text file whose bytes are in hand, without its layers of
    generators (their cost shows over many small files)."""
    if after >= 1:
        return [FileEnd(inp.key)]
    try:
        data = fetched.whole()
    except Exception:  # the bytes could not be read: read again as any file is, for its one-line error
        data = None
    if data is not None:
        return [text_record(inp, data), FileEnd(inp.key)]
    try:
        with open_input(fetched, inp) as f:
            item = text_record(inp, f.read())
    except SourceError as exc:
        item = _unreadable(inp, after, exc)
    return [item, FileEnd(inp.key)]


def _unreadable(inp: InputFile, last: int, exc: SourceError) -> Failure:
    """The failure that ends a file which broke after location ``last``."""
    where = f"{inp.key}:{last + 1}"
    return Failure(where, where, 0, None, inp.url, last + 1, "unreadable_file", str(exc), part=inp.part)


class Checkpoints:
    """Where lines start in big uncompressed jsonl files: ``(lines before, byte offset)``.

    The reader reports one every 64 MB; they are facts about a file, not
    progress, so they can be saved with any commit. A resumed read seeks to
    the last one at or before its mark instead of reading the file from the top.
    """

    MAX_PER_FILE = 4096

    def __init__(self, saved: dict[str, list[list[int]]] | None = None) -> None:
        self._lock = threading.Lock()
        self._by_url: dict[str, list[list[int]]] = {url: [list(c) for c in cs] for url, cs in (saved or {}).items()}
        self._dirty = False

    def best(self, url: str, after: int) -> tuple[int, int] | None:
        """The checkpoint to resume ``url`` after line ``after`` from, if any."""
        if url not in self._by_url:  # most files: no lock to take
            return None
        with self._lock:
            found = [c for c in self._by_url.get(url, []) if 0 < c[0] <= after]
        return (found[-1][0], found[-1][1]) if found else None

    def recorder(self, url: str) -> Callable[[int, int], None]:
        """The ``on_checkpoint`` callback of one file's reader (called from its thread)."""

        def record(lines: int, offset: int) -> None:
            with self._lock:
                known = self._by_url.setdefault(url, [])
                if known and known[-1][0] >= lines:
                    return
                known.append([lines, offset])
                if len(known) > self.MAX_PER_FILE:
                    del known[::2]  # keep them spread over the file
                self._dirty = True

        return record

    def changed(self) -> dict[str, list[list[int]]] | None:
        """A copy of every checkpoint if some were added since the last call, else None."""
        with self._lock:
            if not self._dirty:
                return None
            self._dirty = False
            return {url: [list(c) for c in cs] for url, cs in self._by_url.items()}

    def forget(self, url: str) -> None:
        """``url`` changed: its old checkpoints say nothing about it now."""
        with self._lock:
            if self._by_url.pop(url, None) is not None:
                self._dirty = True


class _Counted:
    """A file that tells ``tell(n)`` of every ``n`` bytes read from it (for progress inside a file)."""

    def __init__(self, file: Any, tell: Callable[[int], None]) -> None:
        self._file = file
        self._tell = tell

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._tell(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        n = self._file.readinto(buffer)
        self._tell(n or 0)
        return n

    def read1(self, size: int = -1) -> bytes:
        data = self._file.read1(size) if hasattr(self._file, "read1") else self._file.read(size)
        self._tell(len(data))
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self._file.readline(size)
        self._tell(len(data))
        return data

    def __enter__(self) -> _Counted:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def __getattr__(self, name: str) -> Any:  # seek, tell, close, size, ...
        return getattr(self._file, name)


class _CountingFS:
    """``fs`` whose opened files count the (still compressed) bytes read from the store."""

    def __init__(self, fs: Any, tell: Callable[[int], None]) -> None:
        self._fs = fs
        self._tell = tell

    def open(self, path: str, mode: str = "rb", compression: str | None = None, **kwargs: Any) -> Any:
        """The file, counted below any decompression (so bytes compare with the listed size)."""
        counted = _Counted(self._fs.open(path, mode, **kwargs), self._tell)
        if compression is None:
            return counted
        from fsspec.compression import compr

        return compr[compression](counted, mode="r")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)


class _Reader:
    """The read stage's thread side: the items of the planned files, a block at a time, in their order."""

    def __init__(self, cfg: SourceConfig, fs: Any, on_bytes: Callable[[InputFile, int], None] | None,
                 ahead: int, fields: FieldCheck | None = None) -> None:
        self._cfg = cfg
        self._fields = fields
        self._files: Ahead[tuple[int, dict[str, Any]]] = Ahead(fs, ahead=ahead)
        self._on_bytes = on_bytes
        self._current: Iterator[Item] | None = None

    def __len__(self) -> int:
        return len(self._files)

    def plan(self, inp: InputFile, after: int, seeking: Mapping[str, Any]) -> None:
        """Read ``inp`` after location ``after`` once the files planned before it are read."""
        self._files.plan(inp, (after, seeking))

    def take(self, n: int) -> tuple[list[Item], list[InputFile]]:
        """Up to ``n`` items, from as many planned files as they take, and the files started meanwhile."""
        block: list[Item] = []
        started: list[InputFile] = []
        next_file, on_bytes = self._files.next, self._on_bytes  # (once a file: thousands of small ones)
        while len(block) < n:
            if self._current is None:
                planned = next_file()
                if planned is None:
                    break
                inp, (after, seeking), source = planned
                started.append(inp)
                if inp.format == "text" and not inp.compression and isinstance(source, Fetched):
                    if on_bytes is not None and after < 1:  # read at once, as the file starts
                        on_bytes(inp, inp.size or 0)
                    block += text_in_hand(inp, after, source)
                    continue
                if self._on_bytes is not None:
                    source = _CountingFS(source, partial(self._on_bytes, inp))
                self._current = file_items(self._cfg, source, inp, after, fields=self._fields, **seeking)
            had = len(block)
            block.extend(islice(self._current, n - had))
            if len(block) - had < n - had:  # the file is done
                self._current = None
        return block, started

    def close(self) -> None:
        """Stop fetching ahead."""
        self._files.close()


async def read_stage(
    files: Iterable[InputFile],
    send: ObjectSendStream[list[Item]],
    *,
    cfg: SourceConfig,
    fs: Any,
    done_upto: Callable[[str], int],
    checkpoints: Checkpoints,
    cpu: anyio.CapacityLimiter,
    on_file: Callable[[InputFile], None] = lambda _: None,
    on_bytes: Callable[[InputFile, int], None] | None = None,
    on_block: Callable[[list[Item]], None] = lambda _: None,
    ahead: int = AHEAD,
    fields: FieldCheck | None = None,
) -> None:
    """Send every record of ``files`` after what ``done_upto`` says is committed, a block at a time.

    ``files`` is taken one at a time, as reading goes (a listing's inputs
    are made as they are planned, not all at once).

    A block holds the items of as many files as it takes, in order. The
    small files among the next few are fetched ``ahead`` at a time (see
    :mod:`pipeline.sources.fetch`) while earlier ones are parsed.
    ``on_bytes(inp, n)`` hears of the bytes read inside each file, as they are
    read (from its thread); ``on_file(inp)`` of each file as its reading starts;
    ``on_block(block)`` of each block as it is sent.
    ``fields`` hears of a ``source.id_field`` or ``text_field`` that names nothing in a file.
    """
    log = get_logger()
    reader = _Reader(cfg, fs, on_bytes, ahead, fields)
    todo = iter(files)
    try:
        async with send:
            while True:
                room = PLAN_AHEAD - len(reader)
                while room > 0 and (inp := next(todo, None)) is not None:
                    after = done_upto(inp.key)
                    if after >= END_OF_FILE:
                        continue  # committed whole by an earlier run
                    seeking: Mapping[str, Any] = _NO_SEEKING
                    if inp.format == "jsonl" and not inp.part:  # whole jsonl files: resume by seeking to a checkpoint
                        seeking = {"seek": checkpoints.best(inp.url, after),
                                   "on_checkpoint": checkpoints.recorder(inp.url)}
                    if after:
                        log.info("file_resumed", file=inp.key, after=after,
                                 seek_offset=(seeking.get("seek") or (None, None))[1])
                    reader.plan(inp, after, seeking)
                    room -= 1
                block, started = await anyio.to_thread.run_sync(reader.take, READ_BLOCK, limiter=cpu)
                for inp in started:
                    on_file(inp)
                if not block:
                    break
                on_block(block)
                await send.send(block)
    finally:
        reader.close()
