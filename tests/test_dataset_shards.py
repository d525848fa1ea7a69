"""Tests for pipeline.dataset.shards: the one reader of a shard file, Parquet or Arrow IPC."""

from __future__ import annotations

from pathlib import Path

import fsspec
import orjson
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest

from pipeline.dataset.shards import META_KEY, is_arrow, open_shard, read_shard_footer

ENTRY = {"path": "data/part-00000-000000.parquet", "kind": "data", "rows": 10}


def table(rows: int = 10, meta: dict | None = ENTRY) -> pa.Table:
    t = pa.table({"id": [f"r{i}" for i in range(rows)], "n": list(range(rows))})
    return t.replace_schema_metadata({META_KEY: orjson.dumps(meta)} if meta is not None else None)


def write(fs: fsspec.AbstractFileSystem, path: str, t: pa.Table, group_rows: int = 4) -> None:
    """A shard as the writer makes one: row groups (Parquet) or record batches (Arrow IPC) of ``group_rows``."""
    with fs.open(path, "wb") as f:
        if is_arrow(path):
            with pa_ipc.new_file(f, t.schema) as writer:
                for batch in t.to_batches(max_chunksize=group_rows):
                    writer.write_batch(batch)
        else:
            pq.write_table(t, f, row_group_size=group_rows)


@pytest.fixture(params=["parquet", "arrow"])
def ext(request: pytest.FixtureRequest) -> str:
    """Each shard format."""
    return str(request.param)


@pytest.fixture(params=["local", "memory"])
def where(request: pytest.FixtureRequest, tmp_path: Path, memfs: fsspec.AbstractFileSystem) -> tuple:
    """The local disk (read through Arrow's own files) and an fsspec store (read through fs.open)."""
    if request.param == "local":
        return fsspec.filesystem("file"), str(tmp_path)
    return memfs, "/ds"


def test_one_shape_for_both_formats(ext: str, where: tuple) -> None:
    """Schema, own metadata, rows and groups come out the same way for Parquet and Arrow IPC."""
    fs, root = where
    path = f"{root}/part.{ext}"
    write(fs, path, table())
    with open_shard(fs, path) as shard:
        assert shard.schema.names == ["id", "n"]
        assert shard.meta == ENTRY
        assert shard.num_rows == 10 and shard.num_groups == 3
        assert shard.read_group(1, ["n"]).column_names == ["n"]
        assert shard.read_group(1)["id"].to_pylist() == ["r4", "r5", "r6", "r7"]
        batches = list(shard.iter_batches(["id"], batch_size=3))
        assert all(b.schema.names == ["id"] and b.num_rows <= 3 for b in batches)
        assert [v for b in batches for v in b.column(0).to_pylist()] == [f"r{i}" for i in range(10)]
        second = list(shard.iter_batches(["n"], batch_size=100, groups=[2]))
        assert [v for b in second for v in b.column(0).to_pylist()] == [8, 9]
    assert read_shard_footer(fs, path) == (10, ENTRY)


def test_a_shard_without_metadata(ext: str, tmp_path: Path) -> None:
    """A file with no ``pipeline`` metadata reads with meta None."""
    fs = fsspec.filesystem("file")
    path = f"{tmp_path}/part.{ext}"
    write(fs, path, table(meta=None))
    assert read_shard_footer(fs, path) == (10, None)


def test_missing_shard_raises_file_not_found(ext: str, where: tuple) -> None:
    """A missing shard raises FileNotFoundError, for the caller to name (missing is not always an error)."""
    fs, root = where
    with pytest.raises(FileNotFoundError):
        open_shard(fs, f"{root}/nope.{ext}")


def test_unknown_column_of_an_arrow_shard_is_a_key_error(tmp_path: Path) -> None:
    """Asking an Arrow IPC shard for a column it lacks raises KeyError naming the column."""
    fs = fsspec.filesystem("file")
    path = f"{tmp_path}/part.arrow"
    write(fs, path, table())
    with open_shard(fs, path) as shard, pytest.raises(KeyError, match="embedding"):
        shard.read_group(0, ["id", "embedding"])


def test_not_a_shard_raises_arrow_error(ext: str, tmp_path: Path) -> None:
    """A file that is not Parquet or Arrow IPC raises Arrow's error, and is closed."""
    path = tmp_path / f"part.{ext}"
    path.write_bytes(b"definitely not a shard")
    with pytest.raises(pa.ArrowException):
        open_shard(fsspec.filesystem("file"), str(path))
