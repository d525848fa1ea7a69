"""The write stage: answers back in read order, a never-sent batch cuts the run there."""

from __future__ import annotations

from typing import Any, Sequence

import anyio
import numpy as np
import pytest

from pipeline.stages.batch import Window
from pipeline.stages.read import Checkpoints
from pipeline.stages.write import Committer, write_stage
from pipeline.types import Chunk, EmbeddedBatch, Skipped, Usage

pytestmark = pytest.mark.anyio


class ListSink:
    """Records what it was handed, in order; commits nothing (a unit stand-in for a Sink)."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.offsets_saved: list[dict] = []

    def write_many(self, batches: Sequence[EmbeddedBatch]) -> list[dict[str, Any]]:
        self.written += [b.seq for b in batches]
        return []

    def commit_due(self) -> bool:
        return False

    def set_offsets(self, offsets: dict) -> None:
        self.offsets_saved.append(offsets)


def answer(seq: int) -> EmbeddedBatch:
    chunk = Chunk(f"d{seq}", f"d{seq}", 0, "t", "src", seq + 1, "h")
    return EmbeddedBatch(seq, (chunk,), np.zeros((1, 4), np.float32), Usage(1, 0, 1, 1))


async def feed(items: list[EmbeddedBatch | Skipped], window_size: int = 16) -> ListSink:
    sink = ListSink()
    window = Window(window_size)
    for _ in items:
        await window.enter()  # as the batcher does for every batch it sends
    send, receive = anyio.create_memory_object_stream[EmbeddedBatch | Skipped](len(items))
    for item in items:
        send.send_nowait(item)
    send.close()
    commit = Committer(sink, Checkpoints(), anyio.CapacityLimiter(1))  # type: ignore[arg-type]
    with anyio.fail_after(10):
        await write_stage(receive, commit=commit, window=window)
        for _ in range(window_size):  # every slot came back
            await window.enter()
    return sink


async def test_answers_are_written_in_read_order() -> None:
    """Answers arriving out of order reach the sink in sequence order."""
    sink = await feed([answer(2), answer(0), answer(3), answer(1)])
    assert sink.written == [0, 1, 2, 3]


async def test_a_skipped_batch_cuts_everything_after_it() -> None:
    """Once batch 2 was never sent, batches 2 and later are dropped, earlier ones written."""
    sink = await feed([answer(3), answer(0), Skipped(2), answer(1), answer(4)])
    assert sink.written == [0, 1]


async def test_new_checkpoints_are_handed_to_the_sink_before_a_write() -> None:
    """Checkpoints recorded by the reader reach the sink with the next commit."""
    sink = ListSink()
    checkpoints = Checkpoints()
    checkpoints.recorder("file:///a.jsonl")(1000, 65536)
    commit = Committer(sink, checkpoints, anyio.CapacityLimiter(1))  # type: ignore[arg-type]
    await commit(sink.write_many, [answer(0)])
    await commit(sink.write_many, [answer(1)])
    assert sink.offsets_saved == [{"file:///a.jsonl": [[1000, 65536]]}]
