"""``pipeline inspect``: a dataset as its files say, checked against its manifest."""

from __future__ import annotations

from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dataset import state_files
from pipeline.dataset.manifest import MANIFEST, load_dataset_manifest
from pipeline.dataset.shards import open_shard, read_shard_footer
from pipeline.storage import join
from pipeline.errors import SinkError


def _refuse_a_file(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """``SinkError`` saying so when ``root`` is a file (``inspect docs.jsonl``, a config not ending in .yaml):
    plainer than the ``Not a directory: '.../_manifest.json'`` that reading it gives."""
    try:
        is_file = fs.isfile(root)
    except Exception:  # the store's own errors: the caller's message stands
        return
    if is_file:
        raise SinkError(f"no dataset at {root}: it is a file; inspect takes a dataset's folder (the one holding "
                        f"{MANIFEST}) or a config file ending in .yaml")


def summarize(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, Any]:
    """A dataset as ``pipeline inspect`` shows it: the manifest, checked against the files.

    Each listed shard is opened at its footer only; ``problems`` lists shards
    that are missing, hold another row count than listed, or whose own
    metadata disagrees with the manifest. Raises ``SinkError`` when ``root``
    holds no manifest.
    """
    try:
        manifest = load_dataset_manifest(fs, root)
    except SinkError:
        _refuse_a_file(fs, root)
        raise
    if manifest is None:
        _refuse_a_file(fs, root)
        raise SinkError(f"no dataset at {root}: {MANIFEST} not found")
    problems: list[str] = []
    shards = []
    for entry in manifest.shards:
        path = join(root, entry["path"])
        check: dict[str, Any] = {"exists": True, "file_rows": None, "metadata_matches": False}
        own = {k: v for k, v in entry.items() if k != "bytes"}  # the file holds all but its own size
        try:
            rows, meta = read_shard_footer(fs, path)
        except FileNotFoundError:
            check["exists"] = False
            problems.append(f"{entry['path']}: listed in the manifest but missing")
        except (OSError, pa.ArrowException, orjson.JSONDecodeError) as exc:
            problems.append(f"{entry['path']}: unreadable ({exc})")
        else:
            if meta is not None:  # shards of format 1 carry their sources and marks too (now in _state/)
                meta = {k: v for k, v in meta.items() if k not in ("sources", "marks")}
            check["file_rows"] = rows
            check["metadata_matches"] = meta == own
            if rows != entry.get("rows"):
                problems.append(f"{entry['path']}: {rows} rows in the file, {entry.get('rows')} listed")
            elif meta != own:
                problems.append(f"{entry['path']}: its metadata differs from the manifest entry")
        shards.append({**entry, **check})
    return {
        "path": root,
        "format_version": manifest.format_version,
        "model": manifest.model,
        "input_type": manifest.input_type,
        "embedding_type": manifest.embedding_type,
        "dimensions": manifest.dimensions,
        "schema": manifest.schema,
        "totals": manifest.totals,
        "runs": manifest.runs,
        "shards": shards,
        "data_shards": sum(1 for s in manifest.shards if s["kind"] == "data"),
        "error_shards": sum(1 for s in manifest.shards if s["kind"] == "errors"),
        "files_in_progress": len(state_files.load(fs, root, manifest).progress),
        "state_files": len(manifest.state_files),
        # kept while a cut-short run's changed inputs are replaced: a data/*.parquet glob still sees them
        "retired_shards": len(manifest.retired),
        "replacing": sorted({url for r in manifest.retired for url in r.get("inputs", {})}),
        "state_bytes": sum(f["bytes"] for f in manifest.state_files),
        "problems": problems,
        "ok": not problems,
    }


def failures_by_type(fs: fsspec.AbstractFileSystem, root: str, summary: dict[str, Any]) -> dict[str, int]:
    """How many rows of the dataset's ``errors/`` shards failed for each ``error_type``."""
    counts: dict[str, int] = {}
    # One file at a time, on this thread: pyarrow.dataset over an fsspec
    # filesystem calls into Python from Arrow's I/O threads, and with s3fs
    # that sometimes aborts the process at exit ("terminate called without
    # an active exception", apache/arrow#39162), after the report was printed.
    for shard in summary["shards"]:
        if shard["kind"] != "errors" or not shard["exists"]:
            continue
        with open_shard(fs, join(root, shard["path"])) as f:
            for batch in f.iter_batches(columns=["error_type"]):
                for row in pc.value_counts(batch.column(0)).to_pylist():
                    counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    return counts


def text_table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_summary(summary: dict, failures_by_type: dict[str, int]) -> str:
    """The text ``pipeline inspect`` prints for a dataset summary."""
    t = summary["totals"]
    out = [
        f"dataset: {summary['path']}",
        f"model: {summary['model']}  input_type: {summary['input_type'] or 'not sent'}  "
        f"embedding_type: {summary['embedding_type']}  "
        f"dimensions: {summary['dimensions'] or 'not known yet (no vector written)'}",
        "",
        text_table(
            ["shard", "kind", "rows", "requests", "retries", "prompt_tokens", "total_tokens", "finished_at"],
            [
                [s["path"], s["kind"], f"{s['rows']:,}", f"{s.get('requests', 0):,}", s.get("retries", 0),
                 f"{s.get('prompt_tokens', 0):,}", f"{s.get('total_tokens', 0):,}", s.get("finished_at", "")]
                for s in summary["shards"]
            ],
        ),
        "",
        f"records read: {t['records_read']:,}   rows embedded: {t['rows_embedded']:,} "
        f"(reused {t['rows_reused']:,})   rows failed: {t['rows_failed']:,}",
        f"requests: {t['requests']:,} (retries {t['retries']:,})   prompt tokens: {t['prompt_tokens']:,}   "
        f"total tokens: {t['total_tokens']:,}",
    ]
    if failures_by_type:
        out.append("failures: " + ", ".join(f"{k} {v:,}" for k, v in sorted(failures_by_type.items())))
    if summary["runs"]:
        out += ["", text_table(["run started", "finished", "status"],
                           [[r.get("started_at", ""), r.get("finished_at") or "", r.get("status", "")]
                            for r in summary["runs"]])]
    out.append("")
    if summary.get("retired_shards"):
        replacing = summary["replacing"]
        out.append(f"replacing: {len(replacing):,} changed input(s) a run left half replaced ({replacing[0]}"
                   f"{', ...' if len(replacing) > 1 else ''}); their {summary['retired_shards']:,} old shard(s) "
                   "stay in data/ (listed as retired, not read as rows) until a run completes them")
    if summary["problems"]:
        out += [f"PROBLEM: {p}" for p in summary["problems"]]
    else:
        out.append("every listed shard is present, with the listed rows and metadata")
    return "\n".join(out)
