"""Write: put answers back in read order and hand them to the sink, which commits.

Answers come back in any order. The stage holds early ones until the gap
before them fills, so that what is committed is always a prefix of the
input and resuming is a matter of per-file high-water marks. A
:class:`Skipped` batch (never sent) cuts the run there: nothing from it on is
written, and those records are read again by the next run.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import anyio
from anyio.abc import ObjectReceiveStream

from pipeline.dataset.sink import Sink
from pipeline.logs import get_logger
from pipeline.stages.batch import Window
from pipeline.stages.read import Checkpoints
from pipeline.types import EmbeddedBatch, Skipped

COMMIT_CHECK_S = 1.0  # how often an idle writer asks whether a commit is due

Entries = list[dict[str, Any]]


class Committer:
    """Runs sink calls that may commit, in a worker thread, with the latest checkpoints.

    Checkpoints are facts about input files, saved with whatever the call
    commits; ``on_commit`` hears of every shard entry committed.
    """

    def __init__(
        self,
        sink: Sink,
        checkpoints: Checkpoints,
        cpu: anyio.CapacityLimiter,
        on_commit: Callable[[Entries], None] = lambda _: None,
    ) -> None:
        self.sink = sink
        self._checkpoints = checkpoints
        self._cpu = cpu
        self._on_commit = on_commit

    async def __call__(self, call: Callable[..., Entries], *args: Any) -> None:
        """``call(*args)``, a method of the sink, after storing new checkpoints."""

        def run() -> Entries:
            offsets = self._checkpoints.changed()
            if offsets is not None:
                self.sink.set_offsets(offsets)
            return call(*args)

        self._on_commit(await anyio.to_thread.run_sync(run, limiter=self._cpu))


async def write_stage(
    receive: ObjectReceiveStream[EmbeddedBatch | Skipped],
    *,
    commit: Committer,
    window: Window,
    on_written: Callable[[EmbeddedBatch], None] = lambda _: None,
    prepare: Callable[[EmbeddedBatch], EmbeddedBatch] = lambda batch: batch,
) -> None:
    """Hand answers to the sink in read order, committing as shards fill or fall due; ``prepare``
    sees each answer first (the id registry names the kept rows it displaces).

    (Rows whose id is already taken never get here as rows: they are
    ``duplicate_id`` failures from before batching, :mod:`pipeline.stages.triage`.)
    """
    sink = commit.sink
    waiting: dict[int, EmbeddedBatch] = {}
    expected = 0
    cut: float = math.inf  # the first batch that was never sent: nothing from it on is written
    async with receive:
        while True:
            arrived: list[EmbeddedBatch | Skipped] = []
            with anyio.move_on_after(COMMIT_CHECK_S):
                try:
                    arrived.append(await receive.receive())
                except anyio.EndOfStream:
                    break
            while arrived:  # ...and whatever else is already there: one thread hop for all of it
                try:
                    arrived.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            ready: list[EmbeddedBatch] = []
            for answer in arrived:
                if isinstance(answer, Skipped) or answer.seq >= cut:
                    cut = min(cut, answer.seq)
                    dropped = [seq for seq in waiting if seq >= cut]
                    for seq in dropped:
                        del waiting[seq]
                    window.leave([answer.seq, *dropped])
                    continue
                waiting[answer.seq] = answer
                while expected in waiting:
                    ready.append(prepare(waiting.pop(expected)))
                    expected += 1
            if ready:
                await commit(sink.write_many, ready)
                for done in ready:
                    on_written(done)
                window.leave(done.seq for done in ready)
            elif sink.commit_due():
                await commit(sink.commit_if_due)
    if waiting:  # only after a cancellation: these are not committed, and will be read again
        get_logger().warning("batches_dropped", count=len(waiting))
