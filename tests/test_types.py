"""The values that cross stage boundaries: one Counts for every tally, failures made from their item."""

from __future__ import annotations

import numpy as np

from pipeline.types import Batch, Chunk, Counts, EmbeddedBatch, Failure, Record, Usage


def test_counts_of_a_batch_and_their_sum() -> None:
    """Counts.of tallies one answer; sums add field by field and name the manifest's totals."""
    chunk = Chunk("d#0", "d", 0, "t", "s", 3, "h")
    failure = Failure.of(chunk, "rejected", "no", status=400, attempts=2)
    batch = EmbeddedBatch(0, (chunk,), np.zeros((1, 2), np.float32), Usage(2, 1, 7, 9), (failure,), records=1, reused=1)
    one = Counts.of(batch)
    assert one == Counts(records_read=1, rows_embedded=1, rows_reused=1, rows_failed=1,
                         requests=2, retries=1, prompt_tokens=7, total_tokens=9)
    assert (one + one).as_dict()["total_tokens"] == 18
    assert list(Counts().as_dict()) == ["records_read", "rows_embedded", "rows_reused", "rows_failed",
                                        "requests", "retries", "prompt_tokens", "total_tokens"]


def test_failure_of_a_record_and_of_a_chunk() -> None:
    """A record's failure takes its doc_id as id; a chunk's keeps the chunk's id and index."""
    record = Record("doc", "text", "file:///a", 4, part="#bytes=0-9")
    assert Failure.of(record, "empty_text", "m") == Failure("doc", "doc", 0, "text", "file:///a", 4,
                                                           "empty_text", "m", part="#bytes=0-9")
    chunk = Chunk("doc#2", "doc", 2, "piece", "file:///a", 4, "h")
    f = Failure.of(chunk, "api_error", "503", status=503, attempts=6)
    assert (f.id, f.chunk_index, f.text, f.status, f.attempts) == ("doc#2", 2, "piece", 503, 6)


def test_an_answer_keeps_its_batch_identity() -> None:
    """EmbeddedBatch.answering carries the batch's seq, records, marks and read failures."""
    read_failure = Failure("x", "x", 0, None, "s", 1, "invalid_json", "bad")
    batch = Batch(5, (), (read_failure,), records=3, marks=(("s", 9),))
    out = EmbeddedBatch.answering(batch, (), np.zeros((0, 2), np.float32), Usage())
    assert (out.seq, out.records, out.marks, out.failures) == (5, 3, (("s", 9),), (read_failure,))
