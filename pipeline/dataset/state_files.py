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
from typing import Any, Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.dataset.state import State
from pipeline.dataset.state_base import Column, Filling, Inputs, Pairs, Shards, Signatures, Texts, prefixes
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


def _pairs_array(rows: list[Any]) -> pa.Array:
    """A list<struct<name, value>> array of dicts or :class:`Pairs` (None: a null), built from flat columns."""
    offsets, names, values, mask = [0], [], [], []
    for row in rows:
        if isinstance(row, Pairs):
            n, v = row.arrays()
        elif row is not None:
            n, v = pa.array(list(row), pa.string()), np.fromiter(row.values(), np.int64, len(row))
        else:
            n, v = pa.array([], pa.string()), np.empty(0, np.int64)
        names.append(n)
        values.append(v)
        offsets.append(offsets[-1] + len(v))
        mask.append(row is None)
    items = pa.StructArray.from_arrays([pa.concat_arrays(names) if names else pa.array([], pa.string()),
                                        pa.array(np.concatenate(values) if values else [], pa.int64())],
                                       names=["name", "value"])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), items, mask=pa.array(mask, pa.bool_())).cast(_PAIRS)


def _loaded_rows(state: State) -> tuple[Inputs | None, np.ndarray, dict[str, bool], set[str]]:
    """For a snapshot: the loaded rows untouched since (their base, positions, columns) and the other names.

    Copied from the loaded arrays, a million rows take a second rather than
    a million lookups; the names set or removed since are written from the
    dicts over them (all of them, when the tables were not loaded together).
    """
    columns = {"progress": state.progress, "end": state.ends, "signature": state.files}
    bases = {id(c.base): c.base for c in columns.values() if c.base is not None}
    if len(bases) != 1:
        return None, np.empty(0, np.int64), {}, state.names()
    base = next(iter(bases.values()))
    used = {kind: c.base is base for kind, c in columns.items()}
    others = set(state.offsets)
    for c in columns.values():
        others |= set(c) if c.base is None else c.touched()
    keep = base.held(used)
    for name in others:
        j = base.find(name)
        if j >= 0:
            keep[j] = False
    p, e, f, o = state.progress, state.ends, state.files, state.offsets
    return base, np.flatnonzero(keep), used, {x for x in others if x in p or x in e or x in f or x in o}


def _base_part(base: Inputs, positions: np.ndarray, used: dict[str, bool]) -> pa.Table:
    arrays = base.table(positions, used)
    n = len(positions)
    return pa.table({
        "name": arrays["name"], "shard": pa.array(np.zeros(n, bool)), "deleted": pa.array(np.zeros(n, bool)),
        "progress": arrays["progress"], "end": arrays["end"], "signature": arrays["signature"],
        "offsets": pa.nulls(n, SCHEMA.field("offsets").type), "sources": pa.nulls(n, _PAIRS),
        "marks": pa.nulls(n, _PAIRS)}, schema=SCHEMA)


def _inputs_part(state: State, inputs: list[str]) -> pa.Table:
    p, e, f = (c.getter() for c in (state.progress, state.ends, state.files))  # their values are never None
    o = state.offsets.get
    n = len(inputs)
    columns = {"name": inputs, "shard": [False] * n, "progress": [p(x) for x in inputs],
               "end": [e(x) for x in inputs], "signature": [f(x) for x in inputs], "offsets": [o(x) for x in inputs]}
    columns["deleted"] = [a is None and b is None and c is None and d is None
                          for a, b, c, d in zip(*(columns[k] for k in ("progress", "end", "signature", "offsets")))]
    arrays = {c: pa.array(v, type=SCHEMA.field(c).type) for c, v in columns.items()}
    arrays["sources"] = arrays["marks"] = pa.nulls(n, _PAIRS)
    return pa.table(arrays, schema=SCHEMA)


def _shards_part(state: State, paths: list[str]) -> pa.Table:
    k = len(paths)
    arrays = {"name": pa.array(paths, pa.string()), "shard": pa.array([True] * k, pa.bool_()),
              "deleted": pa.array([not (x in state.sources or x in state.marks) for x in paths], pa.bool_()),
              **{c: pa.nulls(k, SCHEMA.field(c).type) for c in ("progress", "end", "signature", "offsets")},
              "sources": _pairs_array([state.sources.raw(x) for x in paths]),
              "marks": _pairs_array([state.marks.raw(x) for x in paths])}
    return pa.table(arrays, schema=SCHEMA)


def parts(state: State, names: set[str] | None, shards: set[str]) -> Iterator[pa.Table]:
    """The rows of ``names`` (inputs) and ``shards`` as ``state`` holds them now (absent: ``deleted``),
    a row group at a time: inputs, then shards. ``names`` None: every input the state holds (a snapshot).
    """
    if names is None:
        base, positions, used, names = _loaded_rows(state)
        for start in range(0, len(positions), ROW_GROUP):
            yield _base_part(base, positions[start:start + ROW_GROUP], used)  # type: ignore[arg-type]
    inputs, paths = sorted(names), sorted(shards)
    for start in range(0, len(inputs), ROW_GROUP):
        yield _inputs_part(state, inputs[start:start + ROW_GROUP])
    # a shard row holds a pair per source of its rows: fewer of them to a group
    for start in range(0, len(paths), SHARD_GROUP):
        yield _shards_part(state, paths[start:start + SHARD_GROUP])


def to_table(state: State, names: set[str] | None, shards: set[str]) -> pa.Table:
    """:func:`parts` as one table."""
    return pa.concat_tables([SCHEMA.empty_table(), *parts(state, names, shards)])


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
        self.signatures = Signatures(capacity)
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


def _write(fs: fsspec.AbstractFileSystem, root: str, rank: int, seq: int, tables: Iterable[pa.Table],
           fenced: bool) -> tuple[str, int, int]:
    """Write ``tables`` (a row group each) as a new state file (never over another); its path, size and rows."""
    buf = io.BytesIO()
    rows = 0
    with pq.ParquetWriter(buf, SCHEMA, compression="zstd") as writer:
        for table in tables:
            writer.write_table(table, row_group_size=max(ROW_GROUP, table.num_rows))
            rows += table.num_rows
    data = buf.getvalue()
    while True:
        rel = state_path(rank, seq)
        path = join(root, rel)
        if not is_local(fs):
            if fenced and fs.exists(path):
                seq += 1  # another writer's (one that lost the lease, or a leftover): never overwrite
                continue
            fs.pipe_file(path, data, **({"mode": "create"} if fenced else {}))
            return rel, len(data), rows
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return rel, len(data), rows


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
        retired, files = files, []
        held = {}
        tables = parts(state, None, state.shard_paths())  # None: every input, the loaded rows as arrays
    else:
        # merge into the newest files as long as they are not bigger than what goes with them
        while len(files) > 1 and (files[-1]["rows"] <= len(names) + len(shards) or len(files) >= MAX_FILES):
            gone = files.pop()
            old_names, old_shards = held.pop(gone["path"], (set(), set()))
            names |= old_names
            shards |= old_shards
            retired.append(gone)
        tables = parts(state, names, shards)
    rel, size, rows = _write(fs, root, rank, seq, tables, fenced)
    item = {"path": rel, "rows": rows, "bytes": size}
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
