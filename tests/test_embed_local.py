"""pipeline.embed.local: the packaged wordllama model as an embedder."""

from __future__ import annotations

import pytest

from pipeline.config import EmbeddingConfig
from pipeline.embed.local import LocalEmbedder
from pipeline.types import Batch, Chunk, Failure

pytestmark = pytest.mark.anyio


def chunks(n: int) -> tuple[Chunk, ...]:
    return tuple(
        Chunk(id=f"d{i}", doc_id=f"d{i}", chunk_index=0, text=f"text number {i} ünïcødé 日本語",
              source="f.jsonl", location=i + 1, content_hash=str(i))
        for i in range(n)
    )


async def test_local_embedder_quantizes() -> None:
    """The local provider gives 256-dim float vectors, or 32 packed bytes for binary."""
    for etype, width in (("float", 256), ("binary", 32)):
        cfg = EmbeddingConfig(provider="local", embedding_type=etype)
        async with LocalEmbedder(cfg) as client:
            result = await client.embed(Batch(seq=0, chunks=chunks(3)))
        assert result.vectors.shape == (3, width) and result.usage.prompt_tokens > 0
        assert client.reported_model == "wordllama-l2-supercat-256"


async def test_empty_batch_keeps_its_failures() -> None:
    """A batch with no chunks costs nothing and carries its read failures, seq and marks through."""
    failure = Failure("x", "x", 0, None, "f.jsonl", 3, "bad_json", "not JSON")
    cfg = EmbeddingConfig(provider="local", embedding_type="int8")
    async with LocalEmbedder(cfg) as client:
        result = await client.embed(Batch(seq=7, chunks=(), failures=(failure,), records=1, marks=(("f", 3),)))
    assert result.vectors.shape == (0, 256) and result.usage.requests == 0
    assert (result.seq, result.failures, result.records, result.marks) == (7, (failure,), 1, (("f", 3),))
