"""Tests for pipeline.dataset.reuse_index: the content-hash index of an earlier dataset."""

from __future__ import annotations

import gc
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipeline.dataset import reuse_index as reuse

from pipeline.dataset import shard_writer as sinks
from pipeline.stages.chunk import make_hasher
from pipeline.config import SinkConfig
from pipeline.errors import SinkError
from pipeline.dataset.reuse_index import ReuseIndex, count_reusable, hash_prefixes
from pipeline.dataset.writer import DatasetWriter
from pipeline.types import Chunk, EmbeddedBatch, Usage
from pipeline.embed.vectors import DTYPES, EMBEDDING_TYPES, quantize

MODEL = "m"
INPUT_TYPE = "search_document"
DIMS = 16
SRC = "file:///in/docs.jsonl"


@pytest.fixture(autouse=True)
def small_sizes(monkeypatch):
    """Tiny blocks, partitions, buffers and row groups, so small datasets exercise every path."""
    monkeypatch.setattr(reuse, "BLOCK", 4)
    monkeypatch.setattr(reuse, "PARTITION_ENTRIES", 16)
    monkeypatch.setattr(reuse, "FLUSH_ENTRIES", 32)
    monkeypatch.setattr(reuse, "SCAN_ROWS", 8)
    monkeypatch.setattr(reuse, "READ_ROWS", 3)
    monkeypatch.setattr(reuse, "PROBE_ROWS", 50)
    monkeypatch.setattr(reuse, "CACHE_ROW_GROUPS", 2)
    monkeypatch.setattr(sinks, "ROW_GROUP_ROWS", 8)


def fake_vectors(texts: list[str], etype: str) -> np.ndarray:
    """Deterministic vectors: the same text always gets the same vector."""
    floats = np.array(
        [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIMS) for t in texts], dtype=np.float32
    ).reshape(len(texts), DIMS)
    return quantize(floats, etype)


def make_chunks(texts: list[str], etype: str = "float", model: str = MODEL, start: int = 0) -> tuple[Chunk, ...]:
    hasher = make_hasher(model, INPUT_TYPE, etype)
    return tuple(
        Chunk(
            id=f"d{start + i}",
            doc_id=f"d{start + i}",
            chunk_index=0,
            text=t,
            source=SRC,
            location=start + i + 1,
            content_hash=hasher(t),
        )
        for i, t in enumerate(texts)
    )


def write_dataset(
    path: str | Path,
    texts: list[str],
    *,
    etype: str = "float",
    fmt: str = "parquet",
    model: str = MODEL,
    shard_rows: int = 50,
    batch_rows: int = 10,
    fs: Any = None,
) -> tuple[Chunk, ...]:
    """An earlier dataset holding ``texts``, over several shards and row groups."""
    writer = DatasetWriter(
        SinkConfig(path=str(path), shard_rows=shard_rows, format=fmt),
        rank=0,
        model=model,
        input_type=INPUT_TYPE,
        embedding_type=etype,
        metadata_fields=[],
        run_started_at="2024-01-01T00:00:00.000Z",
        fs=fs,
    )
    chunks = make_chunks(texts, etype, model)
    for seq, i in enumerate(range(0, len(chunks), batch_rows)):
        part = chunks[i : i + batch_rows]
        writer.write(
            EmbeddedBatch(
                seq=seq,
                chunks=part,
                vectors=fake_vectors([c.text for c in part], etype),
                usage=Usage(requests=1, prompt_tokens=len(part), total_tokens=len(part)),
                records=len(part),
                marks=((SRC, i + len(part)),),
            )
        )
    writer.close("completed")
    return chunks


def open_index(path: str | Path, etype: str = "float", **kwargs: Any) -> ReuseIndex:
    return ReuseIndex.open(
        str(path), {}, model=MODEL, input_type=INPUT_TYPE, embedding_type=etype, **kwargs
    )


def corpus(n: int, tag: str = "") -> list[str]:
    return [f"document number {i}{tag}" for i in range(n)]


# --------------------------------------------------------------------------- hashing


def test_hash_prefixes_are_the_first_16_hex_digits():
    """hash_prefixes reads each hash's first 64 bits as Python's int(h[:16], 16) does; bad ones are invalid."""
    hasher = make_hasher(MODEL, INPUT_TYPE, "float")
    hashes = [hasher(t) for t in corpus(50)]
    array = pa.array(hashes + ["", "zz" * 32, None, "ab" * 31, hashes[0].upper()], pa.string())
    keys, valid = hash_prefixes(array.slice(0))
    assert [int(k) for k in keys[:50]] == [int(h[:16], 16) for h in hashes]
    assert valid.tolist() == [True] * 50 + [False, False, False, False, True]
    assert keys[54] == keys[0]
    sliced_keys, sliced_valid = hash_prefixes(array.slice(3, 10))
    assert sliced_keys.tolist() == keys[3:13].tolist() and sliced_valid.all()


# --------------------------------------------------------------------------- lookups


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
@pytest.mark.parametrize("etype", EMBEDDING_TYPES)
def test_lookup_returns_the_stored_vectors(tmp_path, etype, fmt):
    """Every hash of the earlier dataset is found, with its exact vector, for each type and format."""
    chunks = write_dataset(tmp_path / "old", corpus(230), etype=etype, fmt=fmt)
    with open_index(tmp_path / "old", etype) as index:
        assert index.rows == 230 and index.distinct == 230
        assert len(index._shards) == 5 and all(len(s.group_starts) >= 3 for s in index._shards)
        order = np.random.default_rng(1).permutation(230)  # out of file order, across shards
        hashes = [chunks[i].content_hash for i in order]
        found, got = index.lookup(hashes)
        assert found.all()
        assert got.dtype == DTYPES[etype]
        np.testing.assert_array_equal(got, fake_vectors([chunks[i].text for i in order], etype))


def test_absent_hashes_are_not_found(tmp_path):
    """Hashes not in the dataset, malformed ones and a 64-bit prefix twin are not found; found ones keep order."""
    chunks = write_dataset(tmp_path / "old", corpus(100))
    other = make_chunks(corpus(20, " changed"))
    twin = chunks[7].content_hash[:16] + "0" * 48  # same prefix, another hash
    hashes = [chunks[3].content_hash, other[0].content_hash, twin, "", "not a hash", chunks[99].content_hash]
    hashes += [c.content_hash for c in other[1:]]
    with open_index(tmp_path / "old") as index:
        found, got = index.lookup(hashes)
        assert found.tolist() == [True, False, False, False, False, True] + [False] * 19
        np.testing.assert_array_equal(got, fake_vectors([chunks[3].text, chunks[99].text], "float"))
        assert index.contains([twin]).tolist() == [True]  # the prefix alone matches: lookup confirms
        assert index.lookup([])[0].shape == (0,)
        none_found, none = index.lookup([c.content_hash for c in other])
        assert not none_found.any() and none.shape == (0, DIMS)


def test_hashes_below_and_above_every_key(tmp_path):
    """Hashes sorting before the first or after the last key are absent, the extreme keys present."""
    chunks = write_dataset(tmp_path / "old", corpus(60))
    ordered = sorted(c.content_hash for c in chunks)
    with open_index(tmp_path / "old") as index:
        found, _ = index.lookup(["0" * 64, "f" * 64, ordered[0], ordered[-1]])
        assert found.tolist() == [ordered[0] == "0" * 64, ordered[-1] == "f" * 64, True, True]


def test_duplicate_texts_share_one_entry(tmp_path):
    """A text stored in several rows is indexed once and found."""
    texts = corpus(30) * 3
    chunks = write_dataset(tmp_path / "old", texts)
    with open_index(tmp_path / "old") as index:
        assert index.rows == 90 and index.distinct == 30
        found, got = index.lookup([c.content_hash for c in chunks[60:]])
        assert found.all()
        np.testing.assert_array_equal(got, fake_vectors(texts[60:], "float"))


def test_default_sizes_and_an_fsspec_url(memfs, monkeypatch):
    """With the production block and partition sizes, a memory:// dataset is indexed and read."""
    monkeypatch.undo()  # back to the module's own sizes
    monkeypatch.setattr(sinks, "ROW_GROUP_ROWS", 8)
    assert reuse.BLOCK == 512
    chunks = write_dataset("memory://old", corpus(700), fs=memfs, shard_rows=300, batch_rows=50)
    with ReuseIndex.open("memory://old", {}, model=MODEL, input_type=INPUT_TYPE, embedding_type="float") as index:
        assert index.rows == 700 and len(index._fence) == 2
        found, got = index.lookup([c.content_hash for c in chunks[::-1]])
        assert found.all()
        np.testing.assert_array_equal(got, fake_vectors([c.text for c in chunks[::-1]], "float"))


def test_empty_dataset_finds_nothing(tmp_path):
    """A dataset whose runs wrote no data rows is accepted and finds nothing."""
    write_dataset(tmp_path / "old", [])
    with open_index(tmp_path / "old") as index:
        assert index.rows == 0
        found, got = index.lookup([make_chunks(["a"])[0].content_hash])
        assert not found.any() and len(got) == 0


def test_count_reusable(tmp_path):
    """count_reusable counts the hashes the index holds, across its internal batches."""
    chunks = write_dataset(tmp_path / "old", corpus(40))
    other = make_chunks(corpus(15, " new"))
    with open_index(tmp_path / "old") as index:
        hashes = (c.content_hash for c in chunks[:25] + other)
        assert count_reusable(index, hashes, batch_rows=7) == 25


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model": "other-model"}, "model='other-model'"),
        ({"input_type": "search_query"}, "input_type='search_query'"),
        ({"embedding_type": "int8"}, "embedding_type='int8'"),
    ],
)
def test_another_model_or_type_is_refused(tmp_path, change, named):
    """A dataset made with another model, input_type or embedding_type is refused: nothing could be reused."""
    write_dataset(tmp_path / "old", corpus(10))
    args = {"model": MODEL, "input_type": INPUT_TYPE, "embedding_type": "float", **change}
    with pytest.raises(SinkError) as err:
        ReuseIndex.open(str(tmp_path / "old"), {}, **args)
    message = str(err.value)
    assert "\n" not in message and "run.reuse_from" in message
    assert named in message and "model='m'" in message and "none of its vectors could be reused" in message


def test_other_dimensions_are_refused(tmp_path):
    """Configured dimensions that differ from the dataset's are refused; equal ones are accepted."""
    write_dataset(tmp_path / "old", corpus(10))
    with pytest.raises(SinkError, match="16-dimensional vectors, this run asks for 32"):
        open_index(tmp_path / "old", dimensions=32)
    open_index(tmp_path / "old", dimensions=16).close()


@pytest.mark.parametrize("kind", ["missing", "empty", "not a dataset"])
def test_no_dataset_is_refused(tmp_path, kind):
    """A missing path, an empty directory or a directory of other files is refused in one line."""
    path = tmp_path / "old"
    if kind != "missing":
        path.mkdir()
    if kind == "not a dataset":
        (path / "notes.txt").write_text("hello")
    with pytest.raises(SinkError, match=r"run.reuse_from .*old: no dataset there \(_manifest.json not found\)$"):
        open_index(path)


def test_missing_shard_is_refused(tmp_path):
    """A shard the manifest lists but that is gone is named in the error; no temp files stay."""
    write_dataset(tmp_path / "old", corpus(120))
    os.remove(tmp_path / "old" / "data" / "part-00000-000001.parquet")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(SinkError, match="shard data/part-00000-000001.parquet is listed in _manifest.json but missing"):
        open_index(tmp_path / "old", tmp_dir=str(scratch))
    assert list(scratch.iterdir()) == []


def test_shard_gone_after_opening_is_embedded_again(tmp_path):
    """A shard deleted after the index was built is skipped at fetch time: its rows count as not found."""
    chunks = write_dataset(tmp_path / "old", corpus(100))
    with open_index(tmp_path / "old") as index:
        os.remove(tmp_path / "old" / "data" / "part-00000-000001.parquet")  # rows 50..99
        found, got = index.lookup([chunks[10].content_hash, chunks[60].content_hash, chunks[20].content_hash])
        assert found.tolist() == [True, False, True]
        np.testing.assert_array_equal(got, fake_vectors([chunks[10].text, chunks[20].text], "float"))


# --------------------------------------------------------------------------- lifecycle and memory


def test_close_removes_temp_files(tmp_path):
    """close() (and leaving the with block) removes the index files; a closed index refuses lookups."""
    chunks = write_dataset(tmp_path / "old", corpus(50))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    index = open_index(tmp_path / "old", tmp_dir=str(scratch))
    (directory,) = scratch.iterdir()
    assert {p.name for p in directory.iterdir()} == {"keys.u64", "rows.bin"}  # the partitions are gone
    index.lookup([chunks[0].content_hash])
    index.close()
    index.close()
    assert list(scratch.iterdir()) == []
    with pytest.raises(SinkError, match="closed"):
        index.lookup([chunks[0].content_hash])
    with open_index(tmp_path / "old", tmp_dir=str(scratch)):
        assert len(list(scratch.iterdir())) == 1
    assert list(scratch.iterdir()) == []


def test_memory_stays_bounded(tmp_path):
    """Keys and rows stay on disk; RAM holds a fence per BLOCK keys and a bounded row-group cache."""
    chunks = write_dataset(tmp_path / "old", corpus(400), shard_rows=100, batch_rows=20)
    with open_index(tmp_path / "old") as index:
        assert os.path.getsize(os.path.join(index._directory, "keys.u64")) == 8 * index.distinct
        assert len(index._fence) == -(-index.distinct // reuse.BLOCK)
        resident = index._fence.nbytes + index._shard_starts.nbytes + sum(s.group_starts.nbytes for s in index._shards)
        assert resident < 8 * index.rows  # no per-hash Python objects anywhere
        assert not any(isinstance(v, (set, dict)) and len(v) > 50 for v in vars(index).values())
        for i in range(0, 400, 25):  # every row group of every shard, in file order
            found, _ = index.lookup([c.content_hash for c in chunks[i : i + 25]])
            assert found.all()
            assert len(index._groups) <= reuse.CACHE_ROW_GROUPS
            assert len(index._readers) <= reuse.CACHE_READERS
        assert index._group_bytes == sum(g.nbytes for g in index._groups.values())


def test_forgotten_index_cleans_up(tmp_path):
    """An index dropped without close() still closes its files and removes them when collected."""
    write_dataset(tmp_path / "old", corpus(30))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    index = open_index(tmp_path / "old", tmp_dir=str(scratch))
    assert len(list(scratch.iterdir())) == 1
    del index
    gc.collect()
    assert list(scratch.iterdir()) == []
