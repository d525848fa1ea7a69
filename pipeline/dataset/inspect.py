"""``pipeline inspect``: a dataset as its files say, checked against its manifest."""

from __future__ import annotations

from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from pipeline.dataset.manifest import MANIFEST, META_KEY, join, load_dataset_manifest
from pipeline.errors import SinkError


def read_shard_footer(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, dict[str, Any] | None]:
    """Row count and ``pipeline`` schema metadata of one shard file, from its footer."""
    with fs.open(path, "rb") as f:
        if path.endswith(".arrow"):
            reader = pa.ipc.open_file(f)
            rows = reader.count_rows()
            meta = reader.schema.metadata or {}
        else:
            md = pq.read_metadata(f)
            rows = md.num_rows
            meta = md.metadata or {}
    raw = meta.get(META_KEY.encode())
    return rows, (orjson.loads(raw) if raw else None)


def summarize(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, Any]:
    """A dataset as ``pipeline inspect`` shows it: the manifest, checked against the files.

    Each listed shard is opened at its footer only; ``problems`` lists shards
    that are missing, hold another row count than listed, or whose own
    metadata disagrees with the manifest. Raises ``SinkError`` when ``root``
    holds no manifest.
    """
    manifest = load_dataset_manifest(fs, root)
    if manifest is None:
        raise SinkError(f"no dataset at {root}: {MANIFEST} not found")
    problems: list[str] = []
    shards = []
    for entry in manifest.shards:
        path = join(root, entry["path"])
        check: dict[str, Any] = {"exists": True, "file_rows": None, "metadata_matches": False}
        try:
            rows, meta = read_shard_footer(fs, path)
        except FileNotFoundError:
            check["exists"] = False
            problems.append(f"{entry['path']}: listed in the manifest but missing")
        except (OSError, pa.ArrowException, orjson.JSONDecodeError) as exc:
            problems.append(f"{entry['path']}: unreadable ({exc})")
        else:
            check["file_rows"] = rows
            check["metadata_matches"] = meta == entry
            if rows != entry.get("rows"):
                problems.append(f"{entry['path']}: {rows} rows in the file, {entry.get('rows')} listed")
            elif meta != entry:
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
        "files_in_progress": len(manifest.progress),
        "problems": problems,
        "ok": not problems,
    }
