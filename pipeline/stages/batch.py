"""Pack chunks into numbered batches of at most ``batch_size`` inputs.

Batches are numbered in read order, so the writer can put answers back in
that order whatever order the API answers in. Records that failed while
being read or cut ride along in the batch of their stretch of input, and
each batch says how many records it completes and how far each file is done.

A batch is full when it holds ``batch_size`` chunks to send. Chunks whose
vector is already stored (looked up before batching, see
:mod:`pipeline.stages.triage`) ride along without counting, so that a rerun
that changed a chunk here and there still sends full requests; they are
bounded all the same (``RIDE`` times ``batch_size`` chunks a batch), and a
batch weighs in the :class:`Window` as many batches as its chunks would fill.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import anyio
import numpy as np
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from pipeline.types import END_OF_FILE, Batch, Chunk, Failure, FileEnd, Piece, Stored

if TYPE_CHECKING:
    from pipeline.stages.triage import Triage

#: chunks a batch may hold, stored ones included, in batches of ``batch_size``: a rerun that changed one
#: chunk in RIDE still sends full requests, and a batch holds at most RIDE times what it would unpaid
RIDE = 16


class Window:
    """How many batches may be out between the batcher and the writer's committed prefix.

    The batcher enters before it sends a batch; the writer leaves once per
    batch it has written or dropped. Answers come back in any order and the
    writer holds early ones until the gap before them fills: the window
    bounds that reorder buffer (and what a drain has to finish).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots = anyio.Semaphore(size)
        self._weights: dict[int, int] = {}  # batches that took more than one slot

    @property
    def free(self) -> int:
        """Slots free now."""
        return int(self._slots.value)

    async def enter(self, seq: int = -1, weight: int = 1) -> None:
        """Wait for ``weight`` free slots (at most all of them) for batch ``seq``."""
        weight = max(1, min(weight, self.size))
        if weight > 1:
            self._weights[seq] = weight
        for _ in range(weight):
            await self._slots.acquire()

    def leave(self, seqs: Iterable[int]) -> None:
        """Free the slots of batches ``seqs`` (written or dropped)."""
        for seq in seqs:
            for _ in range(self._weights.pop(seq, 1)):
                self._slots.release()


class Batcher:
    """Accumulates pieces into :class:`Batch` values (synchronous core)."""

    def __init__(self, batch_size: int, *, max_failures: int = 1000, max_rows: int | None = None,
                 looked_up: bool = False) -> None:
        """``max_rows`` bounds chunks and failures together: any chunk may come back a failure, and
        neither a data shard nor an errors shard may get more than ``sink.shard_rows`` rows of one batch.
        ``looked_up``: the chunks were looked up before batching; batches then say which were found."""
        self.batch_size = batch_size
        self.max_failures = max_failures
        self.max_rows = max_rows
        self.looked_up = looked_up
        self.seq = 0
        self._chunks: list[Chunk] = []
        self._found: list[bool] = []
        self._stored: list[np.ndarray] = []
        self._paid = 0  # chunks to send
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
        for i, item in enumerate(piece):
            if isinstance(item, Failure):  # a chunk whose id is taken: the record is counted once, below
                self._failures.append(item)
            elif isinstance(item, Stored):
                self._chunks.append(item.chunk)
                self._found.append(True)
                self._stored.append(item.vector)
            else:
                self._chunks.append(item)
                self._found.append(False)
                self._paid += 1
            where = item.chunk if isinstance(item, Stored) else item
            if i == last:
                self._complete(where.source + where.part, where.location)
            if (self._paid >= self.batch_size or len(self._chunks) >= RIDE * self.batch_size
                    or len(self._failures) >= self.max_failures or self._rows_full()):
                yield from self._full(where.location if i == last else None)

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
            found=np.asarray(self._found, dtype=bool) if self.looked_up else None,
            stored=np.stack(self._stored) if self._stored else None,
        )
        self.seq += 1
        self._chunks, self._failures, self._records, self._marks = [], [], 0, {}
        self._found, self._stored, self._paid = [], [], 0
        self._held = False
        return batch


def weight(batch: Batch, batch_size: int) -> int:
    """How many batches of ``batch_size`` chunks ``batch`` amounts to (what it holds in memory)."""
    return max(1, math.ceil(len(batch.chunks) / batch_size))


class RequestCount:
    """The requests batches would send, counted as the :class:`Batcher` fills them (``pipeline validate``).

    Only a batch with a chunk to send is a request; the end of a file and the
    linger cut no batch here, so a run may send a few more.
    """

    def __init__(self, batch_size: int, max_rows: int | None = None) -> None:
        self.batch_size = batch_size
        self.max_rows = min(RIDE * batch_size, max_rows or RIDE * batch_size)
        self.full = 0
        self._paid = self._chunks = 0

    def add(self, paid: Iterable[bool]) -> None:
        """Count chunks, in read order: whether each is to be sent."""
        for one in paid:
            self._paid += one
            self._chunks += 1
            if self._paid >= self.batch_size or self._chunks >= self.max_rows:
                self.full += self._paid > 0
                self._paid = self._chunks = 0

    @property
    def requests(self) -> int:
        """The full batches' requests, and the last one's."""
        return self.full + (self._paid > 0)


async def batch_stage(
    receive: ObjectReceiveStream[list[Piece]],
    send: ObjectSendStream[Batch],
    *,
    batch_size: int,
    max_rows: int | None = None,
    window: Window | None = None,
    linger_s: float = 0.5,
    triage: Triage | None = None,
) -> None:
    """Read lists of pieces, send full batches; flush a partial one after
    ``linger_s`` without input, and at the end of the stream.

    ``triage`` sees each list first, in read order (it looks chunks up: see
    :class:`~pipeline.stages.triage.Triage`). Each batch enters ``window``
    before it goes out; ``max_rows`` bounds its chunks and failures together
    (see :class:`Batcher`).
    """
    batcher = Batcher(batch_size, max_rows=max_rows, looked_up=triage is not None and triage.looks_up)

    async def emit(batch: Batch) -> None:
        if window is not None:
            await window.enter(batch.seq, weight(batch, batch_size))
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
            if triage is not None:
                pieces = await triage(pieces)
            for piece in pieces:
                for batch in batcher.add(piece):
                    await emit(batch)
        if batcher.pending:
            await emit(batcher.flush())
