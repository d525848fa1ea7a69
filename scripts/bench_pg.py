"""The `pg-load` scenario of scripts/bench.py: the Postgres sink's load rate, and the old README snippet's.

A local PostgreSQL with pgvector (the `pgserver` package, installed with
`pip install -r requirements-dev.txt`) gets the same rows twice: 1024-d
float vectors with short texts, as `pipeline run` would hand them to the sink
(batches of 96), and the same rows from a Parquet dataset through the loading
snippet the README used to show, which builds a text literal per vector.
Both are timed from the first row to the last commit; the sink's vector
index is left out (`sink.index: none`) as the snippet builds none.
"""

from __future__ import annotations

import glob
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DIMS = 1024
BATCH = 96
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pipeline, not an installed one


def readme_snippet(DATABASE_URL: str, pattern: str) -> None:  # noqa: N803 (the README's name)
    """The README's "Loading it into Postgres with pgvector" snippet, as it was (its glob a parameter)."""
    import psycopg

    with psycopg.connect(DATABASE_URL) as conn, conn.cursor() as cur:
        for path in sorted(glob.glob(pattern)):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=5000):
                rows = batch.to_pylist()
                with cur.copy("COPY chunks (id, doc_id, chunk_index, text, source, embedding) FROM STDIN") as copy:
                    for r in rows:
                        vec = "[" + ",".join(map(str, r["embedding"])) + "]"
                        copy.write_row((r["id"], r["doc_id"], r["chunk_index"], r["text"], r["source"], vec))
        conn.commit()


def _rows(records: int) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    ids = [f"doc-{i}" for i in range(records)]
    texts = [f"record {i}: the quick brown fox jumps over the lazy dog, une phrase, ein Satz" for i in range(records)]
    return ids, texts, rng.standard_normal((records, DIMS)).astype(np.float32)


def _batches(ids: list[str], texts: list[str], vectors: np.ndarray) -> list[Any]:
    from pipeline.types import Chunk, EmbeddedBatch, Usage

    out = []
    for seq, start in enumerate(range(0, len(ids), BATCH)):
        chunks = tuple(Chunk(ids[i], ids[i], 0, texts[i], "corpus.jsonl", i + 1, f"{i:064x}")
                       for i in range(start, min(start + BATCH, len(ids))))
        out.append(EmbeddedBatch(seq, chunks, vectors[start:start + len(chunks)], Usage(1, 0, 100, 100),
                                 records=len(chunks), marks=(("corpus.jsonl", start + len(chunks)),)))
    return out


def pg_load(work: Path, records: int) -> dict[str, Any]:
    """Rows per second into Postgres: the sink, and the old README snippet, on the same server and rows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        import pgserver

        server = pgserver.get_server(work / "pg", cleanup_mode="stop")
    try:
        import psycopg

        from pipeline.config import SinkConfig
        from pipeline.dataset.postgres import PostgresSink

        url = server.get_uri()
        ids, texts, vectors = _rows(records)
        batches = _batches(ids, texts, vectors)
        started = time.perf_counter()
        sink = PostgresSink(SinkConfig(path=url, table="embeddings", index="none"), rank=0, model="bench",
                            input_type="search_document", embedding_type="float", metadata_fields=[],
                            run_started_at="bench", chunking={})
        for k in range(0, len(batches), 16):  # as the write stage hands them over
            sink.write_many(batches[k:k + 16])
        sink.close("completed")
        sink_s = time.perf_counter() - started

        (work / "data").mkdir()
        table = pa.table({"id": ids, "doc_id": ids, "chunk_index": pa.array([0] * records, pa.int32()),
                          "text": texts, "source": ["corpus.jsonl"] * records,
                          "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIMS)})
        pq.write_table(table, work / "data" / "part-00000-000000.parquet", row_group_size=20_000)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE chunks (id text PRIMARY KEY, doc_id text, chunk_index int, text text, "
                         f"source text, embedding vector({DIMS}))")
        started = time.perf_counter()
        readme_snippet(url, str(work / "data" / "*.parquet"))
        snippet_s = time.perf_counter() - started
        with psycopg.connect(url) as conn:
            counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("embeddings", "chunks")]
    finally:
        server.cleanup()
    return {
        "records": records,
        "dims": DIMS,
        "sink_rows_per_s": round(counts[0] / sink_s),
        "snippet_rows_per_s": round(counts[1] / snippet_s),
        "speedup": round(snippet_s / sink_s, 1),
        "sink_s": round(sink_s, 1),
        "snippet_s": round(snippet_s, 1),
    }
