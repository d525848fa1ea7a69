"""Small objects fetched ahead: the bytes of the next few small files, read at once, handed out in order.

Reading many small objects one after another costs a round trip each (about
30 ms on S3): :class:`Ahead` keeps up to ``ahead`` whole small files (at most
``ahead_bytes`` of them together) being fetched in worker threads while the
reader parses the one in hand. Files still come out in the order they were
planned, so resume marks stay what they were. Big files, pieces of files and
files of unknown size are not fetched: their readers stream them as before.
Everything here runs in the reader's thread, except the fetches themselves.
Local small files are not fetched ahead (the disk answers at once; threads
would only contend for the GIL) but read whole with a plain ``open``. On S3
the fetches go through obstore when it can do them as s3fs would
(:mod:`pipeline.sources.s3_get`): a fraction of s3fs's CPU per GET.
"""

from __future__ import annotations

import io
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Generic, TypeVar

from fsspec.implementations.local import LocalFileSystem

from pipeline.sources.s3_get import s3_getter
from pipeline.types import InputFile

__all__ = ["AHEAD", "AHEAD_BYTES", "SMALL_BYTES", "Ahead", "Fetched"]

SMALL_BYTES = 8 << 20  # whole files up to this size are fetched in one request
AHEAD = 32  # small files being fetched at once
AHEAD_BYTES = 64 << 20  # and their bytes together (fetched, not yet parsed)

T = TypeVar("T")


class Fetched:
    """``fs`` for one small file read whole: ``open`` gives its bytes (or raises what reading them raised)."""

    __slots__ = ("_fs", "_get")

    def __init__(self, fs: Any, get: Callable[[], bytes]) -> None:
        self._fs = fs
        self._get = get

    def open(self, path: str, mode: str = "rb", compression: str | None = None, **kwargs: Any) -> Any:
        """The file's bytes as a file, decompressed when ``compression`` says."""
        data = io.BytesIO(self._get())
        if compression is None:
            return data
        from fsspec.compression import compr

        return compr[compression](data, mode="rb")

    def whole(self) -> bytes:
        """The file's bytes as they are (what ``open`` without a compression reads), or what reading them raised."""
        return self._get()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)


@dataclass
class _Planned(Generic[T]):
    inp: InputFile
    extra: T
    future: Future[bytes] | None = None


class Ahead(Generic[T]):
    """Files planned for reading, in order; the small ones among the next few fetched while earlier ones are read.

    ``plan(inp, extra)`` adds a file (``extra`` travels with it); ``next()``
    hands out the first planned file with the ``fs`` to read it from (a
    :class:`Fetched` when its bytes were fetched ahead). ``ahead=0`` fetches
    nothing. Call ``close`` when done: fetches not started are dropped.
    """

    def __init__(self, fs: Any, *, ahead: int = AHEAD, ahead_bytes: int = AHEAD_BYTES,
                 small_bytes: int = SMALL_BYTES) -> None:
        self._fs = fs
        self._ahead = ahead
        self._ahead_bytes = ahead_bytes
        self._small = small_bytes
        self._waiting: deque[_Planned[T]] = deque()  # planned, not looked at yet
        self._ready: deque[_Planned[T]] = deque()  # looked at: fetching (small) or to stream (others)
        self._local_ready: deque[tuple[InputFile, T]] = deque()  # planned on local disk: nothing to look at
        self._fetching = 0
        self._bytes = 0
        self._pool: ThreadPoolExecutor | None = None
        self._get: Callable[[str], bytes] | None = None  # a whole object's bytes, made at the first fetch
        # local disk answers at once: fetching ahead in threads would only fight the parser for the GIL
        self._local = isinstance(fs, LocalFileSystem)

    def __len__(self) -> int:
        return len(self._waiting) + len(self._ready) + len(self._local_ready)

    def plan(self, inp: InputFile, extra: T) -> None:
        """Add ``inp`` after the files planned so far (on local disk, where nothing is fetched, ready at once)."""
        if self._local:
            self._local_ready.append((inp, extra))
        else:
            self._waiting.append(_Planned(inp, extra))

    def next(self) -> tuple[InputFile, T, Any] | None:
        """The next planned file, its ``extra`` and the ``fs`` to read it from; None when none is planned."""
        if self._local:  # every planned file is ready: nothing to look at, no fetch (one of many small files)
            if not self._local_ready:
                return None
            inp, extra = self._local_ready.popleft()
            if self._small_whole(inp):  # cheaper than the filesystem's own file object
                return inp, extra, Fetched(self._fs, partial(_read_local, inp.path, inp.size or 0))
            return inp, extra, self._fs
        self._top_up()
        if not self._ready:
            return None
        planned = self._ready.popleft()
        inp = planned.inp
        if planned.future is None:
            return inp, planned.extra, self._fs
        self._fetching -= 1
        self._bytes -= inp.size or 0
        self._top_up()  # its place goes to the next small file before this one is parsed
        return inp, planned.extra, Fetched(self._fs, planned.future.result)

    def close(self) -> None:
        """Drop the fetches not started (those under way end on their own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._waiting.clear()
        self._ready.clear()
        self._local_ready.clear()

    def _small_whole(self, inp: InputFile) -> bool:
        return not inp.part and inp.size is not None and inp.size <= self._small

    def _fetchable(self, inp: InputFile) -> bool:
        # (an empty object is opened as before: a range request on it would be refused)
        return self._ahead > 0 and not self._local and self._small_whole(inp) and bool(inp.size)

    def _top_up(self) -> None:
        """Look at waiting files until ``ahead`` fetches are under way (or their bytes are at the bound)."""
        bound = max(self._ahead, 1)
        while self._waiting and self._fetching < bound and len(self._ready) < 4 * bound:
            planned = self._waiting[0]
            if self._fetchable(planned.inp):
                size = planned.inp.size or 0
                if self._fetching and self._bytes + size > self._ahead_bytes:
                    return
                planned.future = self._submit(planned.inp)
                self._fetching += 1
                self._bytes += size
            self._ready.append(self._waiting.popleft())

    def _submit(self, inp: InputFile) -> Future[bytes]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._ahead, thread_name_prefix="fetch")
        if self._get is None:
            getter = s3_getter(self._fs)
            # start=0: one ranged GET, where s3fs would first ask for the size of a whole object
            self._get = getter.get if getter is not None else partial(self._fs.cat_file, start=0)
        return self._pool.submit(self._get, inp.path)


def _read_local(path: str, size: int) -> bytes:
    """The whole file (``size`` bytes as listed, or whatever it holds now), read with ``os`` calls.

    Three system calls where ``open`` and ``read`` make eight: each lets go of
    the GIL and then waits to take it back while the event loop is busy,
    which over many small files costs more than reading their bytes.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, size + 1)
        if len(data) <= size:  # a short read of a file on disk: its end (no read more to find it)
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 16):  # to the end: the file grew since it was listed
            chunks.append(chunk)
            if len(chunk) < 1 << 16:
                break
        return b"".join(chunks)
    finally:
        os.close(fd)
