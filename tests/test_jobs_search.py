"""`pipeline search` and `pipeline inspect CONFIG` on both sinks: a document is found by its own text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from conftest import run_cli
from pipeline.config import Config
from pipeline.embed.vectors import quantize
from pipeline.jobs import search as search_mod
from pipeline.jobs.search import BIT_DISTANCES, _distances, _vector_version

TOPICS = ["the harbour at dawn with fishing boats", "a recipe for lemon tart with meringue",
          "quarterly revenue grew by twelve percent", "the mountain trail was covered in snow",
          "how to configure a reverse proxy for https", "the orchestra played a symphony by Brahms"]


def write_job(tmp_path: Path, sink: str, table: str = "embeddings") -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    lines = [json.dumps({"id": f"doc-{i}", "text": t}) for i, t in enumerate(TOPICS)] + ["{broken"]
    (tmp_path / "in" / "docs.jsonl").write_text("\n".join(lines) + "\n")
    job = tmp_path / "job.yaml"
    job.write_text(f"source:\n  path: {tmp_path / 'in'}\nembedding:\n  provider: local\n  model: wordllama\n"
                   f"sink:\n  path: '{sink}'\n  table: {table}\nrun:\n  max_failed_fraction: 0.5\n"
                   "logging:\n  format: logfmt\n")
    return job


@pytest.mark.parametrize("sink", ["postgres", "parquet"])
def test_search_finds_a_document_by_its_own_text(sink: str, tmp_path: Path, postgres_url: str, table: str) -> None:
    """Run, then search for one document's text: it comes first, at distance 0; inspect shows the run."""
    path = postgres_url if sink == "postgres" else str(tmp_path / "out")
    job = write_job(tmp_path, path, table)
    done = run_cli("run", str(job))
    assert done.returncode == 0, done.stderr
    found = run_cli("search", str(job), TOPICS[3], "-k", "3")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].startswith("1. 0.0000  doc-3  (") and lines[1].strip() == TOPICS[3]
    assert sum(1 for line in lines if line[:2] in ("1.", "2.", "3.")) == 3
    shown = run_cli("inspect", str(job))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "failures: invalid_json 1" in shown.stdout
    if sink == "postgres":
        assert f"{table} (6 rows)" in shown.stdout and "hnsw (embedding vector_cosine_ops)" in shown.stdout
        assert "the table's rows match its commits' accounting" in shown.stdout
    else:
        assert "every listed shard is present" in shown.stdout


def test_the_query_is_embedded_as_a_search_query(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that takes an input type gets input_type search_query; one that takes none gets none."""
    seen: list[Any] = []

    class Fake:
        def __init__(self, cfg: Any) -> None:
            seen.append(cfg.input_type)

        async def __aenter__(self) -> Fake:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def embed(self, batch: Any) -> Any:
            from pipeline.types import EmbeddedBatch, Usage

            return EmbeddedBatch(0, batch.chunks, np.ones((1, 4), np.float32), Usage())

    monkeypatch.setattr("pipeline.embed.make_embedder", lambda cfg, key, **kw: Fake(cfg))
    for input_type in ("search_document", None):
        cfg = Config.model_validate({"source": {"path": "x"}, "sink": {"path": "y"},
                                     "embedding": {"provider": "local", "input_type": input_type}})
        assert search_mod.embed_query(cfg, "q").tolist() == [1, 1, 1, 1]
    assert seen == ["search_query", None]


@pytest.mark.parametrize("etype,distance", [("float", "cosine"), ("float", "l2"), ("float", "ip"),
                                            ("int8", "cosine"), ("binary", "hamming"), ("ubinary", "jaccard")])
def test_the_file_scan_measures_distances_as_pgvector(etype: str, distance: str, postgres_url: str) -> None:
    """The numpy scan's distances equal pgvector's for the same vectors and operator."""
    from pgvector import Bit

    from pipeline.dataset.postgres import connect
    from pipeline.dataset.postgres_schema import DISTANCES
    from pipeline.embed.vectors import to_arrow

    rng = np.random.default_rng(3)
    rows = quantize(rng.standard_normal((5, 64)).astype(np.float32), etype)
    query = quantize(rng.standard_normal((1, 64)).astype(np.float32), etype)[0]
    ours = _distances(pa.chunked_array([to_arrow(rows, etype)]), query, etype, distance)
    bits = etype in ("binary", "ubinary")
    op, _ = DISTANCES[(distance, "bit" if bits else "vector")]
    op = op.replace("%", "%%")  # jaccard's <%> in a query with parameters

    def value(v: np.ndarray) -> Any:
        return Bit(np.ascontiguousarray(v).view(np.uint8).tobytes()) if bits else v.astype(np.float32)

    cast = "bit(64)" if bits else "vector(64)"
    with connect(postgres_url) as conn:
        expr = f"%(a)s::{cast} {op} %(b)s::{cast}"
        if bits and _vector_version(conn) < (0, 7):  # the pgserver of the tests bundles pgvector 0.6
            fallback = BIT_DISTANCES["<~>" if distance == "hamming" else "<%>"]
            expr = fallback.replace("%s", f"%(b)s::{cast}").replace("embedding", f"%(a)s::{cast}")
        theirs = [conn.execute(f"SELECT {expr}", {"a": value(r), "b": value(query)}).fetchone()[0] for r in rows]
    assert np.allclose(ours, theirs, rtol=1e-4, atol=1e-4)
