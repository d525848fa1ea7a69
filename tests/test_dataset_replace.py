"""Replacing and removing a source's rows, copy-on-write inside a commit (pipeline.dataset.replace, writer)."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pyarrow.dataset as ds

from pipeline.dataset.inspect import render_summary, summarize
from pipeline.types import END_OF_FILE, EmbeddedBatch

from state_helpers import state_of
from test_dataset_writer import make_batch, make_writer

A = "file:///in/a.jsonl"
B = "file:///in/b.jsonl"


def ended(batch: EmbeddedBatch, url: str) -> EmbeddedBatch:
    """``batch`` with the end-of-file mark of ``url`` too."""
    from dataclasses import replace

    return replace(batch, marks=(*batch.marks, (url, END_OF_FILE)))


def rows(path: Path) -> list[tuple[str, str]]:
    """(source, id) of every row a reader globbing ``data/*.parquet`` sees."""
    table = ds.dataset(str(path / "data"), format="parquet").to_table(columns=["source", "id"])
    return sorted(zip(table.column("source").to_pylist(), table.column("id").to_pylist()))


def two_sources(path: Path) -> None:
    """A dataset with 3 rows of A and 2 of B (and an error row of A) in one shard."""
    w = make_writer(path)
    w.write(ended(make_batch(0, 3, source=A, failures=1), A))
    w.write(ended(make_batch(1, 2, start=10, source=B), B))
    w.set_signature(A, "1:x")
    w.set_signature(B, "1:y")
    w.close("completed")


def test_removed_source_leaves_in_its_own_commit(tmp_path: Path) -> None:
    """remove_sources: the next commit lists a copy of the shard without those rows, and the old file goes."""
    two_sources(tmp_path)
    w = make_writer(tmp_path)
    old = {s["path"] for s in w.manifest.shards}
    w.remove_sources([A])
    entries = w.commit()
    assert entries and all(e["path"] not in old for e in entries)
    m = w.manifest
    assert [s["kind"] for s in m.shards] == ["data"]  # the errors shard held only A's row: it left whole
    assert rows(tmp_path) == [(B, "d10"), (B, "d11")]
    assert m.totals["rows_embedded"] == 2 and m.totals["rows_failed"] == 0
    assert m.totals["records_read"] == 2
    state = state_of(m)
    assert A not in state.files and A not in state.progress and state.files[B] == "1:y"
    w.close("completed")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [m.shards[0]["path"].split("/")[1]]
    assert not list((tmp_path / "errors").iterdir())


def test_changed_source_is_replaced_with_its_first_new_rows(tmp_path: Path) -> None:
    """restart: old rows of A stay until A's new rows arrive, then leave in that same commit with the new signature."""
    two_sources(tmp_path)
    w = make_writer(tmp_path)
    w.restart(A, A)
    w.set_signature(A, "2:z")
    assert w.signature(A) == "1:x"  # not before its new rows
    w.write(make_batch(0, 1, start=20, source=B, ))  # another source's rows: A's old rows stay
    w.commit()
    assert (A, "d0") in rows(tmp_path) and w.signature(A) == "1:x"
    w.write(ended(make_batch(1, 2, start=0, source=A), A))
    w.commit()
    assert rows(tmp_path) == sorted([(A, "d0"), (A, "d1"), (B, "d10"), (B, "d11"), (B, "d20")])
    m = w.manifest
    assert w.signature(A) == "2:z" and m.done_upto(A) == END_OF_FILE
    assert m.totals["rows_embedded"] == 5 and m.totals["rows_failed"] == 0
    assert m.totals["records_read"] == 5
    w.close("completed")
    assert len(list((tmp_path / "data").glob("*.parquet"))) == len([s for s in m.shards if s["kind"] == "data"])


def test_append_reads_on_after_the_last_record(tmp_path: Path) -> None:
    """append: a finished input resumes after the location of its last record, not from its top."""
    two_sources(tmp_path)
    w = make_writer(tmp_path)
    assert w.done_upto(A) == END_OF_FILE
    assert w.append(A, A) is True
    assert w.done_upto(A) == 4  # 3 rows and a failure on lines 1-4
    assert w.append("file:///in/never.jsonl", "file:///in/never.jsonl") is False
    w.close("completed")


def test_legacy_entries_without_sources_are_read(tmp_path: Path) -> None:
    """A shard entry written before entries listed their sources is checked by its source column."""
    two_sources(tmp_path)
    w = make_writer(tmp_path)
    for entry in w.manifest.shards:
        state_of(w.manifest).sources.pop(entry["path"])
    w.remove_sources([B])
    w.commit()
    assert rows(tmp_path) == [(A, "d0"), (A, "d1"), (A, "d2")]
    assert w.manifest.totals["records_read"] == 4
    w.close("completed")


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_a_crash_inside_a_replacement_commit_leaves_the_old_dataset(tmp_path: Path, monkeypatch) -> None:
    """Killed after the rewritten shards are published but before the manifest switched: the next open
    deletes them as strays, and the dataset is the one before, every row once."""
    import pipeline.dataset.ledger as writer_module  # where the manifest is saved

    two_sources(tmp_path)
    before = rows(tmp_path)
    w = make_writer(tmp_path)
    w.remove_sources([A])

    def killed(*args, **kwargs):
        raise Killed()

    monkeypatch.setattr(writer_module, "save_rank", killed)
    try:
        w.commit()
    except Killed:
        pass
    monkeypatch.undo()
    assert len(list((tmp_path / "data").glob("*.parquet"))) == 2  # the old shard and its copy
    w = make_writer(tmp_path)
    assert rows(tmp_path) == before
    assert {f"data/{p.name}" for p in (tmp_path / "data").glob("*.parquet")} == {
        s["path"] for s in w.manifest.shards if s["kind"] == "data"}
    w.close("completed")


def test_a_crash_after_the_switch_leaves_old_files_that_the_next_open_deletes(tmp_path: Path, monkeypatch) -> None:
    """Killed after the manifest switched but before the old files were deleted: the next open deletes them."""
    two_sources(tmp_path)
    w = make_writer(tmp_path)
    w.remove_sources([A])

    def killed(*args, **kwargs):
        raise Killed()

    monkeypatch.setattr(w.fs, "rm_file", killed)
    try:
        w.commit()
    except Killed:
        pass
    monkeypatch.undo()
    w = make_writer(tmp_path)
    assert rows(tmp_path) == [(B, "d10"), (B, "d11")]
    assert {f"data/{p.name}" for p in (tmp_path / "data").glob("*.parquet")} == {
        s["path"] for s in w.manifest.shards if s["kind"] == "data"}
    w.close("completed")


def test_a_replacement_cut_short_keeps_the_retired_shard_until_the_input_is_whole(tmp_path: Path) -> None:
    """A's old rows leave with its first new ones, but the shard they were in stays (listed as retired,
    not as data) through the close and the next open, until A is committed to its end; then it goes."""
    two_sources(tmp_path)
    w = make_writer(tmp_path)
    old = w.manifest.shards[0]["path"]
    w.restart(A, A)
    w.set_signature(A, "2:z")
    w.write(make_batch(0, 1, start=0, source=A))  # A's first new row only: then the run stops
    w.close("interrupted")
    shown = render_summary(summarize(fsspec.filesystem("file"), str(tmp_path)), {})
    assert f"replacing: 1 changed input(s) a run left half replaced ({A}); their 1 old shard(s)" in shown
    w = make_writer(tmp_path)  # the rerun: its clean-up leaves the retired shard
    assert [r["path"] for r in w.manifest.retired] == [old] and w.replacing() == {A}
    assert w.manifest.retired[0]["inputs"] == {A: [A]}
    assert (tmp_path / old).exists() and old not in {s["path"] for s in w.manifest.shards}
    w.write(ended(make_batch(1, 1, start=1, source=A), A))
    w.commit()
    assert w.manifest.retired == [] and w.replacing() == set()
    w.close("completed")
    assert not (tmp_path / old).exists()
    assert rows(tmp_path) == sorted([(A, "d0"), (A, "d1"), (B, "d10"), (B, "d11")])
