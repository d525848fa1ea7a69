"""Benchmark scenario of the resume state's size (registered in scripts/bench.py as ``state-size``).

- state-size: a synthetic dataset of N source objects of one document each
  (~80-character s3:// urls, an ETag-like signature, one shard per 1,000
  objects), its state written whole as a first commit would: the size of
  `_manifest.json` and of `_state/`, then, in a fresh process, the time and
  peak RSS to open it (manifest and state), the rate of ``signature`` and
  ``done_upto`` lookups over every object, a walk of every signature, what
  one commit that changes 10 objects writes (its state file and the
  manifest), and what seeding the id registry with the objects' million ids
  (as a run's start does, from ``known_ids()``) costs in time and memory;
  last, the time and peak RSS of writing the opened state whole again (a
  snapshot, as when the changes since the last one outgrow it).

    python scripts/bench.py state-size                 # 1,000,000 objects
    python scripts/bench.py state-size --records 100000
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

#: objects per shard (shard_seconds commits of a crawl, rather than shard_rows' 100,000)
PER_SHARD = 1_000


def _url(i: int) -> str:
    return f"s3://example-corpus-bucket/crawl/2024-05-17/segment-{i // 10_000:05d}/doc-{i:09d}.json"


def _etag(i: int) -> str:
    return f'"{i * 2654435761 % 16**32:032x}"'


def _build(root: Path, objects: int, url: Callable[[int], str] = _url,
           signature: Callable[[int], str] = _etag, doc_id: Callable[[int], str] | None = None,
           dimensions: int = 1024) -> dict[str, Any]:
    """Write the synthetic dataset's manifest and state (whole, as the first save of a migrated one): object
    ``i`` is ``url(i)``, read whole when its signature was ``signature(i)``. With ``doc_id``, also the data
    shards the manifest lists, real and small: object ``i``'s one row has id ``doc_id(i)`` and a vector of
    ``dimensions`` (without, the shards are only named: the state is what is measured)."""
    import fsspec

    from pipeline.dataset import state_files
    from pipeline.dataset.manifest import Manifest
    from pipeline.types import END_OF_FILE

    fs = fsspec.filesystem("file")
    m = Manifest.new("bench", "search_document", "float")
    m.dimensions = dimensions
    state = m.loaded
    for s in range(0, objects, PER_SHARD):
        path = f"data/part-00000-{s // PER_SHARD:06d}.parquet"
        urls = [url(i) for i in range(s, min(objects, s + PER_SHARD))]
        m.shards.append({"path": path, "kind": "data", "rows": len(urls), "requests": 8, "retries": 0,
                         "prompt_tokens": 120 * len(urls), "total_tokens": 120 * len(urls),
                         "records": len(urls), "rows_reused": 0, "started_at": "2024-05-17T10:00:00.000Z",
                         "finished_at": "2024-05-17T10:05:00.000Z", "bytes": 4_300_000})
        if doc_id is not None:
            _write_shard(root / path, m.shards[-1], [doc_id(i) for i in range(s, s + len(urls))], urls, dimensions)
        state.add_shard(path, {u: 1 for u in urls}, {u: END_OF_FILE for u in urls})
        state.advance([(u, END_OF_FILE) for u in urls], {u: 1 for u in urls})
        for i, u in enumerate(urls):
            state.files[u] = signature(s + i)
    state.dirty |= set(state.files)
    m.start_run("2024-05-17T10:00:00.000Z")
    started = time.perf_counter()
    state_files.persist(fs, str(root), 0, m)
    m.save(fs, str(root))
    return {"write_s": round(time.perf_counter() - started, 2)}


def _write_shard(path: Path, entry: dict[str, Any], ids: list[str], urls: list[str], dimensions: int) -> None:
    """One data shard as the writer publishes it (its manifest entry in its footer): a row per id."""
    import numpy as np
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.dataset.shards import META_KEY

    n = len(ids)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(n * dimensions, np.float32)), dimensions)
    table = pa.table({"id": ids, "doc_id": ids, "chunk_index": pa.array([0] * n, pa.int32()),
                      "text": [f"text of {i}" for i in ids], "embedding": vectors, "source": urls,
                      "content_hash": [f"{hash(i) & (1 << 63) - 1:016x}" for i in ids]})
    entry.update(bytes=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({META_KEY: orjson.dumps(entry).decode()}), str(path),
                   compression="zstd")
    entry.update(bytes=path.stat().st_size)


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would count the parent's, kept across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(root: Path) -> None:
    """Open the dataset as a writer would, then commit a change of 10 objects; print figures as JSON."""
    import fsspec

    from pipeline.dataset import state_files
    from pipeline.dataset.manifest import Manifest
    from pipeline.types import END_OF_FILE

    fs = fsspec.filesystem("file")
    rss_before = _peak_mb()
    started = time.perf_counter()
    m = Manifest.load(fs, str(root))
    state = state_files.load(fs, str(root), m)
    load_s = time.perf_counter() - started
    rss_loaded = _peak_mb()
    objects = len(state.files)
    lookup_s = 0.0
    for s in range(0, objects, 10_000):
        urls = [_url(i) for i in range(s, min(objects, s + 10_000))]
        started = time.perf_counter()
        for u in urls:
            state.files.get(u)
            state.done_upto(u)
        lookup_s += time.perf_counter() - started
    started = time.perf_counter()
    walked = sum(1 for _ in state.files.items())
    walk_s = time.perf_counter() - started
    rss_lookups = _peak_mb()
    started = time.perf_counter()
    seq = len(m.shards)
    path = f"data/part-00000-{seq:06d}.parquet"
    changed = [_url(i) for i in range(0, objects, objects // 10)][:10]
    for u in changed:
        state.set_signature(u, '"changed"')
        state.restart(u, u)
    m.shards.append({**m.shards[-1], "path": path, "rows": 10})
    state.add_shard(path, {u: 1 for u in changed}, {u: END_OF_FILE for u in changed})
    state.advance([(u, END_OF_FILE) for u in changed], {u: 1 for u in changed})
    before = {f["path"] for f in m.state_files}
    state_files.persist(fs, str(root), 0, m)
    m.save(fs, str(root))
    commit_s = time.perf_counter() - started
    new = [f for f in m.state_files if f["path"] not in before]
    ids_s, ids_mb = _register_ids(objects)
    state.whole = True  # as when the changes since the last snapshot outgrow it: everything written again
    started = time.perf_counter()
    state_files.persist(fs, str(root), 0, m)
    rewrite_s = time.perf_counter() - started
    print(json.dumps({
        "objects": objects,
        "load_s": round(load_s, 2),
        "rss_before_load_mb": round(rss_before),
        "peak_rss_loaded_mb": round(rss_loaded),
        "load_rss_over_base_mb": round(rss_loaded - rss_before),
        "lookups_per_s": round(2 * objects / lookup_s) if lookup_s else None,
        "walk_signatures_s": round(walk_s, 2) if walked == objects else f"walked {walked}",
        "peak_rss_after_lookups_mb": round(rss_lookups),
        "commit10_s": round(commit_s, 3),
        "commit10_state_bytes": sum(f["bytes"] for f in new),
        "commit10_state_rows": sum(f["rows"] for f in new),
        "commit10_manifest_bytes": (root / "_manifest.json").stat().st_size,
        "ids_register_s": ids_s,
        "ids_peak_rss_mb": ids_mb,
        "rewrite_whole_s": round(rewrite_s, 2),
        "peak_rss_after_rewrite_mb": round(_peak_mb()),
    }))


def _register_ids(objects: int) -> tuple[float, int]:
    """Seed an id registry with one id per object, in blocks as ``known_ids()`` yields them; seconds, peak RSS.

    (The ids are made up here rather than read from data shards: what is
    measured is the registry, which holds them at each run's start.)
    """
    from pipeline.stages.ids import IdRegistry

    def blocks() -> Any:
        for s in range(0, objects, PER_SHARD):
            block = range(s, min(objects, s + PER_SHARD))
            yield [f"doc-{i:09d}" for i in block], [_url(i) for i in block]

    ids = IdRegistry()
    started = time.perf_counter()
    ids.seed(blocks(), rows=objects)  # as a run seeds it (jobs/run.py _register_ids)
    return round(time.perf_counter() - started, 2), round(_peak_mb())


def state_size(work: Path, records: int) -> Any:
    """The manifest and the state of ``records`` one-document source objects; opening them; a commit of 10."""
    bench = sys.modules.get("__main__") if hasattr(sys.modules.get("__main__"), "SCENARIOS") else __import__("bench")
    root = work / "ds"
    root.mkdir()
    built = _build(root, records)
    manifest_bytes = (root / "_manifest.json").stat().st_size
    state_bytes = sum(p.stat().st_size for p in (root / "_state").iterdir())
    out = subprocess.run([sys.executable, __file__, "--child", str(root)], capture_output=True, text=True,
                         check=False)
    child = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-300:]}
    return bench.Row("state-size", {
        "objects": records,
        "shards": -(-records // PER_SHARD),
        "manifest_kb": round(manifest_bytes / 1024),
        "state_mb": round(state_bytes / 2**20, 1),
        **built,
        **{k: v for k, v in child.items() if k != "objects"},
    })


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: a checkout to compare wins
    _child(Path(sys.argv[2]))
