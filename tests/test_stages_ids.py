"""One row per id: a later record whose id is taken goes to errors/ naming both places."""

from __future__ import annotations

import numpy as np

from pipeline.stages import ids as ids_module
from pipeline.stages.ids import IdRegistry
from pipeline.types import Chunk, EmbeddedBatch, Usage


def batch(seq: int, source: str, names: list[str]) -> EmbeddedBatch:
    chunks = tuple(Chunk(n, n, 0, f"text {n}", source, i + 1, "h") for i, n in enumerate(names))
    vectors = np.arange(len(names) * 2, dtype=np.float32).reshape(len(names), 2)
    return EmbeddedBatch(seq, chunks, vectors, Usage(1, 0, 5, 5), records=len(names))


def test_a_later_duplicate_becomes_an_error_row_naming_both_places() -> None:
    """The first record keeps its id; the later one with the same id fails, its vector dropped with it."""
    registry = IdRegistry()
    first = registry.check(batch(0, "a.jsonl", ["7", "8"]))
    assert [c.id for c in first.chunks] == ["7", "8"] and not first.failures
    second = registry.check(batch(1, "b.jsonl", ["9", "7"]))
    assert [c.id for c in second.chunks] == ["9"] and second.vectors.tolist() == [[0.0, 1.0]]
    (failure,) = second.failures
    assert failure.error_type == "duplicate_id" and failure.id == "7" and failure.source == "b.jsonl"
    assert "a.jsonl" in failure.message and "b.jsonl line/row 2" in failure.message
    assert second.records == 2  # every record still ends in exactly one place


def test_ids_already_in_the_dataset_are_taken(monkeypatch) -> None:
    """Ids seeded from the dataset (merged into the sorted arrays) are taken; a changed source frees its own."""
    monkeypatch.setattr(ids_module, "MERGE_EVERY", 4)
    registry = IdRegistry()
    registry.add_existing([str(i) for i in range(10)], ["old.jsonl"] * 10)
    assert len(registry) == 10
    out = registry.check(batch(0, "new.jsonl", ["3", "10"]))
    assert [c.id for c in out.chunks] == ["10"] and "old.jsonl" in out.failures[0].message
    registry.forget_source("old.jsonl")
    again = registry.check(batch(1, "old.jsonl", ["3"]))
    assert [c.id for c in again.chunks] == ["3"]


def test_the_inputs_of_many_ids_are_kept_in_blocks_and_still_named_and_freed() -> None:
    """Thousands of inputs (kept compressed, a block at a time): a duplicate names the right one; forgetting an
    input placed twice (before and after a block was packed) frees all its ids and no other's."""
    registry = IdRegistry()
    count = 3 * ids_module.BLOCK + 5
    registry.add_existing([f"id-{i}" for i in range(count)], [f"s3://b/doc-{i}.json" for i in range(count)])
    registry.add_existing(["id-again"], ["s3://b/doc-7.json"])  # doc-7 once more, in a later place
    assert len(registry) == count + 1
    out = registry.check(batch(0, "new.jsonl", ["id-1234", "id-again"]))
    assert [f.message.count("s3://b/doc-1234.json") for f in out.failures][0] == 1
    assert "s3://b/doc-7.json" in out.failures[1].message
    registry.forget_source("s3://b/doc-7.json")
    again = registry.check(batch(1, "other.jsonl", ["id-7", "id-again", "id-8"]))
    assert [c.id for c in again.chunks] == ["id-7", "id-again"] and "s3://b/doc-8.json" in again.failures[0].message


def test_merged_pending_and_same_batch_ids_are_all_taken_as_a_dict_would_say(monkeypatch) -> None:
    """Whichever place holds an id (sorted arrays, ids not merged yet, earlier in the same batch), its first
    record keeps it and every later one fails naming the first one's input, as a plain dict would say."""
    monkeypatch.setattr(ids_module, "MERGE_EVERY", 7)
    registry = IdRegistry()
    first_of: dict[str, str] = {}
    for seq in range(12):
        source = f"s{seq % 3}.jsonl"
        names = [str((seq * 5 + k * 3) % 41) for k in range(9)]  # repeats within and across batches
        kept, late = [], []
        for name in names:
            if name in first_of:
                late.append((name, first_of[name]))
            else:
                first_of[name] = source
                kept.append(name)
        out = registry.check(batch(seq, source, names))
        assert [c.id for c in out.chunks] == kept
        assert [(f.id, f.message.split("a record of ")[1].split(";")[0]) for f in out.failures] == late
    assert len(registry) == len(first_of)


def test_a_yielding_inputs_ids_go_to_the_next_input_that_has_one(monkeypatch) -> None:
    """Ids held by an input that yields (kept under run.on_deleted: keep), merged or pending, are taken
    over by the first later input with them, naming the rows they displace; then they are that input's."""
    monkeypatch.setattr(ids_module, "MERGE_EVERY", 4)
    registry = IdRegistry()
    registry.add_existing([str(i) for i in range(6)], ["gone.jsonl"] * 6)  # merged
    registry.add_existing(["p"], ["gone.jsonl"])  # pending
    registry.add_existing(["o"], ["other.jsonl"])
    registry.yield_sources(["gone.jsonl"])
    out = registry.with_displaced(registry.check(batch(0, "moved.jsonl", ["3", "p", "o", "new"])))
    assert [c.id for c in out.chunks] == ["3", "p", "new"] and out.failures[0].id == "o"
    assert out.displaced == (("gone.jsonl", "3"), ("gone.jsonl", "p"))
    again = registry.with_displaced(registry.check(batch(1, "late.jsonl", ["3", "p", "4"])))
    assert [c.id for c in again.chunks] == ["4"] and again.displaced == (("gone.jsonl", "4"),)
    assert all("moved.jsonl" in f.message for f in again.failures)


def test_seeding_keeps_the_first_of_each_id_and_leaves_out_the_skipped_inputs() -> None:
    """Seeded in blocks (lists or Arrow arrays, more ids than said), the first record of an id keeps it, as
    add_existing says; the ids of a skipped input are free, as if it had been forgotten."""
    import pyarrow as pa

    blocks = [(["a", "b", "a"], ["x.md", "x.md", "y.md"]), (pa.array(["c", "b", "e"]), pa.array(["y.md", "z.md", "z.md"]))]
    registry = IdRegistry()
    registry.seed(blocks, rows=2, skip={"x.md"})
    assert len(registry) == 4  # a (y), c (y), b (z), e (z)
    out = registry.check(batch(0, "new.md", ["a", "b", "d"]))
    assert [c.id for c in out.chunks] == ["d"]
    assert ["y.md" in out.failures[0].message, "z.md" in out.failures[1].message] == [True, True]
    whole = IdRegistry()
    whole.seed(blocks)
    out = whole.check(batch(0, "new.md", ["a", "b", "c", "e"]))
    assert [f.message.split("a record of ")[1].split(";")[0] for f in out.failures] == ["x.md", "x.md", "y.md", "z.md"]


def test_ids_seeded_after_their_input_yields_still_go_to_the_next_input() -> None:
    """A run is told which inputs yield (kept under run.on_deleted: keep) when it compares, and seeds the
    registry after: the ids seeded then are theirs to give away all the same."""
    registry = IdRegistry()
    registry.yield_sources(["gone.jsonl"])
    registry.seed([(["a", "b"], ["gone.jsonl", "other.jsonl"])])
    out = registry.with_displaced(registry.check(batch(0, "moved.jsonl", ["a", "b"])))
    assert [c.id for c in out.chunks] == ["a"] and out.displaced == (("gone.jsonl", "a"),)
    assert out.failures[0].id == "b"
