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
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.dataset.state import State
from pipeline.dataset.state_base import Column, Filling, Inputs, Pairs, Shards, Strings, Texts, prefixes
from pipeline.errors import SinkError
from pipeline.storage import is_local, join

STATE_DIR = "_state"
STATE_NAME = re.compile(r"part-(\d{5})-(\d{6,})\.parquet$")
#: input rows written (and read) at a time: a reader's buffers for a group are several times its size
ROW_GROUP = 16_384
SHARD_GROUP = 16
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


class _Loader:
    """Reads state files, in order, into the compact columns of a :class:`State` (:mod:`state_base`).

    The input rows of every file pile up as arrays (a row group at a time);
    :meth:`state` then keeps the last row of each name, drops the deleted
    ones and indexes the rest. Shard rows keep their sources and marks packed.
    """

    def __init__(self, capacity: int) -> None:
        """``capacity``: about how many rows the files hold (the manifest says)."""
        self.names = Texts()
        self.hashes = Filling(np.int64, capacity)
        self.deleted = Filling(bool, capacity)
        self.ints = {c: (Filling(np.int64, capacity), Filling(bool, capacity)) for c in ("progress", "end")}
        self.signatures = Strings(capacity)
        self.pieces: list[tuple[int, str]] = []  # (row, name) of the names that are pieces of a url
        self.offsets: dict[str, list[list[int]]] = {}
        self.sources, self.marks = Shards(), Shards()
        self.rows = 0
        self.files = 0

    def batch(self, batch: pa.RecordBatch, held: tuple[set[str], set[str]] | None) -> None:
        shard = np.asarray(batch.column("shard").fill_null(False))
        if not shard.any():
            self._inputs(batch, held)
        elif shard.all():
            self._shards(batch, held)
        else:
            self.batch(batch.filter(pa.array(~shard)), held)
            self.batch(batch.filter(pa.array(shard)), held)

    def _inputs(self, batch: pa.RecordBatch, held: tuple[set[str], set[str]] | None) -> None:
        column = batch.column("name")
        names = column.to_pylist()
        self.hashes.extend(np.fromiter(map(hash, names), np.int64, len(names)))
        self.deleted.extend(np.asarray(batch.column("deleted").fill_null(False)))
        for name, (values, valid) in self.ints.items():
            values.extend(np.asarray(batch.column(name).fill_null(0)))
            valid.extend(np.asarray(batch.column(name).is_valid()))
        self.signatures.extend(batch.column("signature"))
        pieces = np.flatnonzero(np.asarray(pc.match_substring(column, "#").fill_null(False)))
        self.pieces += [(self.rows + i, names[i]) for i in pieces.tolist()]
        offsets = batch.column("offsets")
        if offsets.null_count < len(offsets) or self.offsets:  # few inputs have any: kept as a dict
            for name, value in zip(names, offsets.to_pylist()):
                if value is None:
                    self.offsets.pop(name, None)
                else:
                    self.offsets[name] = [[int(n), int(o)] for n, o in value]
        self.names.extend(column)
        self.rows += len(names)
        if held is not None:
            held[0].update(names)

    def _shards(self, batch: pa.RecordBatch, held: tuple[set[str], set[str]] | None) -> None:
        paths = batch.column("name").to_pylist()
        deleted = batch.column("deleted").fill_null(False).to_pylist()
        packed = {c: _packed(batch.column(c)) for c in ("sources", "marks")}
        for i, path in enumerate(paths):
            marks = packed["marks"][i]
            self.sources.load(path, None if deleted[i] else packed["sources"][i])
            self.marks.load(path, None if deleted[i] else {} if marks is None else marks)
        if held is not None:
            held[1].update(paths)

    def state(self) -> State:
        """The state the files hold: the last row of each name, unless it is a deletion."""
        state = State()
        state.offsets, state.sources, state.marks = self.offsets, self.sources, self.marks
        if not self.rows:
            return state
        hashes, deleted = self.hashes.done(), self.deleted.done()
        keep = None  # every row as it is: one file (it holds a name once) without deletions
        if self.files > 1 or deleted.any():
            order = np.argsort(hashes, kind="stable")
            last = np.ones(len(order), bool)
            last[:-1] = hashes[order][1:] != hashes[order][:-1]
            rows = np.sort(order[last][~deleted[order[last]]])
            del order, last
            if len(rows) < len(hashes):
                keep, hashes = rows, hashes[rows]
        del deleted

        def kept(filled: Filling) -> np.ndarray:
            return filled.done() if keep is None else filled.done()[keep]

        on = set(keep.tolist()) if self.pieces and keep is not None else None
        pieces: dict[str, list[str]] = {}
        for row, name in self.pieces:
            if on is None or row in on:
                for url in prefixes(name):
                    pieces.setdefault(url, []).append(name)
        inputs = Inputs(self.names, keep, hashes, *(
            (kept(values), kept(valid)) for values, valid in self.ints.values()), self.signatures.done(keep), pieces)
        state.progress, state.ends, state.files = (Column(kind, inputs) for kind in ("progress", "end", "signature"))
        return state


def _packed(column: pa.Array) -> list[Pairs | None]:
    """A list<struct<name, value>> column, a :class:`Pairs` per row (None for a null)."""
    flat = column.flatten()
    names, values = flat.field("name"), np.asarray(flat.field("value").fill_null(0))
    offsets = np.asarray(column.offsets)
    offsets = offsets - offsets[0] if len(offsets) else offsets
    valid = np.asarray(column.is_valid())
    return [Pairs(names.slice(offsets[i], offsets[i + 1] - offsets[i]), values[offsets[i]:offsets[i + 1]])
            if ok else None for i, ok in enumerate(valid)]


def apply_table(table: pa.Table) -> State:
    """The state the rows of one state file hold."""
    loader = _Loader(table.num_rows)
    loader.files = 1
    for batch in table.to_batches():
        loader.batch(batch, None)
    return loader.state()


# --------------------------------------------------------------------------- reading


def read_file(fs: fsspec.AbstractFileSystem, root: str, rel: str, loader: _Loader,
              held: tuple[set[str], set[str]] | None) -> None:
    """Read one listed state file into ``loader``, a row group at a time (``held``: gets its names and shards).

    ``SinkError`` naming the file when it is missing or unreadable.
    """
    path = join(root, rel)
    loader.files += 1
    try:
        with fs.open(path, "rb") as f:
            file = pq.ParquetFile(f)
            pool = pa.default_memory_pool()
            for group in range(file.num_row_groups):  # one at a time: a few MB of Arrow memory
                for batch in file.read_row_group(group, use_threads=False).to_batches():
                    loader.batch(batch, held)
                pool.release_unused()  # else the allocator keeps what each group took: 100 MB more at 1M inputs
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
    loader = _Loader(sum(int(item.get("rows") or 0) for item in manifest.state_files))
    for n, item in enumerate(manifest.state_files):
        held: tuple[set[str], set[str]] | None = None
        if n:  # the first file is a snapshot, the later ones what changed since
            held = written[item["path"]] = (set(), set())
        read_file(fs, root, item["path"], loader, held)
    state = loader.state()
    del loader
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
