"""The resume state's files: ``_state/part-{rank:05d}-{seq:06d}.parquet``, listed by the manifest.

Each manifest (a rank's, or the merged ``_manifest.json``) lists its state
files in ``state`` as ``{"path", "rows", "bytes"}``, oldest first. A file
holds rows of two kinds: an input (``name`` is a resume key or a file url;
``progress``, ``end``, ``signature``, ``offsets``) and a shard (``name`` is
its path; ``sources`` and ``marks``); ``deleted`` rows drop a name.

:func:`persist` writes what changed since the last write as one file,
*before* the manifest that lists it is saved; a crash in between leaves a
file no manifest lists, which :func:`clean_up` deletes at the next start.
Files are merged as they pile up, the newest into the older ones of about
their size (every row is rewritten a logarithmic number of times), and the
whole state is written as one snapshot once the changes since the last one
outgrow it; so a commit costs what it changed, not what the dataset holds.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset.state import State
from pipeline.errors import SinkError
from pipeline.storage import is_local, join

STATE_DIR = "_state"
STATE_NAME = re.compile(r"part-(\d{5})-(\d{6,})\.parquet$")
#: never more files than this in a rank's list (they merge sooner, as a rule)
MAX_FILES = 24

_PAIRS = pa.list_(pa.struct([("name", pa.string()), ("value", pa.int64())]))
SCHEMA = pa.schema([
    ("name", pa.string()),
    ("shard", pa.bool_()),
    ("deleted", pa.bool_()),
    ("progress", pa.int64()),
    ("end", pa.int64()),
    ("signature", pa.string()),
    ("offsets", pa.list_(pa.list_(pa.int64()))),
    ("sources", _PAIRS),
    ("marks", _PAIRS),
])


def state_path(rank: int, seq: int) -> str:
    """A state file's path relative to the dataset root."""
    return f"{STATE_DIR}/part-{rank:05d}-{seq:06d}.parquet"


def rank_seq(path: str) -> tuple[int, int] | None:
    """The (rank, seq) of a state file path, None when it is not one."""
    m = STATE_NAME.search(path)
    return (int(m.group(1)), int(m.group(2))) if m else None


# --------------------------------------------------------------------------- tables


def _pairs(values: dict[str, int] | None) -> list[dict[str, Any]] | None:
    return None if values is None else [{"name": k, "value": v} for k, v in values.items()]


def to_table(state: State, names: set[str], shards: set[str]) -> pa.Table:
    """The rows of ``names`` (inputs) and ``shards`` as ``state`` holds them now (absent: ``deleted``)."""
    cols: dict[str, list[Any]] = {f.name: [] for f in SCHEMA}
    for name in sorted(names):
        present = name in state.progress or name in state.ends or name in state.files or name in state.offsets
        for col, value in (("name", name), ("shard", False), ("deleted", not present),
                           ("progress", state.progress.get(name)), ("end", state.ends.get(name)),
                           ("signature", state.files.get(name)), ("offsets", state.offsets.get(name)),
                           ("sources", None), ("marks", None)):
            cols[col].append(value)
    for path in sorted(shards):
        present = path in state.sources or path in state.marks
        for col, value in (("name", path), ("shard", True), ("deleted", not present), ("progress", None),
                           ("end", None), ("signature", None), ("offsets", None),
                           ("sources", _pairs(state.sources.get(path))), ("marks", _pairs(state.marks.get(path)))):
            cols[col].append(value)
    return pa.table({k: pa.array(v, type=SCHEMA.field(k).type) for k, v in cols.items()}, schema=SCHEMA)


def _grouped(column: pa.ChunkedArray) -> list[dict[str, int] | None]:
    """A list<struct<name, value>> column as dicts, flattened once rather than a dict per pair."""
    out: list[dict[str, int] | None] = []
    for chunk in column.chunks:
        flat = chunk.flatten()
        names = flat.field("name").to_pylist()
        values = flat.field("value").to_pylist()
        offsets = chunk.offsets.to_pylist()
        valid = chunk.is_valid().to_pylist()
        base = offsets[0] if offsets else 0
        for i, ok in enumerate(valid):
            a, b = offsets[i] - base, offsets[i + 1] - base
            out.append(dict(zip(names[a:b], values[a:b])) if ok else None)
    return out


def apply_table(state: State, table: pa.Table) -> tuple[set[str], set[str]]:
    """Take the rows of one state file, in order; the input names and shard paths it held."""
    names = table.column("name").to_pylist()
    shard = table.column("shard").to_pylist()
    deleted = table.column("deleted").to_pylist()
    inputs = [i for i, s in enumerate(shard) if not s]
    if inputs:
        cols = {c: table.column(c).to_pylist() for c in ("progress", "end", "signature", "offsets")}
        for i in inputs:
            state.apply_input(names[i], {"deleted": deleted[i], **{c: v[i] for c, v in cols.items()}})
    if len(inputs) < len(names):
        sources, marks = _grouped(table.column("sources")), _grouped(table.column("marks"))
        for i, s in enumerate(shard):
            if s:
                state.apply_shard(names[i], deleted[i], sources[i], marks[i] or {})
    return {names[i] for i in inputs}, {names[i] for i, s in enumerate(shard) if s}


# --------------------------------------------------------------------------- reading


def read_file(fs: fsspec.AbstractFileSystem, root: str, rel: str) -> pa.Table:
    """One listed state file; ``SinkError`` naming it when it is missing or unreadable."""
    path = join(root, rel)
    try:
        with fs.open(path, "rb") as f:
            return pq.read_table(f, schema=SCHEMA)
    except FileNotFoundError as exc:
        raise SinkError(
            f"{path} is listed in the manifest but missing; restore it, or `pipeline run --fresh` "
            "to start the dataset over"
        ) from exc
    except (OSError, pa.ArrowException) as exc:
        raise SinkError(f"cannot read the resume state {path}: {exc}") from exc


def load(fs: fsspec.AbstractFileSystem, root: str, manifest: Any) -> State:
    """The resume state ``manifest`` lists (``manifest.state`` is set to it, once loaded).

    A manifest of the previous format carries its state in itself; it is
    returned as is (and is written to files whole at the next save).
    """
    if manifest.state is not None:
        return manifest.state
    state = State()
    if manifest.parts:  # merged from the ranks' manifests: each lists its own files
        for part in manifest.parts:
            state.update(load(fs, root, part))
        manifest.state = state
        return state
    written: dict[str, tuple[set[str], set[str]]] = {}
    for n, item in enumerate(manifest.state_files):
        held = apply_table(state, read_file(fs, root, item["path"]))
        if n:  # the first file is a snapshot, the later ones what changed since
            written[item["path"]] = held
    state.clean()
    manifest.state = state
    manifest.state_held = written
    return state


# --------------------------------------------------------------------------- writing


def _write(fs: fsspec.AbstractFileSystem, root: str, rank: int, seq: int, table: pa.Table,
           fenced: bool) -> tuple[str, int]:
    """Write ``table`` as a new state file (never over another); its path and size."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    while True:
        rel = state_path(rank, seq)
        path = join(root, rel)
        if not is_local(fs):
            if fenced and fs.exists(path):
                seq += 1  # another writer's (one that lost the lease, or a leftover): never overwrite
                continue
            fs.pipe_file(path, data, **({"mode": "create"} if fenced else {}))
            return rel, len(data)
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return rel, len(data)


def persist(fs: fsspec.AbstractFileSystem, root: str, rank: int, manifest: Any, *, fenced: bool = False) -> list[str]:
    """Write what changed in ``manifest``'s state since the last write; the files no longer listed.

    ``manifest.state_files`` then lists the new file (in place of those it
    replaces); the caller saves the manifest, then deletes the returned
    files. Nothing is written when nothing changed.
    """
    state: State | None = manifest.state
    if state is None or not (state.whole or state.dirty or state.dirty_shards):
        return []
    files: list[dict[str, Any]] = list(manifest.state_files)
    held = dict(manifest.state_held)
    # never a name listed before: a retired file is deleted after the save
    seq = 1 + max((rs[1] for f in files if (rs := rank_seq(f["path"])) is not None and rs[0] == rank), default=-1)
    names, shards = set(state.dirty), set(state.dirty_shards)
    changed = sum(f["rows"] for f in files[1:]) + len(names) + len(shards)
    retired: list[dict[str, Any]] = []
    if state.whole or not files or changed > files[0]["rows"]:
        names, shards = state.names(), state.shard_paths()
        retired, files = files, []
        held = {}
    else:
        # merge into the newest files as long as they are not bigger than what goes with them
        while len(files) > 1 and (files[-1]["rows"] <= len(names) + len(shards) or len(files) >= MAX_FILES):
            gone = files.pop()
            old_names, old_shards = held.pop(gone["path"], (set(), set()))
            names |= old_names
            shards |= old_shards
            retired.append(gone)
    table = to_table(state, names, shards)
    rel, size = _write(fs, root, rank, seq, table, fenced)
    item = {"path": rel, "rows": table.num_rows, "bytes": size}
    if files:
        held[rel] = (names, shards)
    manifest.state_files = [*files, item]
    manifest.state_held = held
    state.clean()
    return [join(root, f["path"]) for f in retired]


def clean_up(fs: fsspec.AbstractFileSystem, root: str, rank: int, manifest: Any) -> None:
    """Delete this rank's state files (and temp files) that ``manifest`` does not list: a crash's leftovers."""
    listed = {join(root, f["path"]) for f in manifest.state_files}
    try:
        found = sorted(fs.glob(join(root, f"{STATE_DIR}/*part-{rank:05d}-*")))
    except (OSError, ValueError):
        return
    for path in found:
        name = path.rsplit("/", 1)[-1]
        if path not in listed and (name.startswith(".") or rank_seq(name) is not None):
            fs.rm_file(path)
