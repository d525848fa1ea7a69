"""``pipeline search``: the rows of a config's sink nearest to a query, for a quick look at a dataset.

The query is embedded like the documents were, with ``input_type:
search_query`` when the config sends an input type at all. A Postgres sink
is asked with the configured distance (through its index when there is one);
a file dataset is scanned shard by shard, a batch of rows at a time, keeping
only the best ``k`` so far (memory stays flat in the dataset's size).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Iterator

import anyio
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from pipeline.config import Config
from pipeline.dataset.manifest import join, load_dataset_manifest
from pipeline.dataset.postgres_schema import column_kind, distance_name, is_postgres
from pipeline.embed.vectors import DTYPES
from pipeline.errors import ApiError, SinkError
from pipeline.logs import redact_url
from pipeline.types import Batch, Chunk

SCAN_ROWS = 8192  # rows of a shard scored at once


@dataclass(frozen=True, slots=True)
class Hit:
    """One row near the query."""

    distance: float
    id: str
    doc_id: str
    chunk_index: int
    source: str
    text: str | None


def embed_query(cfg: Config, text: str) -> np.ndarray:
    """The query's vector, from the config's embedder, as the documents' type."""
    from pipeline.embed import make_embedder

    emb = cfg.embedding
    if emb.input_type is not None:  # the model takes an input type: documents and queries differ
        emb = emb.model_copy(update={"input_type": "search_query"})

    async def ask() -> Any:
        embedder = make_embedder(emb, cfg.api_key)
        async with embedder:  # type: ignore[attr-defined]
            return await embedder.embed(Batch(0, (Chunk("query", "query", 0, text, "", 0, ""),)))

    answer = anyio.run(ask)
    if answer.failures or len(answer.vectors) != 1:
        reason = answer.failures[0].message if answer.failures else "no vector came back"
        raise ApiError(f"cannot embed the query: {reason}")
    return np.asarray(answer.vectors[0])


def search(cfg: Config, query: str, k: int = 5) -> list[Hit]:
    """The ``k`` rows of ``cfg``'s sink nearest to ``query``, nearest first."""
    vector = embed_query(cfg, query)
    if is_postgres(cfg.sink.path):
        return search_postgres(cfg, vector, k)
    return search_files(cfg, vector, k)


def search_postgres(cfg: Config, vector: np.ndarray, k: int) -> list[Hit]:
    """Nearest rows of ``sink.table`` by ``sink.distance``."""
    from pgvector import Bit
    from psycopg import errors, sql

    from pipeline.dataset.postgres import connect
    from pipeline.dataset.postgres_schema import distance_of

    s = cfg.sink
    operator, _ = distance_of(s, cfg.embedding.embedding_type)
    packed = column_kind(cfg.embedding.embedding_type) == "bit"
    param = Bit(np.ascontiguousarray(vector).view(np.uint8).tobytes()) if packed else vector.astype(np.float32)
    with connect(s.path) as conn:
        try:
            with conn.transaction():
                if s.index == "hnsw":
                    conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(max(40, k))))
                cols = [r[0] for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                    "AND table_name = %s", (s.table,))]
                text = sql.Identifier("text") if "text" in cols else sql.NULL
                expr: sql.Composable = sql.SQL("embedding {op} %s").format(op=sql.SQL(operator.replace("%", "%%")))
                uses = 1
                if packed and _vector_version(conn) < (0, 7):  # no bit operators before pgvector 0.7
                    expr, uses = sql.SQL(BIT_DISTANCES[operator]), BIT_DISTANCES[operator].count("%s")
                rows = conn.execute(sql.SQL(
                    "SELECT {d} AS distance, id, doc_id, chunk_index, source, {text} "
                    "FROM {t} ORDER BY {d} LIMIT %s").format(d=expr, text=text, t=sql.Identifier(s.table)),
                    (*[param] * (2 * uses), k)).fetchall()
        except errors.UndefinedTable as exc:
            raise SinkError(f"{redact_url(s.path)} has no table {s.table} yet: `pipeline run` fills it") from exc
    return [Hit(float(d), i, doc, int(c), src, t) for d, i, doc, c, src, t in rows]


#: hamming and jaccard distances without pgvector's bit operators (pgvector before 0.7)
BIT_DISTANCES = {
    "<~>": "bit_count(embedding # %s)",
    "<%>": "1 - bit_count(embedding & %s)::float8 / greatest(bit_count(embedding | %s), 1)",
}


def _vector_version(conn: Any) -> tuple[int, ...]:
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    try:
        return tuple(int(x) for x in row[0].split(".")[:2]) if row else (0,)
    except ValueError:
        return (0,)


def search_files(cfg: Config, vector: np.ndarray, k: int, batch_rows: int = SCAN_ROWS) -> list[Hit]:
    """Nearest rows of the file dataset at ``sink.path``: a streamed brute-force scan of its data shards."""
    try:
        fs, root = fsspec.core.url_to_fs(cfg.sink.path, **cfg.sink.storage_options)
    except (ImportError, ValueError, OSError) as exc:
        raise SinkError(f"cannot open sink.path {cfg.sink.path}: {exc}") from exc
    root = root.rstrip("/")
    manifest = load_dataset_manifest(fs, root)
    if manifest is None:
        raise SinkError(f"no dataset at {cfg.sink.path} yet: `pipeline run` writes it")
    etype = manifest.embedding_type
    distance = distance_name(cfg.sink, etype)
    best: list[tuple[float, int, Hit]] = []  # a max-heap by distance (negated), of at most k
    n = 0
    for table in _scan(fs, root, [s["path"] for s in manifest.shards if s["kind"] == "data"], batch_rows):
        scores = _distances(table.column("embedding"), vector, etype, distance)
        take = np.argsort(scores, kind="stable")[:k]
        texts = table.column("text") if "text" in table.column_names else None
        for i in take:
            i = int(i)
            hit = Hit(float(scores[i]), table["id"][i].as_py(), table["doc_id"][i].as_py(),
                      table["chunk_index"][i].as_py(), table["source"][i].as_py(),
                      texts[i].as_py() if texts is not None else None)
            entry = (-hit.distance, -n, hit)
            n += 1
            if len(best) < k:
                heapq.heappush(best, entry)
            elif entry > best[0]:
                heapq.heapreplace(best, entry)
    return [h for _, _, h in sorted(best, key=lambda e: (-e[0], -e[1]))]


def _scan(fs: Any, root: str, paths: list[str], batch_rows: int) -> Iterator[pa.Table]:
    columns = ["id", "doc_id", "chunk_index", "source", "embedding"]
    for rel in paths:
        with fs.open(join(root, rel), "rb") as f:
            if rel.endswith(".arrow"):
                reader = pyarrow.ipc.open_file(f)
                names = set(reader.schema.names)
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    yield pa.Table.from_batches([batch]).select([c for c in [*columns, "text"] if c in names])
            else:
                parquet = pq.ParquetFile(f)
                wanted = [*columns, *(["text"] if "text" in parquet.schema_arrow.names else [])]
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted, use_threads=False):
                    yield pa.Table.from_batches([batch])


def _distances(column: pa.ChunkedArray, query: np.ndarray, etype: str, distance: str) -> np.ndarray:
    """pgvector's distances between each row of ``column`` and ``query`` (smaller is nearer)."""
    flat = column.combine_chunks()
    width = flat.type.list_size
    values = flat.flatten().to_numpy(zero_copy_only=False)
    matrix = values.reshape(-1, width)
    if distance in ("hamming", "jaccard"):
        a = matrix.view(np.uint8)
        b = np.ascontiguousarray(query, dtype=DTYPES[etype]).view(np.uint8)
        if distance == "hamming":
            return np.bitwise_count(a ^ b).sum(axis=1).astype(np.float64)
        both = np.bitwise_count(a & b).sum(axis=1)
        either = np.bitwise_count(a | b).sum(axis=1)
        return 1.0 - both / np.maximum(either, 1)
    x = matrix.astype(np.float32, copy=False)
    q = np.asarray(query, dtype=np.float32)
    dots = x @ q
    if distance == "ip":
        return -dots.astype(np.float64)
    if distance == "l2":
        return np.sqrt(np.maximum((x * x).sum(axis=1) - 2 * dots + q @ q, 0)).astype(np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(q)
    return (1.0 - dots / np.where(norms == 0, 1, norms)).astype(np.float64)


def render_hits(hits: list[Hit], width: int = 100) -> str:
    """The hits as ``pipeline search`` prints them: rank, distance, id, source, then the text's start."""
    if not hits:
        return "no rows"
    out = []
    for n, hit in enumerate(hits, 1):
        out.append(f"{n}. {hit.distance:.4f}  {hit.id}  ({hit.source})")
        if hit.text is not None:
            text = " ".join(hit.text.split())
            out.append("   " + (text if len(text) <= width else text[: width - 1] + "…"))
    return "\n".join(out)
