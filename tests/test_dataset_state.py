"""The resume state in ``_state/`` files (pipeline.dataset.state, state_files): deltas, merging, crashes, format 1."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from pipeline.dataset import state_files
from pipeline.dataset.ledger import Ledger
from pipeline.dataset.manifest import Manifest
from pipeline.errors import SinkError
from pipeline.types import END_OF_FILE, EmbeddedBatch

from state_helpers import as_format_1, read_state, state_of
from test_dataset_writer import make_batch, make_writer


def url(i: int) -> str:
    return f"file:///in/doc-{i:05d}.jsonl"


def one_doc(seq: int, i: int) -> EmbeddedBatch:
    """A batch holding the one record of input ``url(i)``, which ends there."""
    batch = make_batch(seq, 1, start=i, source=url(i))
    return replace(batch, marks=((url(i), END_OF_FILE),))


def write_docs(w, docs: range, seq: int = 0) -> None:
    for n, i in enumerate(docs):
        w.write(one_doc(seq + n, i))
        w.set_signature(url(i), f"1:{i}")


def names_in(root: Path, item: dict) -> list[str]:
    return pq.read_table(root / item["path"], columns=["name"]).column("name").to_pylist()


def test_a_commit_writes_only_what_it_changed(tmp_path: Path) -> None:
    """The first commit writes the state whole; the next one a file of its own inputs and shards only."""
    w = make_writer(tmp_path)
    write_docs(w, range(50))
    w.commit()
    first = list(w.manifest.state_files)
    assert len(first) == 1 and first[0]["rows"] == 51  # 50 inputs and the shard (no errors shard)
    write_docs(w, range(50, 52), seq=50)
    entries = w.commit()
    files = w.manifest.state_files
    assert files[0] == first[0] and len(files) == 2
    assert sorted(names_in(tmp_path, files[1])) == sorted([url(50), url(51), entries[0]["path"]])
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert manifest["state"] == files and manifest["format_version"] == 2
    assert "progress" not in manifest and "files" not in manifest and url(3) not in json.dumps(manifest)
    assert all("sources" not in s and "marks" not in s for s in manifest["shards"])
    w.close("completed")
    state = read_state(tmp_path)
    assert len(state.files) == 52 and all(state.done_upto(url(i)) == END_OF_FILE for i in range(52))


def test_a_commit_that_changes_nothing_writes_no_state_file(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    write_docs(w, range(3))
    w.commit()
    before = list(w.manifest.state_files)
    w.close("completed")  # saves the run only
    assert w.manifest.state_files == before
    assert sorted(p.name for p in (tmp_path / "_state").iterdir()) == [Path(f["path"]).name for f in before]


def test_files_merge_as_they_pile_up_and_load_back_equal(tmp_path: Path) -> None:
    """Many small commits: the list stays short (merged tail, then a new snapshot); every load is exact."""
    rng = random.Random(7)
    w = make_writer(tmp_path)
    write_docs(w, range(200))
    w.commit()
    longest = 0
    for step in range(60):
        i = rng.randrange(260)
        w.write(one_doc(1000 + step, i))
        w.set_signature(url(i), f"2:{step}")
        if step % 7 == 3:
            w.remove_sources([url(rng.randrange(200))])
        w.commit()
        longest = max(longest, len(w.manifest.state_files))
        written = sum(f["rows"] for f in w.manifest.state_files[1:])
        assert written <= w.manifest.state_files[0]["rows"] or len(w.manifest.state_files) == 1
        mine = state_of(w.manifest)
        loaded = read_state(tmp_path)
        assert (loaded.progress, loaded.files, loaded.ends, loaded.sources, loaded.marks) == (
            mine.progress, mine.files, mine.ends, mine.sources, mine.marks)
    assert 1 < longest <= 8
    listed = {Path(f["path"]).name for f in w.manifest.state_files}
    assert {p.name for p in (tmp_path / "_state").iterdir()} == listed  # merged-away files are deleted
    w.close("completed")


def test_the_whole_state_is_written_again_once_changes_outgrow_it(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    write_docs(w, range(4))
    w.commit()
    snapshot = w.manifest.state_files[0]["path"]
    write_docs(w, range(4, 20), seq=4)  # 16 new inputs > the 5 rows of the first file
    w.commit()
    assert len(w.manifest.state_files) == 1 and w.manifest.state_files[0]["path"] != snapshot
    assert w.manifest.state_files[0]["rows"] == 20 + 2
    assert not (tmp_path / snapshot).exists()
    w.close("completed")


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_killed_between_the_state_file_and_the_manifest(tmp_path: Path, monkeypatch) -> None:
    """The state file is written, the manifest not switched: the next open deletes it and resumes exactly."""
    w = make_writer(tmp_path)
    write_docs(w, range(5))
    w.commit()
    before = json.loads((tmp_path / "_manifest.json").read_text())
    write_docs(w, range(5, 8), seq=5)
    monkeypatch.setattr(Ledger, "_save_once", lambda self, manifest: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        w.commit()
    monkeypatch.undo()
    orphan = sorted((tmp_path / "_state").iterdir())
    assert len(orphan) == len(before["state"]) + 1  # the new file, which no manifest lists
    after = json.loads((tmp_path / "_manifest.json").read_text())
    assert after["state"] == before["state"] and after["shards"] == before["shards"]

    w2 = make_writer(tmp_path)
    assert sorted(p.name for p in (tmp_path / "_state").iterdir()) == sorted(
        Path(f["path"]).name for f in before["state"])
    assert [w2.done_upto(url(i)) for i in range(8)] == [END_OF_FILE] * 5 + [0] * 3
    assert w2.signature(url(6)) is None
    write_docs(w2, range(5, 8), seq=5)
    w2.close("completed")
    state = read_state(tmp_path)
    assert all(state.done_upto(url(i)) == END_OF_FILE for i in range(8))
    assert w2.manifest.totals["rows_embedded"] == 8


def test_unlisted_state_files_of_this_rank_are_deleted_at_open(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    write_docs(w, range(3))
    w.close("completed")
    listed = sorted(Path(f["path"]).name for f in w.manifest.state_files)
    (tmp_path / "_state/part-00000-000099.parquet").write_bytes(b"left by a crash")
    (tmp_path / "_state/.part-00000-000100.parquet.1234abcd.tmp").write_bytes(b"half")
    (tmp_path / "_state/part-00001-000000.parquet").write_bytes(b"another rank's")
    make_writer(tmp_path).close("completed")
    assert sorted(p.name for p in (tmp_path / "_state").iterdir()) == sorted([*listed, "part-00001-000000.parquet"])


def test_a_missing_state_file_is_refused_with_a_way_out(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    write_docs(w, range(3))
    w.close("completed")
    (tmp_path / w.manifest.state_files[0]["path"]).unlink()
    with pytest.raises(SinkError, match="listed in the manifest but missing.*--fresh"):
        make_writer(tmp_path)


def test_a_dataset_of_format_1_opens_resumes_and_moves_its_state_to_files(tmp_path: Path) -> None:
    """The previous version kept the state in the manifest: it opens, skips what is done, and the next
    save writes the state whole to _state/ and a manifest of format 2 without it."""
    w = make_writer(tmp_path)
    write_docs(w, range(6))
    w.write(replace(make_batch(6, 2, start=0, source=url(6)), marks=((url(6), 2),)))  # half of a file
    w.set_offsets({url(6): [[100, 4096]]})
    w.close("completed")
    old = as_format_1(tmp_path)
    assert old["progress"][url(0)] == END_OF_FILE and not (tmp_path / "_state").exists()

    w2 = make_writer(tmp_path)
    assert [w2.done_upto(url(i)) for i in range(7)] == [END_OF_FILE] * 6 + [2]
    assert w2.signature(url(3)) == "1:3" and w2.offsets() == {url(6): [[100, 4096]]}
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert manifest["format_version"] == 2 and "progress" not in manifest and len(manifest["state"]) == 1
    assert all("sources" not in s for s in manifest["shards"])
    w2.remove_sources([url(1)])  # knows which shard holds its rows, from the old entries' sources
    w2.close("completed")
    state = read_state(tmp_path)
    assert url(1) not in state.files and state.files[url(2)] == "1:2"
    assert w2.manifest.totals["rows_embedded"] == 7 and w2.manifest.totals["records_read"] == 7
    assert Manifest.load(fsspec.filesystem("file"), str(tmp_path)).format_version == 2


def test_inspect_counts_the_state(tmp_path: Path) -> None:
    from pipeline.dataset.inspect import summarize

    w = make_writer(tmp_path)
    write_docs(w, range(4))
    w.close("completed")
    summary = summarize(fsspec.filesystem("file"), str(tmp_path))
    assert summary["ok"] and summary["files_in_progress"] == 4 and summary["state_files"] == 1
    as_format_1(tmp_path)  # its shards' metadata still differ from the new entries: not a problem
    assert summarize(fsspec.filesystem("file"), str(tmp_path))["files_in_progress"] == 4


def test_state_files_round_trip_every_field(tmp_path: Path) -> None:
    from pipeline.dataset.state import State

    fs = fsspec.filesystem("file")
    m = Manifest.new("m", None, "float")
    s = m.loaded
    s.advance([("a", END_OF_FILE), ("b#bytes=0-9", 5)], last={"a": 3})
    s.set_signature("a", "1:x")
    s.set_offsets({"b": [[10, 100], [20, 200]]})
    s.add_shard("data/part-00000-000000.parquet", {"a": 2, "b": 0}, {"a": END_OF_FILE})
    s.add_shard("errors/part-00000-000000.parquet", None, {})
    retired = state_files.persist(fs, str(tmp_path), 0, m)
    assert retired == [] and not s.dirty
    m.state = None
    loaded = state_files.load(fs, str(tmp_path), m)
    assert isinstance(loaded, State)
    assert loaded.progress == {"a": END_OF_FILE, "b#bytes=0-9": 5} and loaded.ends == {"a": 3}
    assert loaded.files == {"a": "1:x"} and loaded.offsets == {"b": [[10, 100], [20, 200]]}
    assert loaded.sources == {"data/part-00000-000000.parquet": {"a": 2, "b": 0}}
    assert loaded.marks == {"data/part-00000-000000.parquet": {"a": END_OF_FILE},
                            "errors/part-00000-000000.parquet": {}}
    loaded.forget("a")
    loaded.drop_shard("errors/part-00000-000000.parquet")
    state_files.persist(fs, str(tmp_path), 0, m)
    m.state = None
    again = state_files.load(fs, str(tmp_path), m)
    assert again.progress == {"b#bytes=0-9": 5} and again.files == {} and again.ends == {}
    assert list(again.marks) == ["data/part-00000-000000.parquet"]


def test_every_rank_keeps_its_own_state_files_and_a_reader_sees_them_all(tmp_path: Path) -> None:
    from pipeline.config import SinkConfig
    from pipeline.dataset.writer import DatasetWriter

    for rank in (0, 1):
        w = DatasetWriter(SinkConfig(path=str(tmp_path)), rank=rank, model="m", input_type="search_document",
                          embedding_type="float", metadata_fields=[], run_started_at="2024-01-01T00:00:00.000Z",
                          world_size=2)
        write_docs(w, range(rank * 10, rank * 10 + 3), seq=0)
        w.close("completed")
        assert all(f"part-{rank:05d}-" in f["path"] for f in w.manifest.state_files)
    merged = json.loads((tmp_path / "_manifest.json").read_text())
    assert sorted(Path(f["path"]).name[:10] for f in merged["state"]) == ["part-00000", "part-00001"]
    state = read_state(tmp_path)
    assert sorted(state.files) == sorted(url(i) for i in (0, 1, 2, 10, 11, 12))
    assert len(state.sources) == 2
