"""pipeline inspect's view: a dataset as its files say, checked against its manifest."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest

from pipeline.config import SinkConfig
from pipeline.dataset.inspect import summarize
from pipeline.dataset.writer import DatasetWriter
from pipeline.errors import SinkError
from pipeline.types import Chunk, EmbeddedBatch, Usage

from test_dataset_manifest import write_dataset


@pytest.fixture
def local():
    return fsspec.filesystem("file")


def test_summarize_checks_every_shard(tmp_path):
    """summarize reports shards, totals and runs, and that each listed file has its listed rows."""
    write_dataset(str(tmp_path))
    summary = summarize(fsspec.filesystem("file"), str(tmp_path))
    assert summary["ok"] and summary["problems"] == []
    assert summary["totals"]["rows_embedded"] == 4 and summary["totals"]["rows_failed"] == 1
    assert [(s["kind"], s["file_rows"], s["metadata_matches"]) for s in summary["shards"]] == [
        ("data", 4, True), ("errors", 1, True),
    ]
    assert summary["dimensions"] == 8 and summary["runs"][0]["status"] == "completed"


def test_summarize_reports_missing_and_miscounted_shards(tmp_path, local):
    """A listed shard that is gone, or whose row count differs, is a problem."""
    w = write_dataset(str(tmp_path))
    (tmp_path / "errors/part-00000-000000.parquet").unlink()
    m = w.manifest
    m.shards[0]["rows"] = 99
    m.save(local, str(tmp_path))
    summary = summarize(local, str(tmp_path))
    assert not summary["ok"]
    assert summary["problems"] == [
        "data/part-00000-000000.parquet: 4 rows in the file, 99 listed",
        "errors/part-00000-000000.parquet: listed in the manifest but missing",
    ]


def test_summarize_arrow_dataset_on_memory_fs(memfs):
    """summarize reads Arrow IPC footers on an object store too."""
    w = DatasetWriter(SinkConfig(path="memory://a", format="arrow"), rank=0, model="m", input_type=None,
                      embedding_type="float", metadata_fields=[], run_started_at="t0", fs=memfs)
    w.write(EmbeddedBatch(0, (Chunk("a", "a", 0, "t", "s", 1, "h"),), np.ones((1, 8), np.float32), Usage(1, 0, 3, 3)))
    w.close("completed")
    summary = summarize(memfs, "/a")
    assert summary["ok"] and summary["shards"][0]["file_rows"] == 1


def test_summarize_without_dataset(tmp_path, local):
    """summarize of a directory without a manifest raises SinkError."""
    with pytest.raises(SinkError, match="no dataset"):
        summarize(local, str(tmp_path))
