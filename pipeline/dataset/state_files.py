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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.dataset.state import State
from pipeline.errors import SinkError
from pipeline.storage import is_local, join
from pipeline.types import END_OF_FILE

STATE_DIR = "_state"
STATE_NAME = re.compile(r"part-(\d{5})-(\d{6,})\.parquet$")
#: rows read (and written) at a time
ROW_GROUP = 65_536
SHARD_GROUP = 64
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


def _pairs(values: dict[str, int] | None) -> dict[str, list[Any]] | None:
    return None if values is None else {"name": list(values), "value": list(values.values())}


def _pairs_array(rows: list[dict[str, list[Any]] | None]) -> pa.Array:
    """A list<struct<name, value>> array built from flat columns (not a Python dict per pair)."""
    offsets, names, values, valid = [0], [], [], []
    for row in rows:
        if row is not None:
            names += row["name"]
            values += row["value"]
        offsets.append(len(names))
        valid.append(row is not None)
    items = pa.StructArray.from_arrays([pa.array(names, pa.string()), pa.array(values, pa.int64())],
                                       names=["name", "value"])
    mask = pa.array([not v for v in valid], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), items, mask=mask).cast(_PAIRS)


def to_table(state: State, names: set[str], shards: set[str]) -> pa.Table:
    """The rows of ``names`` (inputs) and ``shards`` as ``state`` holds them now (absent: ``deleted``)."""
    inputs, paths = sorted(names), sorted(shards)
    n, k = len(inputs), len(paths)
    p, e, f, o = state.progress, state.ends, state.files, state.offsets
    columns = {
        "name": inputs + paths,
        "shard": [False] * n + [True] * k,
        "deleted": [not (x in p or x in e or x in f or x in o) for x in inputs]
        + [not (x in state.sources or x in state.marks) for x in paths],
        "progress": [p.get(x) for x in inputs] + [None] * k,
        "end": [e.get(x) for x in inputs] + [None] * k,
        "signature": [f.get(x) for x in inputs] + [None] * k,
        "offsets": [o.get(x) for x in inputs] + [None] * k,
    }
    arrays = {c: pa.array(v, type=SCHEMA.field(c).type) for c, v in columns.items()}
    arrays["sources"] = _pairs_array([None] * n + [_pairs(state.sources.get(x)) for x in paths])
    arrays["marks"] = _pairs_array([None] * n + [_pairs(state.marks.get(x)) for x in paths])
    return pa.table(arrays, schema=SCHEMA)


def _grouped(column: pa.Array, canon: dict[str, str]) -> list[dict[str, int] | None]:
    """A list<struct<name, value>> column as dicts, flattened once rather than a dict per pair.

    A name found in ``canon`` is that same string object: one per input, whichever dicts hold it.
    """
    flat = column.flatten()
    keys = [canon.get(x, x) for x in flat.field("name").to_pylist()]
    values = [END_OF_FILE if v == END_OF_FILE else v for v in flat.field("value").to_pylist()]
    offsets = column.offsets.to_pylist()
    base = offsets[0] if offsets else 0
    return [dict(zip(keys[offsets[i] - base:offsets[i + 1] - base], values[offsets[i] - base:offsets[i + 1] - base]))
            if ok else None for i, ok in enumerate(column.is_valid().to_pylist())]


class _Reader:
    """Takes the rows of one state file into a :class:`State`, a batch at a time (they hold the inputs first)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.inputs: set[str] = set()
        self.shards: set[str] = set()
        self._canon: dict[str, str] | None = None

    def batch(self, batch: pa.RecordBatch) -> None:
        names = batch.column("name").to_pylist()
        shard = batch.column("shard").to_pylist()
        deleted = batch.column("deleted").to_pylist()
        if not any(shard):
            self._inputs(batch, names, deleted)
        elif all(shard):
            self._shards(batch, names, deleted)
        else:
            mask = pa.array(shard, pa.bool_())
            self.batch(batch.filter(pc.invert(mask)))
            self.batch(batch.filter(mask))

    def _inputs(self, batch: pa.RecordBatch, names: list[str], deleted: list[bool]) -> None:
        state = self.state
        for column, held in zip(("progress", "end", "signature", "offsets"),
                                (state.progress, state.ends, state.files, state.offsets)):
            values = batch.column(column).to_pylist()
            if any(deleted):
                values = [None if d else v for v, d in zip(values, deleted)]
            if column in ("progress", "end"):  # one object for the commonest value, not one per input
                values = [END_OF_FILE if v == END_OF_FILE else v for v in values]
            held.update({n: v for n, v in zip(names, values) if v is not None})
            for name in [n for n, v in zip(names, values) if v is None and n in held]:
                del held[name]
        self.inputs.update(names)

    def _shards(self, batch: pa.RecordBatch, paths: list[str], deleted: list[bool]) -> None:
        if self._canon is None:
            self._canon = {x: x for x in self.state.progress}
            self._canon.update((x, x) for x in self.state.files if x not in self._canon)
        sources = _grouped(batch.column("sources"), self._canon)
        marks = _grouped(batch.column("marks"), self._canon)
        for path, d, src, mk in zip(paths, deleted, sources, marks):
            self.state.apply_shard(path, d, src, mk or {})
        self.shards.update(paths)


def apply_table(state: State, table: pa.Table) -> tuple[set[str], set[str]]:
    """Take the rows of one state file, in order; the input names and shard paths it held."""
    reader = _Reader(state)
    for batch in table.to_batches():
        reader.batch(batch)
    return reader.inputs, reader.shards


# --------------------------------------------------------------------------- reading


def read_file(fs: fsspec.AbstractFileSystem, root: str, rel: str, state: State) -> tuple[set[str], set[str]]:
    """Take one listed state file into ``state``, a row group at a time; the input names and shards it held.

    ``SinkError`` naming the file when it is missing or unreadable.
    """
    path = join(root, rel)
    reader = _Reader(state)
    try:
        with fs.open(path, "rb") as f:
            file = pq.ParquetFile(f)
            for group in range(file.num_row_groups):  # one at a time: a few MB of Arrow memory
                for batch in file.read_row_group(group).to_batches():
                    reader.batch(batch)
    except FileNotFoundError as exc:
        raise SinkError(
            f"{path} is listed in the manifest but missing; restore it, or `pipeline run --fresh` "
            "to start the dataset over"
        ) from exc
    except (OSError, pa.ArrowException) as exc:
        raise SinkError(f"cannot read the resume state {path}: {exc}") from exc
    return reader.inputs, reader.shards


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
        held = read_file(fs, root, item["path"], state)
        if n:  # the first file is a snapshot, the later ones what changed since
            written[item["path"]] = held
        del held
    pa.default_memory_pool().release_unused()
    state.clean()
    manifest.state = state
    manifest.state_held = written
    return state


# --------------------------------------------------------------------------- writing


def _write(fs: fsspec.AbstractFileSystem, root: str, rank: int, seq: int, table: pa.Table,
           fenced: bool) -> tuple[str, int]:
    """Write ``table`` as a new state file (never over another); its path and size."""
    buf = io.BytesIO()
    shards = pc.sum(table.column("shard").cast(pa.int64())).as_py() or 0
    with pq.ParquetWriter(buf, SCHEMA, compression="zstd") as writer:
        writer.write_table(table.slice(0, table.num_rows - shards), row_group_size=ROW_GROUP)
        # a shard row holds a pair per source of its rows: fewer of them to a group
        writer.write_table(table.slice(table.num_rows - shards), row_group_size=SHARD_GROUP)
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
