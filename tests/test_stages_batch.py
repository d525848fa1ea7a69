"""Batching: sizes, read order, record counts and per-file marks."""

from __future__ import annotations

import anyio
import pytest

from pipeline.stages.batch import Batcher, batch_stage
from pipeline.types import END_OF_FILE, Batch, Chunk, Failure, FileEnd


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
