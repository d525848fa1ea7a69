"""Benchmark scenarios of a dataset that follows its source (registered in scripts/bench.py).

- many-files: N one-document .md files against the same N documents in one
  JSONL file, local disk, fake server; `wall_ratio` = files / jsonl, target
  at most 1.5. Also the manifest's size after the files run.
- rerun-changes: a corpus embedded once, then 10% of its documents edited
  (one JSONL file of records and a folder of .md files, each with 10% of its
  records or files edited) and run again; `paid_per_changed` = inputs sent
  to the API ÷ inputs whose text changed, target about 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def _bench() -> Any:
    """scripts/bench.py's helpers (imported late: bench.py registers these scenarios)."""
    return sys.modules.get("__main__") if hasattr(sys.modules.get("__main__"), "SCENARIOS") else __import__("bench")


def _docs(n: int) -> list[str]:
    phrases = ["the quick brown fox", "une phrase en français", "ein deutscher Satz", "日本語の文です"]
    return [" ".join(phrases[(i + k) % len(phrases)] for k in range(4)) + f" #{i}" for i in range(n)]


def _config(work: Path, name: str, source: Path, url: str) -> Path:
    bench = _bench()
    config = work / f"{name}.yaml"
    bench.write_config(config, source, work / f"{name}-out",
                       {"url": url, "model": "bench", "concurrency": bench.CONCURRENCY, "encoding_format": "base64"})
    return config


def many_files(work: Path, records: int) -> Any:
    """N small .md files against one JSONL of the same N documents: wall time of each, and their ratio."""
    bench = _bench()
    docs = _docs(records)
    folder = work / "files"
    folder.mkdir()
    for i, text in enumerate(docs):
        (folder / f"d{i:07d}.md").write_text(text)
    corpus = work / "one.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    with bench.serve("--fake", "--dimensions", "256") as url:
        one = bench.run_pipeline(_config(work, "one", corpus, url))
        many = bench.run_pipeline(_config(work, "many", folder, url))
    manifest = work / "many-out" / "_manifest.json"
    return bench.Row("many-files", {
        "files": records,
        "jsonl_wall_s": round(one.wall_s, 2),
        "files_wall_s": round(many.wall_s, 2),
        "wall_ratio": round(many.wall_s / one.wall_s, 2),
        "files_peak_rss_mb": round(many.max_rss_mb),
        "manifest_kb": round(manifest.stat().st_size / 1024) if manifest.exists() else None,
        "exit": max(one.returncode, many.returncode),
    })


def rerun_changes(work: Path, records: int) -> Any:
    """Embed, edit 10% of the documents, run again: inputs paid per input changed, for JSONL and .md files."""
    bench = _bench()
    docs = _docs(records)
    corpus = work / "in" / "docs.jsonl"
    folder = work / "in" / "notes"
    folder.mkdir(parents=True)
    files = records // 10
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    for i in range(files):
        (folder / f"n{i:06d}.md").write_text(docs[i] + " (note)")
    figures: dict[str, object] = {"records": records, "files": files}
    with bench.serve("--fake", "--dimensions", "256") as url:
        config = _config(work, "changes", work / "in", url)
        first = bench.run_pipeline(config)
        edited = {i for i in range(0, records, 10)}
        corpus.write_text("".join(
            json.dumps({"id": f"d{i}", "text": t + (" (edited)" if i in edited else "")}) + "\n"
            for i, t in enumerate(docs)))
        for i in range(0, files, 10):
            path = folder / f"n{i:06d}.md"
            path.write_text(docs[i] + " (note, edited)")
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        bench.reset_stats(url)
        again = bench.run_pipeline(config)
        paid = bench.stats(url)["inputs_embedded"]
    changed = len(edited) + len(range(0, files, 10))
    figures.update({
        "first_wall_s": round(first.wall_s, 2),
        "rerun_wall_s": round(again.wall_s, 2),
        "inputs_changed": changed,
        "inputs_paid": paid,
        "paid_per_changed": round(paid / changed, 2),
        "rows": again.manifest.get("totals", {}).get("rows_embedded"),
        "exit": max(first.returncode, again.returncode),
    })
    return bench.Row("rerun-changes", figures)
