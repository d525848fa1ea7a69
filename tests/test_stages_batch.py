"""Batching: sizes, read order, record counts and per-file marks; what triage sorts out before it."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from pipeline.stages.batch import RIDE, Batcher, RequestCount, Window, batch_stage, weight
from pipeline.stages.ids import IdRegistry
from pipeline.stages.triage import Triage
from pipeline.types import END_OF_FILE, Batch, Chunk, Failure, FileEnd, Stored


def chunk(doc: str, i: int = 0, source: str = "f.jsonl", location: int = 1) -> Chunk:
    return Chunk(id=f"{doc}#{i}", doc_id=doc, chunk_index=i, text=f"text {doc} {i}",
                 source=source, location=location, content_hash="h")


def failure(doc: str, location: int, source: str = "f.jsonl") -> Failure:
    return Failure(id=doc, doc_id=doc, chunk_index=0, text=None, source=source, location=location,
                   error_type="invalid_json", message="bad")


def test_full_batches_and_seq() -> None:
    """Batches hold at most batch_size chunks and are numbered from 0 in order."""
    b = Batcher(3)
    out = [batch for n in range(7) for batch in b.add((chunk(f"d{n}", location=n + 1),))]
    out.append(b.flush())
    assert [len(x.chunks) for x in out] == [3, 3, 1]
    assert [x.seq for x in out] == [0, 1, 2]
    assert [c.doc_id for x in out for c in x.chunks] == [f"d{n}" for n in range(7)]


def test_record_completes_in_batch_of_last_chunk() -> None:
    """A record split across batches counts, and marks its line, only in the batch of its last chunk."""
    b = Batcher(2)
    out = list(b.add((chunk("a", 0, location=1),)))
    out += list(b.add(tuple(chunk("b", i, location=2) for i in range(3))))
    out.append(b.flush())
    assert [x.records for x in out] == [1, 1, 0]
    assert [dict(x.marks) for x in out] == [{"f.jsonl": 1}, {"f.jsonl": 2}, {}]


def test_failures_ride_along_and_file_end_marks() -> None:
    """Read failures travel in the batch of their stretch; a file's end marks it done."""
    b = Batcher(10)
    list(b.add((chunk("a", location=1),)))
    list(b.add(failure("f.jsonl:2", 2)))
    list(b.add(FileEnd("f.jsonl")))
    batch = b.flush()
    assert batch.records == 2 and len(batch.failures) == 1
    assert dict(batch.marks) == {"f.jsonl": END_OF_FILE}


@pytest.mark.anyio
async def test_stage_flushes_partial_batch_after_linger() -> None:
    """A partial batch goes out after the linger even while the stream stays open."""
    send_in, receive_in = anyio.create_memory_object_stream[list](4)
    send_out, receive_out = anyio.create_memory_object_stream[Batch](4)
    async with receive_out, anyio.create_task_group() as tg:
        tg.start_soon(lambda: batch_stage(receive_in, send_out, batch_size=96, linger_s=0.05))
        with anyio.fail_after(5):
            await send_in.send([(chunk("a"),)])
            first = await receive_out.receive()
            assert [c.doc_id for c in first.chunks] == ["a"]
            await send_in.send([(chunk("b"),), (chunk("c"),)])
            await send_in.aclose()
            rest = [b async for b in receive_out]
        assert [c.doc_id for b in rest for c in b.chunks] == ["b", "c"]


def test_a_whole_file_record_that_fills_a_batch_takes_its_file_end_along() -> None:
    """A text file's record (location 0) that fills a batch waits for its file's end: a batch marking the
    file "done up to 0" alone would read, after a commit and a kill, as a file not started."""
    b = Batcher(2)
    out = list(b.add((chunk("a", source="a.md", location=0),)))
    out += list(b.add(FileEnd("a.md")))
    out += list(b.add((chunk("b", source="b.md", location=0),)))
    assert out == []  # full, held for b.md's end
    out += list(b.add(FileEnd("b.md")))
    out += list(b.add((chunk("c", source="c.md", location=0),)))
    out += list(b.add((chunk("d", source="d.md", location=0),)))
    out += list(b.add((chunk("e", source="e.jsonl", location=1),)))  # not d.md's end: the held batch goes first
    out.append(b.flush())
    assert [dict(x.marks) for x in out] == [{"a.md": END_OF_FILE, "b.md": END_OF_FILE}, {"c.md": 0, "d.md": 0},
                                            {"e.jsonl": 1}]
    assert [x.records for x in out] == [2, 2, 1]


def test_max_rows_bounds_chunks_and_failures_together() -> None:
    """With max_rows, a batch holds at most that many chunks and failures together (any chunk may
    come back a failure: neither shard kind may get more than shard_rows rows of one batch)."""
    b = Batcher(96, max_rows=40)
    out = [batch for n in range(100) for batch in b.add((chunk(f"d{n}", location=n + 1),))]
    out += [batch for n in range(100, 190) for batch in b.add(failure(f"f{n}", n + 1))]
    out.append(b.flush())
    assert [(len(x.chunks), len(x.failures)) for x in out] == [(40, 0), (40, 0), (20, 20), (0, 40), (0, 30)]
    assert [x.records for x in out] == [40, 40, 40, 40, 30]
    assert [dict(x.marks) for x in out] == [{"f.jsonl": n} for n in (40, 80, 120, 160, 190)]


def stored(doc: str, location: int, value: float = 1.0) -> Stored:
    return Stored(chunk(doc, location=location), np.full(4, value, np.float32))


def test_stored_chunks_ride_along_without_filling_the_batch() -> None:
    """A batch is full at batch_size chunks to send: chunks with a stored vector ride along (in read order,
    their vectors with them), up to RIDE times batch_size chunks in all."""
    b = Batcher(2, looked_up=True)
    out = list(b.add((stored("a", 1), chunk("b", location=1), stored("c", 1, 3.0))))
    out += list(b.add((chunk("d", location=2),)))
    assert len(out) == 1
    (full,) = out
    assert [c.doc_id for c in full.chunks] == ["a", "b", "c", "d"] and full.records == 2
    assert full.found.tolist() == [True, False, True, False] and full.stored[:, 0].tolist() == [1.0, 3.0]
    assert weight(full, 2) == 2
    for n in range(RIDE * 2):
        out += list(b.add((stored(f"s{n}", 3 + n),)))
    assert [len(x.chunks) for x in out] == [4, RIDE * 2] and out[1].found.all()


def test_a_duplicate_id_failure_rides_in_its_records_place() -> None:
    """A chunk turned into a failure before batching counts no record of its own: its record completes once."""
    b = Batcher(10)
    dup = Failure.of(chunk("x", 1, location=5), "duplicate_id", "taken")
    list(b.add((chunk("x", 0, location=5), dup)))
    batch = b.flush()
    assert batch.records == 1 and batch.failures == (dup,) and dict(batch.marks) == {"f.jsonl": 5}
    assert batch.found is None  # not looked up


def test_request_count_follows_the_batcher() -> None:
    """validate's count: a request per batch holding a chunk to send, the stored ones riding along."""
    count = RequestCount(3)
    count.add([False] * 40)  # nothing to send: no request, however many batches
    assert count.requests == 0
    count.add([True, False, True, False, True, True])
    assert count.requests == 2
    count.add([True] * 3)
    assert count.requests == 3


@pytest.mark.anyio
async def test_a_heavy_batch_takes_as_many_window_slots_as_it_weighs() -> None:
    """The window bounds what is held in batches of batch_size chunks: a batch of four times that takes
    four slots, and gives them back when written."""
    window = Window(5)
    await window.enter(0, 4)
    await window.enter(1, 1)
    assert window.free == 0
    window.leave([0])
    assert window.free == 4
    window.leave([1])
    with anyio.fail_after(5):
        await window.enter(2, 9)  # never more than the window: it would wait forever
    assert window.free == 0
    window.leave([2])
    assert window.free == 5


@pytest.mark.anyio
async def test_triage_turns_taken_ids_into_failures_and_stored_hashes_into_stored_chunks() -> None:
    """Ids first (in read order, against each other too), then the indexes in order for what is left."""

    class Index:
        def __init__(self, held: dict[str, float]) -> None:
            self.held, self.asked = held, []

        def lookup(self, hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
            self.asked.append(hashes)
            found = np.array([h in self.held for h in hashes], bool)
            return found, np.array([[self.held[h]] for h in hashes if h in self.held], np.float32).reshape(-1, 1)

    def hashed(doc: str, h: str, location: int) -> Chunk:
        return Chunk(id=doc, doc_id=doc, chunk_index=0, text=doc, source="f.jsonl", location=location, content_hash=h)

    ids = IdRegistry()
    own, earlier = Index({"h1": 1.0}), Index({"h1": 9.0, "h3": 3.0})
    triage = Triage(ids, [own, earlier])
    bad = failure("f.jsonl:2", 2)
    out = await triage([(hashed("a", "h1", 1),), bad, (hashed("b", "h2", 3), hashed("a", "h3", 3)),
                        (hashed("c", "h3", 4),), FileEnd("f.jsonl")])
    assert out[1] is bad and out[4] == FileEnd("f.jsonl")
    (a,), (b, dup), (c,) = out[0], out[2], out[3]
    assert isinstance(a, Stored) and a.vector.tolist() == [1.0]  # the first index wins
    assert isinstance(b, Chunk) and isinstance(dup, Failure) and dup.error_type == "duplicate_id"
    assert isinstance(c, Stored) and c.vector.tolist() == [3.0]
    assert own.asked == [["h1", "h2", "h3"]] and earlier.asked == [["h2", "h3"]]  # the duplicate is not looked up


def test_request_count_cuts_where_max_rows_does() -> None:
    """validate's count of requests cuts a batch at max_rows chunks, as the Batcher does with sink.shard_rows."""
    count = RequestCount(96, max_rows=40)
    count.add([True] * 100)
    assert count.requests == 3
