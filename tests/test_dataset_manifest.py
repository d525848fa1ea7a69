"""The dataset's ledger, `_manifest.json`: load, save, merge the ranks' parts."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest

from pipeline.config import SinkConfig
from pipeline.errors import SinkError
from pipeline.dataset.manifest import (
    Manifest,
    load_dataset_manifest,
    load_rank,
    manifest_name,
    merge,
    save_rank,
)
from pipeline.dataset.writer import DatasetWriter
from pipeline.types import Chunk, EmbeddedBatch, Failure, Usage


@pytest.fixture
def local():
    return fsspec.filesystem("file")


def entry(path: str, kind: str = "data", rows: int = 10, **more) -> dict:
    base = {
        "path": path, "kind": kind, "rows": rows, "requests": 1, "retries": 0,
        "prompt_tokens": 5, "total_tokens": 5, "started_at": "a", "finished_at": "b",
        "records": rows, "rows_reused": 0,
    }
    return {**base, **more}


def write_dataset(path: str, fs=None, *, rank: int = 0, world_size: int = 1) -> DatasetWriter:
    w = DatasetWriter(
        SinkConfig(path=path),
        rank=rank,
        model="m",
        input_type="search_document",
        embedding_type="float",
        metadata_fields=[],
        run_started_at="2024-01-01T00:00:00.000Z",
        fs=fs,
        world_size=world_size,
    )
    chunks = tuple(Chunk(f"d{i}", f"d{i}", 0, "t", "src", i + 1, "h") for i in range(4))
    fails = (Failure("x", "x", 0, None, "src", 9, "bad_record", "not JSON"),)
    w.write(EmbeddedBatch(0, chunks, np.ones((4, 8), np.float32), Usage(1, 0, 20, 20), fails, 5, (("src", 9),)))
    w.close("completed")
    return w


def test_new_save_load_round_trip(tmp_path, local):
    """A saved manifest loads back equal, as sorted, indented JSON with totals."""
    m = Manifest.new("m", "search_document", "int8")
    m.dimensions = 1024
    m.add_commit([entry("data/part-00000-000000.parquet")], [("s3://b/a.jsonl", 7)])
    m.start_run("t0")
    m.save(local, str(tmp_path))
    text = (tmp_path / "_manifest.json").read_text()
    assert text.startswith('{\n  "dimensions": 1024,')
    data = json.loads(text)
    assert data["format_version"] == 2
    assert data["totals"]["rows_embedded"] == 10
    assert data["state"] == [] and "progress" not in data  # the state is in _state/ files (state_files.persist)
    assert Manifest.load(local, str(tmp_path)) == m
    assert not (tmp_path / "_manifest.json.tmp").exists()


def test_save_to_object_store_is_one_put(memfs):
    """On a non-local filesystem the manifest is written with a single pipe_file."""
    calls = []
    original = memfs.pipe_file

    def counting(path, value, **kw):
        calls.append(path)
        return original(path, value, **kw)

    memfs.pipe_file = counting
    try:
        Manifest.new("m", None, "float").save(memfs, "/ds")
    finally:
        del memfs.pipe_file
    assert calls == ["/ds/_manifest.json"]
    assert Manifest.load(memfs, "/ds").input_type is None


def test_load_missing_is_none(tmp_path, local):
    """Loading from a directory without _manifest.json gives None."""
    assert Manifest.load(local, str(tmp_path)) is None


def test_load_corrupt_names_the_file(tmp_path, local):
    """Corrupt JSON raises SinkError naming the manifest file."""
    (tmp_path / "_manifest.json").write_text('{"format_version": 1, "model": ')
    with pytest.raises(SinkError, match="_manifest.json is not valid JSON"):
        Manifest.load(local, str(tmp_path))


def test_load_rejects_unknown_format_version(tmp_path, local):
    """A manifest of another format_version is refused rather than misread."""
    (tmp_path / "_manifest.json").write_text('{"format_version": 3, "model": "m", "embedding_type": "float"}')
    with pytest.raises(SinkError, match="format_version 3 .*--fresh"):
        Manifest.load(local, str(tmp_path))


def test_unknown_keys_survive_a_round_trip(tmp_path, local):
    """Keys this version does not know are kept when the manifest is saved again."""
    data = Manifest.new("m", None, "float").to_dict() | {"note": "hand-added"}
    (tmp_path / "_manifest.json").write_text(json.dumps(data))
    Manifest.load(local, str(tmp_path)).save(local, str(tmp_path))
    assert json.loads((tmp_path / "_manifest.json").read_text())["note"] == "hand-added"


def test_totals_are_computed_from_entries():
    """totals sum the shard entries: data rows, error rows, records, reuse and usage."""
    m = Manifest.new("m", None, "float")
    m.add_commit([entry("data/part-00000-000000.parquet", rows=10, records=12, rows_reused=3, retries=2),
                  entry("errors/part-00000-000000.parquet", "errors", rows=2, records=0, requests=0,
                        prompt_tokens=0, total_tokens=0)])
    m.add_commit([entry("data/part-00000-000001.parquet", rows=5, records=5)])
    assert m.totals == {
        "records_read": 17, "rows_embedded": 15, "rows_reused": 3, "rows_failed": 2,
        "requests": 2, "retries": 2, "prompt_tokens": 10, "total_tokens": 10,
    }
    assert m.last_seq(0, "data") == 1 and m.last_seq(0, "errors") == 0 and m.last_seq(1, "data") == -1


def test_progress_keeps_the_max_mark_per_file():
    """add_commit keeps the highest committed location of each file."""
    m = Manifest.new("m", None, "float")
    m.add_commit([], [("a", 5), ("b", 2)])
    m.add_commit([], {"a": 3, "c": 1})
    assert m.loaded.progress == {"a": 5, "b": 2, "c": 1}


def test_check_compatible_refuses_another_model():
    """check_compatible raises SinkError naming the dataset and both settings."""
    m = Manifest.new("m", "search_document", "float")
    m.check_compatible("m", "search_document", "float")
    with pytest.raises(SinkError, match=r"dataset at out/ds was made with model='m'.*embedding_type='int8'"):
        m.check_compatible("m", "search_document", "int8", where="out/ds")


def test_start_run_marks_a_dead_run_unfinished():
    """A run still 'running' when the next one starts is recorded as unfinished."""
    m = Manifest.new("m", None, "float")
    m.start_run("t0")
    m.start_run("t1")
    assert [r["status"] for r in m.runs] == ["unfinished", "running"]


def test_rank_manifests_and_merge(memfs):
    """With world_size > 1 each rank saves _manifests/{rank}.json, and _manifest.json is their merge."""
    assert manifest_name(0, 1) == "_manifest.json"
    assert manifest_name(3, 4) == "_manifests/00003.json"
    write_dataset("memory://ds", memfs, rank=0, world_size=2)
    write_dataset("memory://ds", memfs, rank=1, world_size=2)
    parts = [load_rank(memfs, "/ds", r, 2) for r in (0, 1)]
    merged = merge(parts)
    assert Manifest.load(memfs, "/ds") == merged  # rebuilt by whichever rank saved last
    assert [s["path"] for s in merged.shards] == [
        "data/part-00000-000000.parquet", "data/part-00001-000000.parquet",
        "errors/part-00000-000000.parquet", "errors/part-00001-000000.parquet",
    ]
    assert merged.totals["rows_embedded"] == 8 and merged.totals["records_read"] == 10
    assert [r["rank"] for r in merged.runs] == [0, 1]
    assert load_dataset_manifest(memfs, "/ds") == merged
    save_rank(merged, memfs, "/ds")
    assert Manifest.load(memfs, "/ds") == merged


def test_merge_refuses_mixed_models():
    """Parts made with different models cannot be merged."""
    with pytest.raises(SinkError):
        merge([Manifest.new("a", None, "float"), Manifest.new("b", None, "float")])
