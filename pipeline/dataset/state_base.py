"""The resume state as loaded from its files, kept compact: columns, not a Python object per input.

A dataset of a million inputs holds a million names in each of its state's
tables (how far each is committed, its end, its signature) and again in the
sources and marks of its shards: as Python dicts, that is about 500 MB and
seconds to build. Here the rows read from ``_state/`` (:mod:`state_files`)
stay in arrays (:class:`Inputs`): the names in zstd-compressed blocks, the
numbers in numpy arrays, the signatures end to end in one buffer (as Arrow
lays out strings; an S3 ETag in one as its 16 bytes, :class:`Signatures`),
and an index of the names' 64-bit hashes (an open-addressing table). Each
shard's sources and marks stay compressed (:class:`Pairs`) until asked for.
At a million inputs that is about 70 MB (signatures 30, numbers 18, index
17, names 5) and 7 MB of shards.

What a process changes goes to small dicts over them: :class:`Column` is a
``MutableMapping`` (name → value) made of the loaded rows, an overlay of the
names set since, and the loaded names removed since (tombstones); so every
caller keeps reading and writing ``state.progress`` or ``state.files`` as a
dict, while memory grows with the changes rather than with the inputs.

Names are found by their hash (``hash()``, so the index lives in one process
only): two of a million names share one with a chance of about 3 in 10^8,
and a name not loaded is taken for a loaded one with a chance of about 5 in
10^14 (the trade-off :mod:`pipeline.stages.ids` makes for ids).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, MutableMapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: names a compressed block holds
BLOCK = 1024
_CODEC = pa.Codec("zstd", compression_level=1)
#: rows decoded at a time when the loaded rows are walked
ITER_ROWS = 16_384
#: how full the hash index is (a lookup probes about 1 / (1 - LOAD) slots at worst, on average)
LOAD = 0.7


def prefixes(name: str) -> Iterator[str]:
    """The urls ``name`` is a piece of: each of its beginnings that a ``#`` follows (see :func:`state.of_url`)."""
    at = name.find("#")
    while at >= 0:
        yield name[:at]
        at = name.find("#", at + 1)


def _buffers(array: pa.Array) -> tuple[np.ndarray, bytes]:
    """A string array's offsets (from 0) and its bytes, as they are in its buffers (no Python str per value)."""
    array = array.cast(pa.string())
    if len(array) == 0:
        return np.zeros(1, np.int32), b""
    offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset:array.offset + len(array) + 1]
    data = array.buffers()[2]
    start, stop = int(offsets[0]), int(offsets[-1])
    return (offsets - start).astype(np.int32), data.slice(start, stop - start).to_pybytes() if data else b""


class Texts:
    """Strings by row number, in compressed blocks of at most :data:`BLOCK` (a null is stored as "")."""

    def __init__(self) -> None:
        self._blocks: list[tuple[bytes, int, np.ndarray]] = []  # compressed data, its size, offsets
        self._firsts: list[int] = []  # the first row of each block
        self._starts = np.zeros(0, np.int64)
        self.rows = 0

    def extend(self, array: pa.Array) -> None:
        """Append the strings of ``array``."""
        for start in range(0, len(array), BLOCK):
            offsets, data = _buffers(array.slice(start, BLOCK))
            self._blocks.append((_CODEC.compress(data, asbytes=True) if data else b"", len(data), offsets))
            self._firsts.append(self.rows)
            self.rows += len(offsets) - 1

    def _which(self, rows: np.ndarray) -> np.ndarray:
        if len(self._starts) != len(self._firsts):
            self._starts = np.asarray(self._firsts, np.int64)
        return np.searchsorted(self._starts, rows, side="right") - 1

    def get(self, row: int) -> str:
        """The string of ``row`` (its block unpacked: for the odd one, a message)."""
        return self.arrays(np.asarray([row], np.int64)).to_pylist()[0]

    def arrays(self, rows: np.ndarray) -> pa.ChunkedArray:
        """The strings of ``rows`` (ascending) as Arrow arrays, a block at a time (no Python str per value)."""
        blocks = self._which(rows)
        bounds = np.flatnonzero(np.diff(blocks)) + 1
        chunks = []
        for part in np.split(np.arange(len(rows)), bounds) if len(rows) else []:
            b = int(blocks[part[0]])
            packed, size, offsets = self._blocks[b]
            data = _CODEC.decompress(packed, size, asbytes=True) if size else b""
            block = pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))
            chunks.append(block.take(pa.array(rows[part] - self._firsts[b])))
        return pa.chunked_array(chunks, pa.string())

    def nbytes(self) -> int:
        return sum(len(p) + o.nbytes for p, _, o in self._blocks)


class Filling:
    """A numpy array filled a batch at a time, allocated once for the rows the manifest says the files hold.

    (Arrays joined at the end would take twice the memory for a moment, and
    the allocator does not give back the many small ones it freed.)
    """

    def __init__(self, dtype: Any, capacity: int) -> None:
        self._array = np.empty(max(capacity, 16), dtype)
        self.size = 0

    def extend(self, values: Any) -> None:
        end = self.size + len(values)
        if end > len(self._array):  # more rows than the manifest said: grow
            bigger = np.empty(max(end, 2 * len(self._array)), self._array.dtype)
            bigger[:self.size] = self._array[:self.size]
            self._array = bigger
        self._array[self.size:end] = values
        self.size = end

    def done(self) -> np.ndarray:
        """The values (a view: the few rows to spare stay allocated)."""
        return self._array[:self.size]


class Strings:
    """Strings by position, as Arrow keeps them: their bytes end to end and where each begins (and validity)."""

    def __init__(self, capacity: int = 0) -> None:
        self.data = bytearray()
        self._offsets = Filling(np.int64, capacity + 1)
        self._offsets.extend([0])
        self._valid = Filling(bool, capacity)
        self.offsets = np.zeros(1, np.int64)
        self.valid = np.zeros(0, bool)

    def extend(self, array: pa.Array) -> None:
        """Append the strings of ``array`` (nulls too)."""
        offsets, data = _buffers(array)
        self._offsets.extend(offsets[1:].astype(np.int64) + len(self.data))
        self._valid.extend(np.asarray(array.is_valid()))
        self.data += data

    def done(self, keep: np.ndarray | None) -> Strings:
        """No more strings; ``keep``: only those at these positions (in order)."""
        self.offsets, self.valid = self._offsets.done(), self._valid.done()
        if keep is not None:
            starts, stops = self.offsets[keep], self.offsets[keep + 1]
            data = bytearray()
            for a, b in zip(starts.tolist(), stops.tolist()):  # rows to drop are few; rows kept are copied
                data += self.data[a:b]
            self.data = data
            self.offsets = np.concatenate([[0], np.cumsum(stops - starts)]).astype(np.int64)
            self.valid = self.valid[keep]
        return self

    def nbytes(self) -> int:
        return len(self.data) + self.offsets.nbytes + self.valid.nbytes


#: a signature of an S3 object put whole: its size and its ETag of 32 hex digits (``1200:"0a1b..."``)
_ETAG_SIGNATURE = r'^[0-9]+:"[0-9a-f]{32}"$'
#: each byte's value as a hex digit
_NIBBLE = np.zeros(256, np.uint8)
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)


class Signatures(Strings):
    """Signatures, a size and ETag of 32 hex digits (``1200:"0a1b..."``) kept as the size's digits, a 0xFF
    (a byte UTF-8 never holds) and the ETag's 16 bytes: 21 bytes rather than 39. Others are kept as they are."""

    def extend(self, array: pa.Array) -> None:
        array = array.cast(pa.string())
        etags = np.asarray(pc.match_substring_regex(array, _ETAG_SIGNATURE).fill_null(False))
        if not etags.any():
            super().extend(array)
            return
        offsets, data = _buffers(array)
        raw = np.frombuffer(data, np.uint8)
        ends = offsets[1:][etags].astype(np.int64)  # each is digits, ':', '"', 32 hex digits, '"'
        out, kept = raw.copy(), np.ones(len(raw), bool)
        out[ends - 35] = 0xFF
        kept[ends - 34] = kept[ends - 1] = False
        pairs = (ends - 33)[:, None] + np.arange(0, 32, 2)[None, :]
        out[pairs] = (_NIBBLE[raw[pairs]] << 4) | _NIBBLE[raw[pairs + 1]]
        kept[pairs + 1] = False
        lengths = np.diff(offsets).astype(np.int64)
        lengths[etags] -= 18
        self._offsets.extend(np.cumsum(lengths) + len(self.data))
        self._valid.extend(np.asarray(array.is_valid()))
        self.data += out[kept].tobytes()


def signature_text(data: bytes | bytearray) -> str:
    """A signature as :class:`Signatures` keeps it, as text again."""
    if len(data) >= 17 and data[-17] == 0xFF:
        return f'{data[:-17].decode()}:"{data[-16:].hex()}"'
    return data.decode()


class Inputs:
    """The input rows loaded from the state files: one per name (the last written), deleted ones left out.

    ``j`` below is a row's position here (in the order the files hold them:
    a snapshot's by name). A column (``progress``, ``end``, ``signature``)
    may lack a value for a name that has others.
    """

    def __init__(self, names: Texts, rows: np.ndarray | None, hashes: np.ndarray,
                 progress: tuple[np.ndarray, np.ndarray], ends: tuple[np.ndarray, np.ndarray],
                 signatures: Strings, pieces: dict[str, list[str]]) -> None:
        """``rows``: each position's row in ``names`` (None: the same), ``hashes``: each position's name's."""
        self._names, self._rows, self._count = names, rows, len(hashes)
        self._keys, self._at = _table(hashes)
        self._size = len(self._keys)
        self._ints = {"progress": progress, "end": ends}
        self._sig = signatures
        self._counts = {"progress": int(progress[1].sum()), "end": int(ends[1].sum()),
                        "signature": int(signatures.valid.sum())}
        # memoryviews: indexing one gives a Python int or bool, several times faster than a numpy scalar
        self._key_view, self._at_view = memoryview(self._keys), memoryview(self._at)
        #: url → the loaded names that are its pieces (``url#bytes=...``)
        self.pieces = pieces

    def __len__(self) -> int:
        return self._count

    def find(self, name: str) -> int:
        """The position of ``name``'s row, -1 when none was loaded."""
        h = hash(name)
        keys, at, size = self._key_view, self._at_view, self._size
        slot = h % size
        while True:
            j = at[slot]
            if not j:
                return -1
            if keys[slot] == h:
                return j - 1
            slot = slot + 1 if slot + 1 < size else 0

    def reader(self, column: str) -> tuple[memoryview, Callable[[int], Any]]:
        """Whether each row holds a value in ``column``, and the function giving row ``j``'s value."""
        if column == "signature":
            offsets, data = memoryview(self._sig.offsets), self._sig.data

            def signature(j: int) -> str:
                return signature_text(data[offsets[j]:offsets[j + 1]])

            return memoryview(self._sig.valid), signature
        values, valid = self._ints[column]
        return memoryview(valid), memoryview(values).__getitem__

    def has(self, column: str, j: int) -> bool:
        """Whether row ``j`` holds a value in ``column``."""
        return bool(self._valid(column)[j])

    def value(self, column: str, j: int) -> Any:
        """Row ``j``'s value in ``column`` (it must hold one)."""
        return self.reader(column)[1](j)

    def _valid(self, column: str) -> np.ndarray:
        return self._sig.valid if column == "signature" else self._ints[column][1]

    def count(self, column: str) -> int:
        """How many rows hold a value in ``column``."""
        return self._counts[column]

    def items(self, column: str, values: bool = True) -> Iterator[tuple[str, Any]]:
        """The name (and value, else None) of every row holding a value in ``column``, in row order.

        A few thousand rows at a time, decoded by Arrow: no array of a million positions, nor a call per row.
        """
        held = self._valid(column)
        for start in range(0, len(held), ITER_ROWS):
            part = np.flatnonzero(held[start:start + ITER_ROWS]) + start
            if not len(part):
                continue
            names = self._names.arrays(part if self._rows is None else self._rows[part]).to_pylist()
            if not values:
                found: list[Any] = [None] * len(names)
            elif column == "signature":
                found = self._signatures(part)
            else:
                found = self._ints[column][0][part].tolist()
            yield from zip(names, found)

    def names(self, positions: np.ndarray) -> list[str]:
        """The names of the rows at ``positions`` (ascending)."""
        return self._names.arrays(positions if self._rows is None else self._rows[positions]).to_pylist()

    def table(self, positions: np.ndarray, used: Mapping[str, bool]) -> dict[str, pa.Array]:
        """The rows at ``positions`` (ascending) as Arrow columns; a column not ``used`` is left empty."""
        rows = positions if self._rows is None else self._rows[positions]
        out: dict[str, pa.Array] = {"name": self._names.arrays(rows).combine_chunks()}
        for kind, (values, valid) in self._ints.items():
            out[kind] = (pa.array(values[positions], pa.int64(), mask=~valid[positions]) if used[kind]
                         else pa.nulls(len(positions), pa.int64()))
        if used["signature"]:
            valid = self._sig.valid[positions]
            found = iter(self._signatures(positions[valid]))
            out["signature"] = pa.array([next(found) if ok else None for ok in valid.tolist()], pa.string())
        else:
            out["signature"] = pa.nulls(len(positions), pa.string())
        return out

    def _signatures(self, positions: np.ndarray) -> list[str]:
        """The signatures of the rows at ``positions`` (each holding one), as text."""
        sig = self._sig
        every = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(sig.valid),
                                                 [None, pa.py_buffer(sig.offsets), pa.py_buffer(sig.data)])
        return [signature_text(data) for data in every.take(pa.array(positions)).to_pylist()]

    def held(self, used: Mapping[str, bool]) -> np.ndarray:
        """Whether each row holds a value in one of the ``used`` columns."""
        held = np.zeros(self._count, bool)
        for kind, on in used.items():
            if on:
                held |= self._valid(kind)
        return held

    def nbytes(self) -> dict[str, int]:
        """The memory the rows take, by part."""
        return {"names": self._names.nbytes(), "index": self._keys.nbytes + self._at.nbytes
                + (0 if self._rows is None else self._rows.nbytes),
                "numbers": sum(v.nbytes + ok.nbytes for v, ok in self._ints.values()),
                "signatures": self._sig.nbytes()}


_MISSING = object()


def _chunks(values: Iterable[str]) -> Iterator[list[str]]:
    """``values`` :data:`ITER_ROWS` at a time."""
    chunk: list[str] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == ITER_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _table(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An open-addressing hash table of ``hashes`` (linear probing, :data:`LOAD` full), built with numpy.

    Slot ``s`` holds a hash in the first array and, in the second, its
    position in ``hashes`` plus one (0: an empty slot). Inserted in the
    order of their home slots, the k-th name lands at ``max(home, slot of
    the one before + 1)``: a running maximum, no loop over names.
    """
    size = max(16, int(len(hashes) / LOAD) + 1)
    small = np.int32 if size < 2**31 - 1 else np.int64  # the temporary arrays: half the memory
    keys = np.zeros(size, np.int64)
    at = np.zeros(size, small)
    n = len(hashes)
    home = np.empty(n, small)
    for a in range(0, n, ITER_ROWS):  # a chunk at a time: no temporary array of them all
        home[a:a + ITER_ROWS] = hashes[a:a + ITER_ROWS] % size
    order = np.argsort(home, kind="stable").astype(small)
    home = home[order]
    for a in range(0, n, ITER_ROWS):
        home[a:a + ITER_ROWS] -= np.arange(a, min(n, a + ITER_ROWS), dtype=small)
    np.maximum.accumulate(home, out=home)
    for a in range(0, n, ITER_ROWS):
        home[a:a + ITER_ROWS] += np.arange(a, min(n, a + ITER_ROWS), dtype=small)
    # each name's slot, in order (past the end for the last ones of a full run)
    inside = int(np.searchsorted(home, size))  # slots only grow: those past the end are the last ones
    for a in range(0, inside, ITER_ROWS):
        b = min(inside, a + ITER_ROWS)
        keys[home[a:b]] = hashes[order[a:b]]
        at[home[a:b]] = order[a:b] + 1
    for j in order[inside:].tolist():  # the few that ran past the end go on from the start
        slot = 0
        while at[slot]:
            slot += 1
        keys[slot], at[slot] = hashes[j], j + 1
    return keys, at


class Column(MutableMapping[str, Any]):
    """One column of the input rows (name → value) as a dict: the loaded rows, what was set since, what was removed."""

    def __init__(self, kind: str, base: Inputs | None = None, over: dict[str, Any] | None = None) -> None:
        self._kind, self._base = kind, base
        self._over: dict[str, Any] = {}
        self._gone: set[str] = set()  # loaded names removed since
        self._extra = 0  # names set since that were not loaded
        self._pieces: dict[str, set[str]] = {}  # url → names set since that are its pieces
        if base is not None:  # bound once: a lookup is a few calls, not a few dozen
            self._find = base.find
            self._held, self._value = base.reader(kind)
        for name, value in (over or {}).items():
            self[name] = value

    def _loaded(self, name: str) -> int:
        if self._base is None:
            return -1
        j = self._find(name)
        return j if j >= 0 and self._held[j] else -1

    def __getitem__(self, name: str) -> Any:
        value = self._over.get(name, _MISSING)
        if value is not _MISSING:
            return value
        j = -1 if name in self._gone else self._loaded(name)
        if j < 0:
            raise KeyError(name)
        return self._value(j)

    def get(self, name: str, default: Any = None) -> Any:
        value = self._over.get(name, _MISSING)
        if value is not _MISSING:
            return value
        if self._base is None or name in self._gone:
            return default
        j = self._find(name)
        return self._value(j) if j >= 0 and self._held[j] else default

    def __contains__(self, name: object) -> bool:
        if name in self._over:
            return True
        return isinstance(name, str) and name not in self._gone and self._loaded(name) >= 0

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_many(((name, value),))

    def set_many(self, items: Iterable[tuple[str, Any]]) -> None:
        """``self[name] = value`` for each pair, in one call (a commit of many small files sets thousands)."""
        over, gone = self._over, self._gone
        if self._base is None and not gone:  # (a new dataset's first commit: names only added, in bulk)
            added = dict(items)
            self._extra += sum(1 for name in added if name not in over)
            for name in added:
                if "#" in name:
                    self._note_piece(name)
            over.update(added)
            return
        for name, value in items:
            if name not in over:
                if name in gone:
                    gone.discard(name)
                elif self._loaded(name) < 0:
                    self._extra += 1
                if "#" in name:
                    self._note_piece(name)
            over[name] = value

    def _note_piece(self, name: str) -> None:
        """Index ``name`` (a piece of an input: ``url#bytes=...``) under its url."""
        for url in prefixes(name):
            self._pieces.setdefault(url, set()).add(name)

    def __delitem__(self, name: str) -> None:
        if name in self._over:
            del self._over[name]
            if self._loaded(name) >= 0:
                self._gone.add(name)
            else:
                self._extra -= 1
        elif name not in self._gone and self._loaded(name) >= 0:
            self._gone.add(name)
        else:
            raise KeyError(name)

    def __len__(self) -> int:
        loaded = self._base.count(self._kind) if self._base is not None else 0
        return loaded - len(self._gone) + self._extra

    def __iter__(self) -> Iterator[str]:
        return iter(self._over) if self._base is None else self._walk()

    def _walk(self) -> Iterator[str]:
        skip = self._over.keys() | self._gone if (self._over or self._gone) else ()
        for name, _ in self._base.items(self._kind, values=False):  # type: ignore[union-attr]
            if name not in skip:
                yield name
        yield from self._over

    def getter(self) -> Callable[[str], Any]:
        """:meth:`get` with no default, as fast as the column allows (a dict's own when nothing was loaded)."""
        return self._over.get if self._base is None else self.get

    def items(self) -> Any:
        return _Items(self)

    @property
    def base(self) -> Inputs | None:
        """The loaded rows under the column (None: it holds only what was set since)."""
        return self._base

    def touched(self) -> set[str]:
        """The names set or removed since the load."""
        return self._over.keys() | self._gone

    def of_url(self, url: str) -> list[str]:
        """The names held that are input ``url`` or one of its pieces (``url#bytes=...``), without a scan."""
        found = set(self._base.pieces.get(url, ())) if self._base is not None else set()
        found |= self._pieces.get(url, set())
        found.add(url)
        return sorted(name for name in found if name in self)

    def unlisted(self, urls: Iterable[str]) -> list[str]:
        """The names held that are none of ``urls``, in row order then set order.

        Each of ``urls`` is looked up in the loaded rows' index and marks the
        row it finds (a byte per row): no index of ``urls`` is built, so a
        listing of a million urls costs 1 MB here rather than some 30.
        """
        seen = np.zeros(len(self._base) if self._base is not None else 0, bool)
        over = set(self._over)  # never among the removed
        listed_over: set[str] = set()
        find = self._find if self._base is not None else None
        for chunk in _chunks(urls):
            if find is not None:
                at = [j for j in map(find, chunk) if j >= 0]
                seen[at] = True
            if over:
                listed_over.update(url for url in chunk if url in over)
        out: list[str] = []
        if self._base is not None:
            held = self._base._valid(self._kind) & ~seen
            skip = self._over.keys() | self._gone
            for start in range(0, len(held), ITER_ROWS):
                part = np.flatnonzero(held[start:start + ITER_ROWS]) + start
                if len(part):
                    out += (name for name in self._base.names(part) if name not in skip)
        return out + [name for name in self._over if name not in listed_over]

    def copy(self) -> Column:
        """Another column over the same loaded rows (which never change), with a copy of the changes."""
        out = Column(self._kind, self._base)
        out._over, out._gone, out._extra = dict(self._over), set(self._gone), self._extra
        out._pieces = {url: set(names) for url, names in self._pieces.items()}
        return out

    def __repr__(self) -> str:
        return f"Column({self._kind!r}, {len(self)} names)"


class _Items:
    """``Column.items()``: the loaded values read as the rows go by, rather than looked up by name."""

    def __init__(self, column: Column) -> None:
        self._c = column

    def __len__(self) -> int:
        return len(self._c)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        c = self._c
        if c._base is not None:
            skip = c._over.keys() | c._gone if (c._over or c._gone) else ()
            for name, value in c._base.items(c._kind):
                if name not in skip:
                    yield name, value
        yield from c._over.items()


class Pairs:
    """One shard's sources or marks (name → int), compressed until asked for."""

    __slots__ = ("_names", "_size", "_offsets", "_values", "_count")

    def __init__(self, names: pa.Array, values: np.ndarray) -> None:
        offsets, data = _buffers(names)
        self._count = len(offsets) - 1
        self._names, self._size = _CODEC.compress(data, asbytes=True) if data else b"", len(data)
        self._offsets = _CODEC.compress(offsets.tobytes(), asbytes=True)
        self._values = _CODEC.compress(np.ascontiguousarray(values, np.int64).tobytes(), asbytes=True)

    def arrays(self) -> tuple[pa.Array, np.ndarray]:
        """The names (an Arrow array) and their values."""
        count = len(self)
        offsets = _CODEC.decompress(self._offsets, 4 * (count + 1), asbytes=True)
        data = _CODEC.decompress(self._names, self._size, asbytes=True) if self._size else b""
        values = np.frombuffer(_CODEC.decompress(self._values, 8 * count, asbytes=True), np.int64)
        return pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(data)), values

    def decode(self) -> dict[str, int]:
        names, values = self.arrays()
        return dict(zip(names.to_pylist(), values.tolist()))

    def __len__(self) -> int:
        return self._count


class Shards(MutableMapping[str, Any]):
    """Shard path → a dict (its sources, or its marks), the loaded ones unpacked when asked for."""

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(items or {})

    def __getitem__(self, path: str) -> Any:
        value = self._data[path]
        return value.decode() if isinstance(value, Pairs) else value

    def __setitem__(self, path: str, value: Any) -> None:
        self._data[path] = value

    def __delitem__(self, path: str) -> None:
        del self._data[path]

    def __contains__(self, path: object) -> bool:
        return path in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def raw(self, path: str) -> Any:
        """What the shard holds as kept: a dict, a :class:`Pairs`, or None when absent."""
        return self._data.get(path)

    def take(self, other: Shards) -> None:
        """``update`` with ``other``'s shards as they are (the loaded ones stay packed)."""
        self._data.update(other._data)

    def load(self, path: str, value: Any) -> None:
        """A shard row read from a file: it holds ``value`` (None: it does not say)."""
        self._data.pop(path, None)
        if value is not None:
            self._data[path] = value

    def copy(self) -> Shards:
        return Shards(self._data)

    def __repr__(self) -> str:
        return f"Shards({len(self)} shards)"


def column(kind: str, value: Mapping[str, Any] | None) -> Column:
    """``value`` as a :class:`Column` (itself when it is one)."""
    return value if isinstance(value, Column) else Column(kind, None, dict(value or {}))


def shards(value: Mapping[str, Any] | None) -> Shards:
    """``value`` as a :class:`Shards` (itself when it is one)."""
    return value if isinstance(value, Shards) else Shards(value)

