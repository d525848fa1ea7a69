"""Tests for pipeline.reuse: the content-hash index of an earlier dataset, and the reusing embedder."""

from __future__ import annotations

import gc
import os
import zlib
from pathlib import Path
from typing import Any, Self

import anyio
import numpy as np
import pyarrow as pa
import pytest

from pipeline.dataset import reuse_index as reuse

from pipeline.dataset import shard_file as sinks
from pipeline.stages.chunk import make_hasher
from pipeline.config import SinkConfig
from pipeline.errors import SinkError
from pipeline.dataset.reuse_index import ReuseIndex, ReusingEmbedder, count_reusable, hash_prefixes
from pipeline.dataset.writer import DatasetWriter
from pipeline.types import Batch, Chunk, EmbeddedBatch, Failure, Usage
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


class FakeEmbedder:
    """An inner embedder that counts calls and inputs; optionally fails or reorders chunks."""

    def __init__(self, etype: str = "float", fail: set[str] | None = None, reverse: bool = False) -> None:
        self.etype = etype
        self.fail = fail or set()
        self.reverse = reverse
        self.calls = 0
        self.inputs: list[str] = []
        self.entered = self.exited = 0
        self.dimensions: int | None = None

    async def __aenter__(self) -> Self:
        self.entered += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited += 1

    async def embed(self, batch: Batch) -> EmbeddedBatch:
        self.calls += 1
        self.inputs += [c.text for c in batch.chunks]
        good = [c for c in batch.chunks if c.text not in self.fail]
        if self.reverse:
            good.reverse()
        failures = batch.failures + tuple(
            Failure(c.id, c.doc_id, c.chunk_index, c.text, c.source, c.location, "rejected", "bad", 400, 1)
            for c in batch.chunks
            if c.text in self.fail
        )
        tokens = sum(len(c.text) for c in batch.chunks)
        return EmbeddedBatch(
            seq=batch.seq,
            chunks=tuple(good),
            vectors=fake_vectors([c.text for c in good], self.etype),
            usage=Usage(requests=1, prompt_tokens=tokens, total_tokens=tokens),
            failures=failures,
            records=batch.records,
            marks=batch.marks,
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
        assert index.resident_bytes < 8 * index.rows  # no per-hash Python objects anywhere
        assert not any(isinstance(v, (set, dict)) and len(v) > 50 for v in vars(index).values())
        for i in range(0, 400, 25):  # every row group of every shard, in file order
            found, _ = index.lookup([c.content_hash for c in chunks[i : i + 25]])
            assert found.all()
            assert len(index._groups) <= reuse.CACHE_ROW_GROUPS
            assert len(index._readers) <= reuse.CACHE_READERS
        assert index._group_bytes == sum(g.nbytes for g in index._groups.values())


# --------------------------------------------------------------------------- the reusing embedder


@pytest.mark.anyio
async def test_changed_chunks_only_are_sent(tmp_path):
    """Re-embedding a corpus with 10% changed sends only those chunks and bills about 10% of the tokens."""
    old = corpus(300)
    write_dataset(tmp_path / "old", old)
    new = [t.capitalize() if i % 10 == 3 else t for i, t in enumerate(old)]  # same length, other hash
    full_tokens = sum(len(t) for t in new)
    inner = FakeEmbedder()
    with open_index(tmp_path / "old") as index:
        async with ReusingEmbedder(inner, index) as embedder:
            answers = []
            for seq, i in enumerate(range(0, 300, 32)):
                chunks = make_chunks(new[i : i + 32], start=i)
                batch = Batch(seq=seq, chunks=chunks, records=len(chunks), marks=((SRC, i + len(chunks)),))
                answers.append(await embedder.embed(batch))
    assert inner.entered == inner.exited == 1
    changed = [t for t in new if t[0] == "D"]
    assert inner.inputs == changed and inner.calls == 10
    billed = sum(a.usage.prompt_tokens for a in answers)
    assert billed == sum(len(t) for t in changed) and 0.08 < billed / full_tokens < 0.12
    assert sum(a.reused for a in answers) == 270
    assert [c.text for a in answers for c in a.chunks] == new
    np.testing.assert_array_equal(np.concatenate([a.vectors for a in answers]), fake_vectors(new, "float"))
    assert [a.seq for a in answers] == list(range(10))
    assert answers[1].marks == ((SRC, 64),) and answers[1].records == 32


@pytest.mark.anyio
@pytest.mark.parametrize("etype", ["int8", "ubinary"])
async def test_fully_reused_batch_calls_nothing(tmp_path, etype):
    """A batch whose every chunk is in the index costs no request; its read failures ride along."""
    old = corpus(40)
    write_dataset(tmp_path / "old", old, etype=etype)
    inner = FakeEmbedder(etype)
    failure = Failure("bad", "bad", 0, None, SRC, 99, "missing_text", "no text")
    chunks = make_chunks(old[5:25], etype)
    with open_index(tmp_path / "old", etype) as index:
        embedder = ReusingEmbedder(inner, index)
        answer = await embedder.embed(Batch(seq=4, chunks=chunks, failures=(failure,), records=21))
        empty = await embedder.embed(Batch(seq=5, chunks=(), failures=(failure,), records=1))
        assert embedder.dimensions == index.width == (2 if etype == "ubinary" else DIMS)
    assert inner.calls == 0
    assert answer.chunks == chunks and answer.reused == 20 and answer.usage == Usage()
    assert answer.failures == (failure,) and answer.records == 21 and answer.seq == 4
    np.testing.assert_array_equal(answer.vectors, fake_vectors(old[5:25], etype))
    assert empty.chunks == () and empty.failures == (failure,) and empty.reused == 0


@pytest.mark.anyio
async def test_order_kept_when_inner_fails_and_reorders(tmp_path):
    """Reused and new chunks come back in batch order, minus those the inner embedder failed."""
    old = corpus(20)
    write_dataset(tmp_path / "old", old)
    texts = ["new a", old[0], "new b", old[7], "new c", "new d", old[19]]
    inner = FakeEmbedder(fail={"new c"}, reverse=True)
    read_failure = Failure("x", "x", 0, None, SRC, 50, "bad_json", "not JSON")
    chunks = make_chunks(texts, start=100)
    with open_index(tmp_path / "old") as index:
        answer = await ReusingEmbedder(inner, index).embed(
            Batch(seq=2, chunks=chunks, failures=(read_failure,), records=8, marks=((SRC, 108),))
        )
    assert inner.calls == 1 and inner.inputs == ["new a", "new b", "new c", "new d"]
    kept = [t for t in texts if t != "new c"]
    assert [c.text for c in answer.chunks] == kept
    np.testing.assert_array_equal(answer.vectors, fake_vectors(kept, "float"))
    assert answer.reused == 3
    assert [f.id for f in answer.failures] == ["x", "d104"]
    assert answer.usage.prompt_tokens == len("new a") + len("new b") + len("new c") + len("new d")
    assert (answer.seq, answer.records, answer.marks) == (2, 8, ((SRC, 108),))


@pytest.mark.anyio
async def test_nothing_reusable_passes_through(tmp_path):
    """When no chunk is in the index the inner embedder's answer is returned as is."""
    write_dataset(tmp_path / "old", corpus(20))
    inner = FakeEmbedder()
    chunks = make_chunks(corpus(5, " new"))
    with open_index(tmp_path / "old") as index:
        answer = await ReusingEmbedder(inner, index).embed(Batch(seq=0, chunks=chunks, records=5))
    assert inner.inputs == [c.text for c in chunks] and answer.reused == 0 and answer.chunks == chunks


@pytest.mark.anyio
async def test_other_width_from_the_api_is_refused(tmp_path):
    """If the API returns vectors of another width than the stored ones, the batch is refused."""
    write_dataset(tmp_path / "old", corpus(10))
    inner = FakeEmbedder(etype="ubinary")  # 2 columns where the dataset stores 16
    chunks = make_chunks(corpus(10)[:3] + ["new"])
    with (
        open_index(tmp_path / "old") as index,
        pytest.raises(SinkError, match="vectors 16 wide, the API now returns 2"),
        anyio.fail_after(10),
    ):
        await ReusingEmbedder(inner, index).embed(Batch(seq=0, chunks=chunks))


@pytest.mark.anyio
async def test_concurrent_batches(tmp_path):
    """Batches embedded concurrently (lookups in several threads at once) each get their own vectors."""
    old = corpus(400)
    write_dataset(tmp_path / "old", old, shard_rows=100, batch_rows=20)
    new = [t.capitalize() if i % 7 == 0 else t for i, t in enumerate(old)]
    inner = FakeEmbedder()
    answers: dict[int, EmbeddedBatch] = {}
    with open_index(tmp_path / "old") as index:
        embedder = ReusingEmbedder(inner, index)

        async def one(seq: int) -> None:
            chunks = make_chunks(new[seq * 25 : seq * 25 + 25], start=seq * 25)
            answers[seq] = await embedder.embed(Batch(seq=seq, chunks=chunks))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for seq in range(16):
                    tg.start_soon(one, seq)
    got = [answers[s] for s in range(16)]
    assert [c.text for a in got for c in a.chunks] == new
    np.testing.assert_array_equal(np.concatenate([a.vectors for a in got]), fake_vectors(new, "float"))
    assert sum(a.reused for a in got) == sum(1 for i in range(400) if i % 7) and len(inner.inputs) == 58


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
