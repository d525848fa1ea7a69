"""The file dataset sink: shard files, commits, crash leftovers (pipeline.dataset.writer)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

from pipeline.config import SinkConfig
from pipeline.errors import CommitFailed, SinkError
from pipeline.dataset.manifest import Manifest
from pipeline.dataset.tables import ERRORS_SCHEMA
from pipeline.dataset.writer import DatasetWriter
from pipeline.types import Chunk, EmbeddedBatch, Failure, Usage
from pipeline.embed.vectors import DTYPES, is_packed

from conftest import FakeClock
from state_helpers import read_state, state_of

SRC = "file:///in/docs.jsonl"


def vectors(n: int, etype: str = "float", dims: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    width = dims // 8 if is_packed(etype) else dims
    if etype == "float":
        return rng.standard_normal((n, width)).astype(np.float32)
    info = np.iinfo(DTYPES[etype])
    return rng.integers(info.min, info.max + 1, size=(n, width)).astype(DTYPES[etype])


def make_batch(
    seq: int,
    n: int,
    *,
    start: int = 0,
    etype: str = "float",
    dims: int = 16,
    failures: int = 0,
    meta: list[dict[str, Any]] | None = None,
    source: str = SRC,
    reused: int = 0,
) -> EmbeddedBatch:
    chunks = tuple(
        Chunk(
            id=f"d{i}",
            doc_id=f"d{i}",
            chunk_index=0,
            text=f"text {i}",
            source=source,
            location=i + 1,
            content_hash=f"h{i}",
            metadata=meta[i - start] if meta else {},
        )
        for i in range(start, start + n)
    )
    fails = tuple(
        Failure(
            id=f"bad{start}-{j}",
            doc_id=f"bad{start}-{j}",
            chunk_index=0,
            text=None if j % 2 else "bad text",
            source=source,
            location=start + n + j + 1,
            error_type="input_rejected",
            message="too long",
            status=400 if j % 2 == 0 else None,
            attempts=1,
        )
        for j in range(failures)
    )
    return EmbeddedBatch(
        seq=seq,
        chunks=chunks,
        vectors=vectors(n, etype, dims, seed=seq),
        usage=Usage(requests=1 if n else 0, retries=seq % 2, prompt_tokens=10 * n, total_tokens=10 * n),
        failures=fails,
        records=n + failures,
        marks=((source, start + n + failures),),
        reused=reused,
    )


def make_writer(
    path: str | Path,
    *,
    fs: fsspec.AbstractFileSystem | None = None,
    etype: str = "float",
    metadata_fields: list[str] | None = None,
    clock: Any = None,
    model: str = "m",
    **sink: Any,
) -> DatasetWriter:
    return DatasetWriter(
        SinkConfig(path=str(path), **sink),
        rank=0,
        model=model,
        input_type="search_document",
        embedding_type=etype,
        metadata_fields=metadata_fields or [],
        run_started_at="2024-01-01T00:00:00.000Z",
        fs=fs,
        clock=clock or FakeClock(),
    )


def shard_meta(path: Path) -> dict[str, Any]:
    if path.suffix == ".arrow":
        with pa.memory_map(str(path)) as src:
            meta = pa.ipc.open_file(src).schema.metadata
    else:
        meta = pq.read_schema(path).metadata
    return json.loads(meta[b"pipeline"])


def data_paths(m: Manifest, kind: str = "data") -> list[str]:
    return [s["path"] for s in m.shards if s["kind"] == kind]


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("etype", "value_type", "width"),
    [
        ("float", pa.float32(), 16),
        ("int8", pa.int8(), 16),
        ("uint8", pa.uint8(), 16),
        ("binary", pa.int8(), 2),
        ("ubinary", pa.uint8(), 2),
    ],
)
def test_data_schema_per_embedding_type(tmp_path, etype, value_type, width):
    """Each embedding type gets its fixed_size_list value type and width; dimensions unpack ×8."""
    w = make_writer(tmp_path, etype=etype)
    batch = make_batch(0, 5, etype=etype)
    w.write(batch)
    w.close("completed")
    table = pq.read_table(tmp_path / "data/part-00000-000000.parquet")
    assert table.column_names == ["id", "doc_id", "chunk_index", "text", "embedding", "source", "content_hash"]
    schema = table.schema
    assert pa.types.is_fixed_size_list(schema.field("embedding").type)
    assert schema.field("embedding").type.value_type == value_type
    assert schema.field("embedding").type.list_size == width
    assert schema.field("chunk_index").type == pa.int32()
    for name in ("id", "doc_id", "text", "source", "content_hash"):
        assert schema.field(name).type == pa.string()
    stored = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(5, width)
    np.testing.assert_array_equal(stored, batch.vectors)
    assert w.manifest.dimensions == 16
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(5)]


def test_include_text_false_drops_column(tmp_path):
    """include_text: false leaves the text column out of data shards (errors keep theirs)."""
    w = make_writer(tmp_path, include_text=False)
    w.write(make_batch(0, 3, failures=1))
    w.close("completed")
    assert "text" not in pq.read_schema(tmp_path / "data/part-00000-000000.parquet").names
    assert pq.read_schema(tmp_path / "errors/part-00000-000000.parquet").names == ERRORS_SCHEMA.names


def test_metadata_columns(tmp_path):
    """Metadata fields follow the base columns with inferred types; dicts/lists become JSON text."""
    meta = [
        {"lang": "en", "year": 2020, "score": 0.5, "tags": ["a", "b"], "extra": {"k": 1}},
        {"lang": "fr", "year": None, "score": 1.5, "tags": [], "extra": {"k": 2}},
        {"lang": None, "score": 2.0},
    ]
    fields = ["lang", "year", "score", "tags", "extra"]
    w = make_writer(tmp_path, metadata_fields=fields)
    w.write(make_batch(0, 3, meta=meta))
    w.close("completed")
    table = pq.read_table(tmp_path / "data/part-00000-000000.parquet")
    assert table.column_names[-5:] == fields
    assert table.schema.field("lang").type == pa.string()
    assert table.schema.field("year").type == pa.int64()
    assert table.schema.field("score").type == pa.float64()
    assert table.column("year").to_pylist() == [2020, None, None]
    assert table.column("tags").to_pylist() == ['["a","b"]', "[]", None]
    assert [orjson.loads(x) if x else None for x in table.column("extra").to_pylist()] == [{"k": 1}, {"k": 2}, None]
    assert {"name": "year", "type": "int64"} in w.manifest.schema


def test_metadata_type_conflict_turns_column_to_string(tmp_path):
    """A metadata field whose type changes closes the shard and is stored as string from then on."""
    w = make_writer(tmp_path, metadata_fields=["n"])
    w.write(make_batch(0, 2, meta=[{"n": 1}, {"n": 2}]))
    committed = w.write(make_batch(1, 2, start=2, meta=[{"n": "x"}, {"n": 3}]))
    assert [e["path"] for e in committed] == ["data/part-00000-000000.parquet"]
    w.write(make_batch(2, 1, start=4, meta=[{"n": 4}]))
    w.close("completed")
    first = pq.read_table(tmp_path / "data/part-00000-000000.parquet")
    second = pq.read_table(tmp_path / "data/part-00000-000001.parquet")
    assert first.schema.field("n").type == pa.int64()
    assert second.column("n").to_pylist() == ["x", "3", "4"]
    assert {"name": "n", "type": "string"} in w.manifest.schema


def test_metadata_int_and_float_widen_to_double(tmp_path):
    """Integers then floats in one metadata field widen the column to double, not string."""
    w = make_writer(tmp_path, metadata_fields=["x"])
    w.write(make_batch(0, 2, meta=[{"x": 1}, {"x": 2.5}]))
    w.write(make_batch(1, 1, start=2, meta=[{"x": 3}]))
    w.close("completed")
    table = pq.read_table(tmp_path / "data/part-00000-000000.parquet")
    assert table.column("x").to_pylist() == [1.0, 2.5, 3.0]


def test_metadata_field_clashing_with_column_refused(tmp_path):
    """A metadata field named like a dataset column is refused up front."""
    with pytest.raises(SinkError, match="'source'"):
        make_writer(tmp_path, metadata_fields=["source"])


# --------------------------------------------------------------------------- shards and commits


def test_rollover_keeps_whole_batches_within_shard_rows(tmp_path):
    """Shards never exceed shard_rows and hold whole batches; write() returns what it committed."""
    w = make_writer(tmp_path, shard_rows=100)
    committed = []
    for seq in range(5):
        committed += w.write(make_batch(seq, 40, start=40 * seq))
    assert [e["rows"] for e in committed] == [80, 80]
    w.close("completed")
    rows = [s["rows"] for s in w.manifest.shards]
    assert rows == [80, 80, 40]
    for s in w.manifest.shards:
        assert pq.read_metadata(tmp_path / s["path"]).num_rows == s["rows"]
    assert data_paths(w.manifest) == [f"data/part-00000-{i:06d}.parquet" for i in range(3)]


def test_full_shard_commits_immediately(tmp_path):
    """A write that fills the shard exactly commits it in the same call."""
    w = make_writer(tmp_path, shard_rows=50)
    assert w.write(make_batch(0, 25)) == []
    entries = w.write(make_batch(1, 25, start=25))
    assert [e["rows"] for e in entries] == [50]
    assert (tmp_path / entries[0]["path"]).exists()


def test_shard_rows_below_batch_size_means_one_batch_per_shard(tmp_path):
    """A batch larger than shard_rows (the batcher never makes one) is its own shard, never split."""
    w = make_writer(tmp_path, shard_rows=10)
    out = w.write(make_batch(0, 30)) + w.write(make_batch(1, 30, start=30))
    assert [e["rows"] for e in out] == [30, 30]


def test_commit_if_due_uses_the_injected_clock(tmp_path):
    """commit_if_due commits once the open shard is shard_seconds old, not before."""
    clock = FakeClock()
    w = make_writer(tmp_path, clock=clock, shard_seconds=60)
    assert w.commit_if_due() == []
    w.write(make_batch(0, 3))
    clock.now += 59.9
    assert w.commit_if_due() == []
    clock.now += 0.1
    entries = w.commit_if_due()
    assert [e["path"] for e in entries] == ["data/part-00000-000000.parquet"]
    clock.now += 1000
    assert w.commit_if_due() == []  # nothing open


def test_commit_due_says_when_commit_if_due_would_commit(tmp_path):
    """commit_due is true exactly when the open shard is shard_seconds old."""
    clock = FakeClock()
    w = make_writer(tmp_path, clock=clock, shard_seconds=60)
    assert not w.commit_due()  # nothing open
    w.write(make_batch(0, 3))
    clock.now += 59.9
    assert not w.commit_due()
    clock.now += 0.1
    assert w.commit_due()
    w.commit_if_due()
    assert not w.commit_due()


def test_write_many_equals_write_each_then_commit_if_due(tmp_path):
    """write_many writes the batches in order, rolls shards as write does, then commits if due."""
    clock = FakeClock()
    w = make_writer(tmp_path, clock=clock, shard_rows=50, shard_seconds=60)
    out = w.write_many([make_batch(0, 30), make_batch(1, 30, start=30)])
    assert [e["rows"] for e in out] == [30]  # the second batch did not fit: the first shard rolled
    clock.now += 60
    out = w.write_many([make_batch(2, 10, start=60)])
    assert [e["rows"] for e in out] == [40]  # then the open shard was due
    assert w.manifest.totals["rows_embedded"] == 70


def test_errors_shard_committed_with_data_shard(tmp_path):
    """Failures go to errors/ and are committed in the same commit as the data, with marks and progress."""
    w = make_writer(tmp_path)
    w.write(make_batch(0, 4, failures=2))
    w.write(make_batch(1, 4, start=10, failures=1))
    entries = w.commit()
    assert [(e["kind"], e["rows"]) for e in entries] == [("data", 8), ("errors", 3)]
    data, errors = entries
    assert state_of(w.manifest).marks == {data["path"]: {SRC: 15}, errors["path"]: {}}
    assert data["records"] == 11 and errors["records"] == 0
    assert data["requests"] == 2 and errors["requests"] == 0
    assert state_of(w.manifest).progress == {SRC: 15}
    table = pq.read_table(tmp_path / errors["path"])
    assert table.schema.remove_metadata() == ERRORS_SCHEMA
    assert table.column("status").to_pylist() == [400, None, 400]
    assert table.column("text").to_pylist() == ["bad text", None, "bad text"]
    saved = Manifest.load(fsspec.filesystem("file"), str(tmp_path))
    assert saved is not None and read_state(tmp_path).progress == {SRC: 15}
    assert [s["path"] for s in saved.shards] == [e["path"] for e in entries]


def test_errors_only_commit_carries_the_accounting(tmp_path):
    """A commit without data rows puts records, usage and marks on the errors shard."""
    w = make_writer(tmp_path)
    entries = w.write(make_batch(0, 0, failures=3)) + w.commit()
    assert [(e["kind"], e["rows"], e["records"]) for e in entries] == [("errors", 3, 3)]
    assert state_of(w.manifest).marks[entries[0]["path"]] == {SRC: 3}
    assert w.manifest.totals["records_read"] == 3


def test_errors_shard_rolls_at_shard_rows(tmp_path):
    """An errors shard that would exceed shard_rows forces a commit first."""
    w = make_writer(tmp_path, shard_rows=5)
    first = w.write(make_batch(0, 1, failures=3))
    second = w.write(make_batch(1, 1, start=10, failures=3))
    assert first == []
    assert [(e["kind"], e["rows"]) for e in second] == [("data", 1), ("errors", 3)]


def test_marks_only_batch_advances_progress(tmp_path):
    """A batch with no rows (e.g. an empty file) still moves progress at the next commit."""
    w = make_writer(tmp_path)
    empty = EmbeddedBatch(seq=0, chunks=(), vectors=np.empty((0, 0), np.float32), usage=Usage(),
                          marks=(("file:///in/empty.jsonl", 0), ("file:///in/blank.jsonl", 7)))
    w.write(empty)
    assert w.commit() == []
    assert state_of(w.manifest).progress == {"file:///in/empty.jsonl": 0, "file:///in/blank.jsonl": 7}
    assert w.manifest.shards == []


def test_shard_metadata_equals_manifest_entry(tmp_path):
    """Every shard file carries its manifest entry as JSON under the 'pipeline' schema key."""
    w = make_writer(tmp_path, shard_rows=10)
    for seq in range(3):
        w.write(make_batch(seq, 6, start=10 * seq, failures=seq, reused=2))
    w.close("completed")
    assert len(w.manifest.shards) == 5
    for entry in w.manifest.shards:
        # the manifest adds the file's own size, which the file cannot hold
        assert shard_meta(tmp_path / entry["path"]) == {k: v for k, v in entry.items() if k != "bytes"}
        assert entry["bytes"] == (tmp_path / entry["path"]).stat().st_size
        assert set(entry) >= {"path", "kind", "rows", "requests", "prompt_tokens", "total_tokens",
                              "retries", "started_at", "finished_at", "records", "rows_reused"}


def test_totals_add_up(tmp_path):
    """Manifest totals are the sums of the shard entries and match the batches written."""
    w = make_writer(tmp_path, shard_rows=20)
    batches = [make_batch(seq, 7, start=10 * seq, failures=seq % 2, reused=1) for seq in range(6)]
    for b in batches:
        w.write(b)
    w.close("completed")
    t = w.manifest.totals
    assert t["rows_embedded"] == sum(len(b.chunks) for b in batches) == 42
    assert t["rows_failed"] == sum(len(b.failures) for b in batches) == 3
    assert t["records_read"] == sum(b.records for b in batches)
    assert t["rows_reused"] == 6
    assert t["requests"] == 6
    assert t["retries"] == sum(b.usage.retries for b in batches)
    assert t["prompt_tokens"] == t["total_tokens"] == 420
    on_disk = json.loads((tmp_path / "_manifest.json").read_text())
    assert on_disk["totals"] == t
    data = ds.dataset(tmp_path / "data", format="parquet")
    assert data.count_rows() == t["rows_embedded"]


def test_compression_setting_applies(tmp_path):
    """sink.compression picks the Parquet codec; 'none' writes uncompressed."""
    for codec, expected in (("zstd", "ZSTD"), ("none", "UNCOMPRESSED"), ("snappy", "SNAPPY")):
        root = tmp_path / codec
        w = make_writer(root, compression=codec)
        w.write(make_batch(0, 3))
        w.close("completed")
        md = pq.read_metadata(root / "data/part-00000-000000.parquet")
        assert md.row_group(0).column(0).compression == expected


def test_rows_reach_the_file_in_large_row_groups(tmp_path):
    """Small batches are gathered into row groups of about 8k rows, not one per batch."""
    w = make_writer(tmp_path, shard_rows=100_000)
    for seq in range(100):
        w.write(make_batch(seq, 96, start=96 * seq, dims=8))
    w.close("completed")
    md = pq.read_metadata(tmp_path / "data/part-00000-000000.parquet")
    assert md.num_rows == 9600
    assert md.num_row_groups == 2


# --------------------------------------------------------------------------- re-runs and crashes


def test_reopen_continues_seq_and_deletes_stray_tmp(tmp_path):
    """A second writer appends after the highest committed seq and removes this rank's temp files."""
    w = make_writer(tmp_path)
    w.write(make_batch(0, 3, failures=1))
    w.close("completed")
    stray = [tmp_path / "data/.part-00000-000007.parquet.tmp", tmp_path / "errors/.part-00000-000001.parquet.tmp"]
    other_rank = tmp_path / "data/.part-00001-000000.parquet.tmp"
    for p in [*stray, other_rank]:
        p.write_bytes(b"junk")
    w2 = make_writer(tmp_path)
    assert not any(p.exists() for p in stray)
    assert other_rank.exists()
    w2.write(make_batch(0, 2, start=100))
    w2.close("completed")
    assert data_paths(w2.manifest) == ["data/part-00000-000000.parquet", "data/part-00000-000001.parquet"]
    assert data_paths(w2.manifest, "errors") == ["errors/part-00000-000000.parquet"]
    assert [r["status"] for r in w2.manifest.runs] == ["completed", "completed"]


def test_crash_leaves_only_committed_shards(tmp_path):
    """Writer dropped mid-shard (and a shard published but never listed): a new writer sees only committed rows."""
    w = make_writer(tmp_path)
    w.write(make_batch(0, 5))
    w.commit()
    w.write(make_batch(1, 5, start=5, failures=2))  # open, never committed
    assert (tmp_path / "data/.part-00000-000001.parquet.tmp").exists()
    # a crash between publishing and saving the manifest leaves a shard beyond it
    (tmp_path / "data/part-00000-000002.parquet").write_bytes(b"half of a story")
    del w  # the process dies: no commit, no close

    w2 = make_writer(tmp_path)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["part-00000-000000.parquet"]
    assert list((tmp_path / "errors").iterdir()) == []
    assert data_paths(w2.manifest) == ["data/part-00000-000000.parquet"]
    assert state_of(w2.manifest).progress == {SRC: 5}
    assert [r["status"] for r in w2.manifest.runs] == ["unfinished", "running"]
    assert ds.dataset(tmp_path / "data", format="parquet").count_rows() == 5


def test_shards_without_manifest_are_refused(tmp_path):
    """A directory with this rank's shard files but no manifest is not written into."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data/part-00000-000000.parquet").write_bytes(b"x")
    with pytest.raises(SinkError, match="no manifest"):
        make_writer(tmp_path)


def test_other_model_is_refused(tmp_path):
    """Re-opening a dataset with another model raises SinkError naming both."""
    make_writer(tmp_path).close("completed")
    with pytest.raises(SinkError, match="model='m'.*refusing to mix.*model='other'"):
        make_writer(tmp_path, model="other")


def test_dimension_change_is_refused(tmp_path):
    """Vectors of other dimensions than the dataset's raise SinkError."""
    w = make_writer(tmp_path)
    w.write(make_batch(0, 2, dims=16))
    with pytest.raises(SinkError, match="16-dimensional"):
        w.write(make_batch(1, 2, start=2, dims=32))


def test_close_records_the_run(tmp_path):
    """close() commits and records the run's start, end and status; later calls are refused."""
    w = make_writer(tmp_path)
    w.write(make_batch(0, 2))
    w.close("interrupted")
    run = w.manifest.runs[-1]
    assert run["started_at"] == "2024-01-01T00:00:00.000Z"
    assert run["status"] == "interrupted" and run["finished_at"]
    assert w.manifest.totals["rows_embedded"] == 2
    with pytest.raises(CommitFailed, match="closed"):
        w.write(make_batch(1, 1))


def test_failed_publish_stops_the_writer(tmp_path, monkeypatch):
    """If publishing a shard fails, nothing is listed and later writes are refused."""
    w = make_writer(tmp_path)
    w.write(make_batch(0, 2))

    def broken(*_a: Any, **_k: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(CommitFailed, match="disk full"):
        w.commit()
    monkeypatch.undo()
    with pytest.raises(CommitFailed, match="earlier commit"):
        w.write(make_batch(1, 1, start=2))
    w.close("completed")
    assert w.manifest.shards == [] and w.manifest.runs[-1]["status"] == "failed"
    assert not list((tmp_path / "data").iterdir())


# --------------------------------------------------------------------------- formats and filesystems


def test_arrow_format_round_trip(tmp_path):
    """format: arrow writes IPC files with the metadata in their schema, compressed with zstd."""
    w = make_writer(tmp_path, format="arrow", shard_rows=10)
    batches = [make_batch(seq, 6, start=10 * seq, failures=1) for seq in range(2)]
    for b in batches:
        w.write(b)
    w.close("completed")
    assert data_paths(w.manifest) == ["data/part-00000-000000.arrow", "data/part-00000-000001.arrow"]
    for entry in w.manifest.shards:
        assert shard_meta(tmp_path / entry["path"]) == {k: v for k, v in entry.items() if k != "bytes"}
    with pa.memory_map(str(tmp_path / "data/part-00000-000000.arrow")) as src:
        table = pa.ipc.open_file(src).read_all()
    np.testing.assert_array_equal(
        table.column("embedding").combine_chunks().flatten().to_numpy().reshape(6, 16), batches[0].vectors
    )
    assert not list(tmp_path.glob("**/.*.tmp"))
    dataset = ds.dataset(tmp_path / "data", format="arrow")
    assert dataset.count_rows() == 12


def test_memory_filesystem(memfs):
    """On a non-local filesystem shards are uploaded whole and the manifest is one PUT."""
    w = make_writer("memory://ds", fs=memfs, shard_rows=10)
    for seq in range(3):
        w.write(make_batch(seq, 6, start=10 * seq, failures=1))
    # open shards live in local temp files, never half-uploaded; the resume state is listed by the manifest
    listed = {"/ds/" + f["path"] for f in w.manifest.state_files}
    assert {p for p in memfs.find("/ds/_state")} == listed and listed
    assert sorted(p for p in memfs.find("/ds") if "/_state/" not in p) == [
        "/ds/_manifest.json",
        "/ds/data/part-00000-000000.parquet",
        "/ds/data/part-00000-000001.parquet",
        "/ds/errors/part-00000-000000.parquet",
        "/ds/errors/part-00000-000001.parquet",
    ]
    w.close("completed")
    loaded = Manifest.load(memfs, "/ds")
    assert loaded is not None and loaded.totals == w.manifest.totals
    with memfs.open("/ds/data/part-00000-000002.parquet", "rb") as f:
        table = pq.read_table(f)
    assert table.num_rows == 6
    assert json.loads(table.schema.metadata[b"pipeline"]) == {k: v for k, v in w.manifest.shards[-2].items() if k != "bytes"}
    w2 = make_writer("memory://ds", fs=memfs)
    w2.write(make_batch(9, 1, start=90))
    w2.close("completed")
    assert data_paths(w2.manifest)[-1] == "data/part-00000-000003.parquet"


def test_url_opens_filesystem_from_config(memfs):
    """Without an injected fs, the writer opens sink.path with fsspec."""
    w = DatasetWriter(
        SinkConfig(path="memory://viaurl"),
        rank=3,
        model="m",
        input_type=None,
        embedding_type="float",
        metadata_fields=[],
        run_started_at="t0",
    )
    w.write(make_batch(0, 1))
    w.close("completed")
    assert memfs.exists("/viaurl/data/part-00003-000000.parquet")


def test_pyarrow_dataset_reads_data_dir_while_a_shard_is_open(tmp_path):
    """pyarrow.dataset over data/ reads the committed shards and skips the open temp file."""
    w = make_writer(tmp_path, metadata_fields=["lang"], shard_rows=4)
    for seq in range(3):
        w.write(make_batch(seq, 3, start=10 * seq, meta=[{"lang": "en"}] * 3))
    assert (tmp_path / "data/.part-00000-000002.parquet.tmp").exists()
    dataset = ds.dataset(tmp_path / "data", format="parquet")
    table = dataset.to_table()
    assert table.num_rows == 6
    assert table.schema.field("embedding").type.list_size == 16
    assert set(table.column("lang").to_pylist()) == {"en"}
