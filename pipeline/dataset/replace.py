"""Taking a source's rows out of committed shards, copy-on-write.

A shard file is never edited: a shard holding rows of a source that changed
or went away is copied without them into a new shard file, which the same
manifest save lists in place of the old one. The old file is deleted only
after that save; a crash in between leaves a file the manifest does not
list, which the next start deletes. The resume state knows the sources of
each shard's rows (url → the records it completed, see :mod:`state`); shards
written before entries knew them are asked their ``source`` column.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dataset.manifest import Manifest, of_url
from pipeline.dataset.shard_writer import ShardWriter
from pipeline.dataset.shards import open_shard
from pipeline.dataset.state import State
from pipeline.storage import join
from pipeline.types import END_OF_FILE

#: rows copied at a time (8192 float vectors of 1024 dimensions: 32 MB)
COPY_ROWS = 8192

#: a shard entry, and the entry of its copy (None when no row was left)
Rewritten = tuple[dict[str, Any], dict[str, Any] | None]

#: makes a new, empty shard of a kind with a schema (the writer's next name for that kind)
NewShard = Callable[[str, pa.Schema], ShardWriter]


def sources_in(
    fs: fsspec.AbstractFileSystem, root: str, entry: dict[str, Any], state: State,
    read: dict[str, set[str]] | None = None,
) -> set[str] | dict[str, int]:
    """The sources whose rows shard ``entry`` holds (as the state says, else its ``source`` column).

    ``read`` keeps what the columns said, by shard path: a shard file never changes.
    """
    known = state.sources_of(entry["path"])
    if known is not None:
        return known
    if read is not None and entry["path"] in read:
        return read[entry["path"]]
    values: set[str] = set()
    with open_shard(fs, join(root, entry["path"])) as shard:
        if shard.num_rows and "source" in shard.schema.names:
            for batch in shard.iter_batches(columns=["source"]):
                values.update(pc.unique(batch.column(0).cast(pa.string())).to_pylist())
    values.discard(None)  # type: ignore[arg-type]
    if read is not None:
        read[entry["path"]] = values
    return values


def affected(
    fs: fsspec.AbstractFileSystem, root: str, entries: Iterable[dict[str, Any]], urls: set[str], state: State,
    read: dict[str, set[str]] | None = None,
) -> list[dict[str, Any]]:
    """The entries among ``entries`` that hold rows (or records) of one of ``urls``."""
    out = []
    for e in entries:
        sources = sources_in(fs, root, e, state, read)
        if any(u in sources for u in urls):
            out.append(e)
    return out


def rewrite(
    fs: fsspec.AbstractFileSystem,
    root: str,
    entry: dict[str, Any],
    urls: set[str],
    new_shard: NewShard,
    publish: Callable[[ShardWriter, dict[str, Any]], None],
    state: State,
    docs: Mapping[str, set[str]] | None = None,
) -> dict[str, Any] | None:
    """Copy shard ``entry`` without the rows of ``urls``, and of the documents ``docs`` names (source →
    doc_ids: kept rows whose ids moved to another input); its new entry, or None when no row is left.

    The new entry keeps the old one's accounting, less the rows and records
    of ``urls`` (what the API was paid for those rows stays with the
    entries that are left: it cannot be split by row); the state learns the
    copy's sources and marks (the old shard's, less those of ``urls``).
    """
    removed_rows, removed_docs = 0, set()
    moved: dict[str, set[str]] = {}  # of ``docs``, those this shard held rows of
    writer: ShardWriter | None = None
    kept = 0
    try:
        with open_shard(fs, join(root, entry["path"])) as shard:
            schema = shard.schema.remove_metadata()
            for batch in shard.iter_batches(batch_size=COPY_ROWS):  # vectors: a few MB at a time
                table = pa.Table.from_batches([batch], schema=batch.schema.remove_metadata())
                source = table.column("source").cast(pa.string())
                gone = pc.fill_null(pc.is_in(source, value_set=pa.array(sorted(urls), pa.string())), False)
                doc_id = table.column("doc_id").cast(pa.string()) if docs else None
                for url, ids in (docs or {}).items():
                    of_ids = pc.is_in(doc_id, value_set=pa.array(sorted(ids), pa.string()))
                    these = pc.fill_null(pc.and_(pc.equal(source, url), of_ids), False)
                    if pc.any(these).as_py():
                        moved.setdefault(url, set()).update(pc.unique(doc_id.filter(these)).to_pylist())
                        gone = pc.or_(gone, these)
                removed = table.filter(gone)
                removed_rows += removed.num_rows
                removed_docs.update(removed.column("doc_id").to_pylist())
                left = table.filter(pc.invert(gone))
                if left.num_rows:
                    if writer is None:
                        writer = new_shard(entry["kind"], schema)
                    writer.append(left.cast(schema))
                    kept += left.num_rows
        new, sources, marks = _without(entry, urls, removed_docs, state, moved)
        if writer is None:
            if not new["records"]:
                return None
            # records of other sources whose rows sit in the commit's other shard: keep their count
            writer = new_shard(entry["kind"], schema)
        new.update(path=writer.rel, rows=kept, rewritten_from=entry["path"])
        new["rows_reused"] = min(int(new.get("rows_reused", 0)), kept if new["kind"] == "data" else 0)
        publish(writer, new)
        state.add_shard(writer.rel, sources, marks)
        return new
    except BaseException:
        if writer is not None:
            writer.discard()
        raise


def _without(
    entry: dict[str, Any], urls: set[str], removed_docs: set[str], state: State,
    moved: Mapping[str, set[str]] | None = None,
) -> tuple[dict[str, Any], dict[str, int] | None, dict[str, int]]:
    """``entry``'s fields less what ``urls`` stood for (records), and the documents ``moved`` (source →
    doc_ids, a record each); the copy's sources and marks."""
    new = dict(entry)
    new.pop("bytes", None)  # the copy's own size is recorded once it is published
    sources = state.sources_of(entry["path"])
    if sources is not None:
        gone_records = sum(int(sources.get(u, 0)) for u in urls)
        kept = {u: n for u, n in sources.items() if u not in urls}
        for url, ids in (moved or {}).items():
            if url in kept:
                gone_records += min(len(ids), kept[url])
                kept[url] -= min(len(ids), kept[url])
    else:  # written before entries knew their sources: a record per document is the best guess
        gone_records = len(removed_docs) if entry["kind"] == "data" or int(entry.get("records", 0)) else 0
        kept = None  # and the copy's are not known either
    new["records"] = max(0, int(entry.get("records", 0)) - gone_records)
    marks = state.marks.get(entry["path"]) or {}
    kept_marks = {k: v for k, v in marks.items() if not any(of_url(k, u) for u in urls)}
    return new, kept, kept_marks



def swap(manifest: Manifest, rewritten: list[Rewritten], gone: list[str]) -> list[dict[str, Any]]:
    """List each copy in place of its shard, forget the inputs that are ``gone``; the retired entries."""
    shards = manifest.shards
    state = manifest.loaded
    for old, new in rewritten:
        i = shards.index(old)
        state.drop_shard(old["path"])
        if new is None:
            del shards[i]
        else:
            shards[i] = new
    for url in gone:
        state.forget(url)
    return [old for old, _ in rewritten]


def keep_for_reuse(manifest: Manifest, held: list[tuple[dict[str, Any], dict[str, list[str]]]]) -> list[dict[str, Any]]:
    """List retired data shards in ``manifest.retired``, each with the changed inputs (url → resume keys)
    whose old rows it held; the entries kept (their files must stay)."""
    kept = []
    for entry, inputs in held:
        if entry["kind"] == "data" and inputs:
            manifest.retired.append({"path": entry["path"], "kind": "data", "rows": int(entry.get("rows", 0)),
                                     "inputs": inputs})
            kept.append(entry)
    return kept


def release_replaced(manifest: Manifest, pending: Iterable[str]) -> list[dict[str, Any]]:
    """Take out of ``manifest.retired`` the shards whose inputs are all whole again (or gone); those entries.

    An input is whole when every resume key it was restarted with is committed
    to its end and it was not restarted since (``pending``: changed inputs whose
    new rows have not come yet).
    """
    state, waiting = manifest.loaded, set(pending)

    def whole(url: str, keys: list[str]) -> bool:
        if url not in state.files:  # gone from the source meanwhile
            return True
        return url not in waiting and all(state.done_upto(k) >= END_OF_FILE for k in keys)

    done = [r for r in manifest.retired if all(whole(u, ks) for u, ks in r["inputs"].items())]
    manifest.retired[:] = [r for r in manifest.retired if r not in done]
    return done
