"""Pack chunks into numbered batches of at most ``batch_size`` inputs.

Batches are numbered in read order, so the writer can put answers back in
that order whatever order the API answers in. Records that failed while
being read or cut ride along in the batch of their stretch of input, and
each batch says how many records it completes and how far each file is done.
"""

from __future__ import annotations

import math
from typing import Iterable

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from pipeline.types import END_OF_FILE, Batch, Chunk, Failure, FileEnd, Piece


class Window:
    """How many batches may be out between the batcher and the writer's committed prefix.

    The batcher enters before it sends a batch; the writer leaves once per
    batch it has written or dropped. Answers come back in any order and the
    writer holds early ones until the gap before them fills: the window
    bounds that reorder buffer (and what a drain has to finish).
    """

    def __init__(self, size: int) -> None:
        self._slots = anyio.Semaphore(size)

    async def enter(self) -> None:
        """Wait for a free slot."""
        await self._slots.acquire()

    def leave(self, count: int = 1) -> None:
        """Free ``count`` slots."""
        for _ in range(count):
            self._slots.release()


class Batcher:
    """Accumulates pieces into :class:`Batch` values (synchronous core)."""

    def __init__(self, batch_size: int, *, max_failures: int = 1000, max_rows: int | None = None) -> None:
        """``max_rows`` bounds chunks and failures together: any chunk may come back a failure, and
        neither a data shard nor an errors shard may get more than ``sink.shard_rows`` rows of one batch."""
        self.batch_size = batch_size
        self.max_failures = max_failures
        self.max_rows = max_rows
        self.seq = 0
        self._chunks: list[Chunk] = []
        self._failures: list[Failure] = []
        self._records = 0
        self._marks: dict[str, int] = {}
        # full, but held for the end of the file whose record at location 0 filled it: a mark of 0
        # ("done up to 0") reads like "not started", so a commit between that record and its file's
        # end would have a rerun read (and pay for) the record again
        self._held = False

    @property
    def pending(self) -> bool:
        """Whether anything is waiting to be sent."""
        return bool(self._chunks or self._failures or self._marks)

    def add(self, piece: Piece) -> Iterable[Batch]:
        """Add one record's outcome; yield every batch it fills."""
        if isinstance(piece, FileEnd):
            self.mark(piece.url, END_OF_FILE)
            if self._held:
                yield self.flush()
            return
        if self._held:
            yield self.flush()
        if isinstance(piece, Failure):
            self._failures.append(piece)
            self._complete(piece.source + piece.part, piece.location)
            if len(self._failures) >= self.max_failures or self._rows_full():
                yield from self._full(piece.location)
            return
        last = len(piece) - 1
        for i, chunk in enumerate(piece):
            self._chunks.append(chunk)
            if i == last:
                self._complete(chunk.source + chunk.part, chunk.location)
            if len(self._chunks) >= self.batch_size or self._rows_full():
                yield from self._full(chunk.location if i == last else None)

    def _rows_full(self) -> bool:
        return self.max_rows is not None and len(self._chunks) + len(self._failures) >= self.max_rows

    def _full(self, completed_at: int | None) -> Iterable[Batch]:
        """The batch is full: out it goes, unless the record just completed is a whole file's (location 0)."""
        if completed_at == 0:
            self._held = True
        else:
            yield self.flush()

    def mark(self, url: str, location: int) -> None:
        """Say that ``url`` is done up to ``location`` (e.g. at the end of a file)."""
        self._marks[url] = max(location, self._marks.get(url, location))

    def _complete(self, url: str, location: int) -> None:
        self._records += 1
        self.mark(url, location)

    def flush(self) -> Batch:
        """The batch accumulated so far (possibly without chunks)."""
        batch = Batch(
            seq=self.seq,
            chunks=tuple(self._chunks),
            failures=tuple(self._failures),
            records=self._records,
            marks=tuple(self._marks.items()),
        )
        self.seq += 1
        self._chunks, self._failures, self._records, self._marks = [], [], 0, {}
        self._held = False
        return batch


async def batch_stage(
    receive: ObjectReceiveStream[list[Piece]],
    send: ObjectSendStream[Batch],
    *,
    batch_size: int,
    max_rows: int | None = None,
    window: Window | None = None,
    linger_s: float = 0.5,
) -> None:
    """Read lists of pieces, send full batches; flush a partial one after
    ``linger_s`` without input, and at the end of the stream.

    Each batch enters ``window`` before it goes out; ``max_rows`` bounds
    its chunks and failures together (see :class:`Batcher`).
    """
    batcher = Batcher(batch_size, max_rows=max_rows)

    async def emit(batch: Batch) -> None:
        if window is not None:
            await window.enter()
        await send.send(batch)

    async with receive, send:
        while True:
            pieces: list[Piece] | None = None
            with anyio.move_on_after(linger_s if batcher.pending else math.inf):
                try:
                    pieces = await receive.receive()
                except anyio.EndOfStream:
                    break
            if pieces is None:  # nothing arrived for a while: don't sit on a partial batch
                await emit(batcher.flush())
                continue
            for piece in pieces:
                for batch in batcher.add(piece):
                    await emit(batch)
        if batcher.pending:
            await emit(batcher.flush())
