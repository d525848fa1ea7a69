"""A Postgres sink's own vectors for changed documents (pipeline.dataset.postgres_reuse, self_reuse)."""

from __future__ import annotations

from pathlib import Path


import numpy as np
import psycopg
import pytest

from pipeline.dataset.postgres_reuse import decode_vectors, stored_vectors
from pipeline.dataset.postgres_rows import encode_vectors
from pipeline.dataset.self_reuse import StoredVectors
from pipeline.embed.vectors import DTYPES

from test_jobs_changes import rerun, touch_later
from test_jobs_run import make_config

TYPES = ["float", "int8", "uint8", "binary", "ubinary"]


@pytest.mark.parametrize("etype", TYPES)
def test_decoding_undoes_the_encoding(etype: str) -> None:
    rng = np.random.default_rng(1)
    if etype == "float":
        matrix = rng.standard_normal((5, 12)).astype(np.float32)
    else:
        info = np.iinfo(DTYPES[etype])
        matrix = rng.integers(info.min, info.max, (5, 4), endpoint=True).astype(DTYPES[etype])
    blobs = [row.tobytes() for row in encode_vectors(matrix, etype)]
    back = decode_vectors(blobs, etype)
    assert back.dtype == DTYPES[etype]
    assert np.array_equal(back, matrix)


def test_stored_vectors_look_up_like_an_index() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    index = StoredVectors(["a", "b", "a", "c"], matrix)
    assert (index.rows, index.distinct, index.width) == (4, 3, 3)
    found, stored = index.lookup(["c", "x", "a"])
    assert found.tolist() == [True, False, True]
    assert stored.tolist() == [matrix[3].tolist(), matrix[0].tolist()]
    assert index.contains(["b", "y"]).tolist() == [True, False]
    empty_found, empty = index.lookup(["x"])
    assert empty.shape == (0, 3) and not empty_found.any()


@pytest.mark.anyio
@pytest.mark.parametrize("etype", ["float", "binary"])
async def test_an_edited_paragraph_pays_for_its_own_chunks_only_in_postgres(
    postgres_url: str, table: str, tmp_path: Path, etype: str
) -> None:
    """Editing one paragraph of a six-chunk document sends one or two inputs to the API; the table's
    other rows keep their vectors, exactly as they were."""
    src = tmp_path / "in"
    src.mkdir()
    paragraphs = [f"Paragraph {p}. " + " ".join(f"word{p}-{k}" for k in range(20)) for p in range(6)]
    (src / "doc.md").write_text("\n\n".join(paragraphs))
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []}, chunking={"max_chars": 300},
                      sink={"path": postgres_url, "table": table, "index": "none"},
                      embedding={"embedding_type": etype})
    _, _, first = await rerun(cfg)
    assert first["inputs_embedded"] == 6
    kind = "embedding::text"
    with psycopg.connect(postgres_url) as conn:
        before = dict(conn.execute(f'SELECT content_hash, {kind} FROM "{table}"').fetchall())
    paragraphs[3] = paragraphs[3].replace("word3-7 ", "WORD ")
    (src / "doc.md").write_text("\n\n".join(paragraphs))
    touch_later(src / "doc.md")
    job, result, stats = await rerun(cfg)
    assert job.changes["changed"] == 1
    assert 1 <= stats["inputs_embedded"] <= 2
    with psycopg.connect(postgres_url) as conn:
        after = conn.execute(f'SELECT id, content_hash, {kind}, text FROM "{table}"').fetchall()
    assert len(after) == 6 and len({r[0] for r in after}) == 6
    assert "WORD" in "".join(r[3] for r in after)
    kept = [r for r in after if r[1] in before]
    assert len(kept) >= 4 and all(before[r[1]] == r[2] for r in kept)


def test_no_table_or_no_rows_is_none(postgres_url: str, table: str) -> None:
    assert stored_vectors(postgres_url, table, "float", ["a.md"]) is None
    assert stored_vectors(postgres_url, table, "float", []) is None
