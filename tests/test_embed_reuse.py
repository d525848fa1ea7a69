"""pipeline.embed.reuse: the embedder that takes vectors from an earlier dataset before it asks the API."""

from __future__ import annotations

from typing import Self

import anyio
import numpy as np
import pytest

from pipeline.embed.reuse import ReusingEmbedder
from pipeline.errors import FatalApiError
from pipeline.types import Batch, EmbeddedBatch, Failure, Usage

# the same small-dataset helpers and tiny index sizes as the index's own tests
from test_dataset_reuse_index import (  # noqa: E402
    DIMS,
    SRC,
    corpus,
    fake_vectors,
    make_chunks,
    open_index,
    small_sizes,  # noqa: F401  (an autouse fixture: tiny index sizes here too)
    write_dataset,
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
        self.reported_model: str | None = "m-served"

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
            Failure.of(c, "rejected", "bad", status=400, attempts=1) for c in batch.chunks if c.text in self.fail
        )
        tokens = sum(len(c.text) for c in batch.chunks)
        vectors = fake_vectors([c.text for c in good], self.etype)
        usage = Usage(requests=1, prompt_tokens=tokens, total_tokens=tokens)
        return EmbeddedBatch.answering(batch, tuple(good), vectors, usage, failures)


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
    """If the API returns vectors of another width than the stored ones, the run stops on an API error."""
    write_dataset(tmp_path / "old", corpus(10))
    inner = FakeEmbedder(etype="ubinary")  # 2 columns where the dataset stores 16
    chunks = make_chunks(corpus(10)[:3] + ["new"])
    with (
        open_index(tmp_path / "old") as index,
        pytest.raises(FatalApiError, match="vectors 16 wide, the API now returns 2"),
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


@pytest.mark.anyio
async def test_other_width_is_refused_even_when_nothing_is_reused(tmp_path):
    """A batch with no reusable chunk still gets its width checked against the earlier dataset's."""
    write_dataset(tmp_path / "old", corpus(10))
    inner = FakeEmbedder(etype="ubinary")  # 2 columns where the dataset stores 16
    with (
        open_index(tmp_path / "old") as index,
        pytest.raises(FatalApiError, match="vectors 16 wide, the API now returns 2"),
        anyio.fail_after(10),
    ):
        await ReusingEmbedder(inner, index).embed(Batch(seq=0, chunks=make_chunks(["new", "newer"])))


def test_reported_model_is_the_inner_one(tmp_path):
    """The reusing embedder reports the model its inner embedder's server named."""
    write_dataset(tmp_path / "old", corpus(3))
    with open_index(tmp_path / "old") as index:
        assert ReusingEmbedder(FakeEmbedder(), index).reported_model == "m-served"
