"""The listed inputs, kept column by column: a million listed objects in about 60 MB.

A bucket can hold millions of objects. As :class:`~pipeline.types.InputFile`
values each would cost about 500 bytes (an object and five strings), plus
the sets and lists a run keeps of them. A :class:`Listing` keeps each listed
file as its relative path's and its modification time's bytes (an S3 ETag
as its 16 bytes) and a few numbers (its path is a root added to its
relative path, its url a prefix added to its path); an
:class:`Inputs` is a sequence of some of its files (or of pieces of them),
in order, as an array of row numbers. ``InputFile`` values are made one at
a time, when an input is looked at or read.
"""

from __future__ import annotations

import re
from array import array
from itertools import accumulate, islice
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator, Sequence, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.types import InputFile

#: how a piece of a large file is named after its format (``InputFile.part``)
PIECE_UNITS = {"jsonl": "bytes", "parquet": "row_groups"}


def piece_part(fmt: str, start: int, end: int) -> str:
    """The ``part`` of the piece ``[start, end)`` of a file of format ``fmt`` (bytes or row groups)."""
    return f"#{PIECE_UNITS[fmt]}={start}-{end}"


class _Strings:
    """A column of strings (None allowed): their UTF-8 bytes end to end, and where each starts.

    Where each starts takes 4 bytes while the bytes are under 4 GB, 8 beyond.
    """

    def __init__(self) -> None:
        self._data = bytearray()
        self._starts = array("I", [0])
        self._none: set[int] = set()

    def append(self, value: str | None) -> None:
        if value is None:
            self._none.add(len(self._starts) - 1)
            self._starts.append(len(self._data))
        else:
            self._add(value.encode("utf-8", "surrogatepass"))  # a local name need not be valid UTF-8

    def _add(self, data: bytes) -> None:
        self._data += data
        self._widen()
        self._starts.append(len(self._data))

    def _widen(self) -> None:
        """Where values start, as 8-byte numbers once the bytes reach 4 GB."""
        if self._starts.typecode == "I" and len(self._data) >= 2**32:
            self._starts = array("q", self._starts)

    def extend(self, values: list[str]) -> None:
        """:meth:`append` of each of ``values`` (no None), in one call: their bytes joined once."""
        joined = "".join(values)
        if joined.isascii():  # (most names) a character a byte: the lengths are the strings'
            self._extend(joined.encode("ascii"), list(map(len, values)))
        else:
            encoded = [value.encode("utf-8", "surrogatepass") for value in values]
            self._extend(b"".join(encoded), list(map(len, encoded)))

    def _extend(self, data: bytes, lengths: list[int]) -> None:
        """Add values of ``lengths`` bytes, whose bytes are ``data`` end to end."""
        base = len(self._data)
        self._data += data
        self._widen()
        self._starts.extend(islice(accumulate(lengths, initial=base), 1, None))

    def raw(self, i: int) -> bytes | None:
        """The bytes of ``i`` (None: a None)."""
        if self._none and i in self._none:
            return None
        starts = self._starts
        return self._data[starts[i]:starts[i + 1]]

    def __getitem__(self, i: int) -> str | None:
        data = self.raw(i)
        return None if data is None else data.decode("utf-8", "surrogatepass")

    def arrow(self) -> pa.Array:
        """The column as an Arrow binary array (nulls read as empty)."""
        starts = np.frombuffer(self._starts, np.uint32 if self._starts.typecode == "I" else np.int64)
        return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(self._starts) - 1,
                                                [None, pa.py_buffer(starts.astype(np.int64)),
                                                 pa.py_buffer(self._data)])


class _Tags(_Strings):
    """A column of modification times or ETags: an ETag of 32 hex digits in quotes (S3's for an object put
    whole) kept as its 16 bytes, any other value as its UTF-8 bytes (one of 16 bytes with a 0xFF after it,
    a byte UTF-8 never holds)."""

    def append(self, value: str | None) -> None:
        if value is None:
            super().append(value)
        elif len(value) == 34 and value[0] == value[-1] == '"' and _HEX.fullmatch(value, 1, 33):
            self._add(bytes.fromhex(value[1:33]))
        else:
            data = value.encode("utf-8", "surrogatepass")
            self._add(data + b"\xff" if len(data) == 16 else data)

    def extend(self, values: list[str]) -> None:
        """:meth:`append` of each of ``values`` (no None): in one call when none is kept other than as is."""
        if any(len(value) == 34 for value in values) or not "".join(values).isascii():
            for value in values:
                self.append(value)
            return
        # a time's bytes are its characters; one of 16 (``1764600000.12345``) gets its 0xFF
        encoded = [value.encode("ascii") + b"\xff" if len(value) == 16 else value.encode("ascii") for value in values]
        self._extend(b"".join(encoded), list(map(len, encoded)))

    def __getitem__(self, i: int) -> str | None:
        data = self.raw(i)
        return None if data is None else self.decoded(data)

    @staticmethod
    def decoded(data: bytes | bytearray) -> str:
        """The value kept as ``data``."""
        if len(data) == 16:
            return f'"{data.hex()}"'
        return data[:16].decode("utf-8", "surrogatepass") if len(data) == 17 and data[16] == 0xFF else data.decode("utf-8", "surrogatepass")


_HEX = re.compile("[0-9a-f]{32}")


class _Codes:
    """A column of a few distinct values (formats, compressions): a byte per row."""

    def __init__(self) -> None:
        self._codes = bytearray()
        self._values: list[Any] = []

    def append(self, value: Any) -> None:
        if value not in self._values:
            self._values.append(value)
        self._codes.append(self._values.index(value))

    def extend(self, values: list[Any]) -> None:
        """:meth:`append` of each of ``values``."""
        codes: dict[Any, int] = {}
        for value in dict.fromkeys(values):  # each distinct value once
            if value not in self._values:
                self._values.append(value)
            codes[value] = self._values.index(value)
        self._codes += bytes(map(codes.__getitem__, values))

    def full(self, value: Any) -> bool:
        """Whether ``value`` is not one of the values and no other can be added."""
        return len(self._values) >= 255 and value not in self._values  # the 256th kept for ""

    def __getitem__(self, i: int) -> Any:
        return self._values[self._codes[i]]

    def where(self, value: Any) -> np.ndarray:
        """Which rows hold ``value``, as a boolean array."""
        codes = np.frombuffer(self._codes, np.uint8) if self._codes else np.zeros(0, np.uint8)
        return codes == self._values.index(value) if value in self._values else np.zeros(len(codes), bool)


class Listing:
    """Listed files, one row each in the order they were added: append while listing, then only read.

    A file's path is kept as its relative path after its root (the start of
    its path, one of a few a listing's files share: ``bucket/corpus/``), its
    url as its path after a prefix the listing's urls share (``s3://``); a
    file whose url or relative path is not so made is kept aside whole.
    """

    def __init__(self) -> None:
        self._rels = _Strings()  # the path after its root (the whole path for an odd row)
        self._roots = _Codes()
        self._mtimes = _Tags()
        self._sizes = array("q")  # -1: unknown
        self._formats = _Codes()
        self._compressions = _Codes()
        self._prefix: str | None = None  # url = prefix + path
        self._odd: dict[int, tuple[str, str]] = {}  # row → (url, rel_path) not made from the path
        self.in_order = True  # whether paths were added sorted
        self._last = ""

    def __len__(self) -> int:
        return len(self._sizes)

    def append(self, inp: InputFile) -> None:
        """Add the whole file ``inp`` is (or is a piece of)."""
        path, url, rel = inp.path, inp.url, inp.rel_path
        row = len(self._sizes)
        if self._prefix is None and url.endswith(path):
            self._prefix = url[:len(url) - len(path)]
        made = path.endswith(rel)  # the path is a root and the relative path
        root = path[:len(path) - len(rel)] if made else ""
        if self._roots.full(root):  # more roots than a byte tells: the path kept whole
            root, made = "", False
        if self._prefix is None or url != f"{self._prefix}{path}" or not made:
            self._odd[row] = (url, rel)
        if path < self._last:
            self.in_order = False
        self._last = path
        self._rels.append(path[len(root):])
        self._roots.append(root)
        self._mtimes.append(inp.mtime)
        self._sizes.append(-1 if inp.size is None else inp.size)
        self._formats.append(inp.format)
        self._compressions.append(inp.compression)

    def add_run(self, root: str, rels: list[str], sizes: list[int], mtimes: list[str], formats: list[str],
                compressions: list[str | None]) -> None:
        """:meth:`append` of the files ``root`` and each of ``rels`` make (sorted, known sizes), whose urls are
        their paths (a local folder's files), in one call: the columns extended once, not a file at a time."""
        if not rels:
            return
        if self._prefix is None:
            self._prefix = ""
        if self._prefix or self._roots.full(root):  # (urls not paths, or too many roots: kept as any file)
            for rel, size, mtime, fmt, compression in zip(rels, sizes, mtimes, formats, compressions):
                path = root + rel
                self.append(InputFile(path, path, size, fmt, compression, rel, mtime))
            return
        first = root + rels[0]
        if first < self._last or rels != sorted(rels):
            self.in_order = False
        self._last = root + rels[-1]
        self._rels.extend(rels)
        self._roots.extend([root] * len(rels))
        self._mtimes.extend(mtimes)
        self._sizes.extend(sizes)
        self._formats.extend(formats)
        self._compressions.extend(compressions)

    def _path(self, row: int) -> tuple[str, str]:
        """The path of ``row`` and what follows its root (made for every new input: the columns' reads
        spelled out here)."""
        rels, roots = self._rels, self._roots
        at = rels._starts
        rel = rels._data[at[row]:at[row + 1]].decode("utf-8", "surrogatepass")
        return f"{roots._values[roots._codes[row]]}{rel}", rel

    def url(self, row: int) -> str:
        if self._odd and row in self._odd:
            return self._odd[row][0]
        return f"{self._prefix}{self._path(row)[0]}"

    def file(self, row: int) -> InputFile:
        """The whole file of ``row`` (made often: a read of every column is spelled out here)."""
        formats, compressions = self._formats, self._compressions
        path, rel = self._path(row)
        size = self._sizes[row]
        if self._odd and row in self._odd:
            url, rel = self._odd[row]
        else:
            url = f"{self._prefix}{path}"
        # InputFile's fields in order: path, url, size, format, compression, rel_path, mtime
        return InputFile(path, url, None if size < 0 else size, formats._values[formats._codes[row]],
                         compressions._values[compressions._codes[row]], rel, self.mtime(row))

    def starting_with(self, prefix: str) -> np.ndarray:
        """Whether each row's url starts with ``prefix``, as a boolean array: told by root where it can be (a
        sink's folder beside the source's matches none of its files without a look at each)."""
        out = np.zeros(len(self), bool)
        codes = np.frombuffer(self._roots._codes, np.uint8) if len(self) else np.zeros(0, np.uint8)
        for code, root in enumerate(self._roots._values):
            whole = f"{self._prefix or ''}{root}"
            if whole.startswith(prefix):
                out[codes == code] = True
            elif prefix.startswith(whole):  # below this root: each of its files looked at
                for row in np.flatnonzero(codes == code).tolist():
                    out[row] = self.url(row).startswith(prefix)
        for row, (url, _) in self._odd.items():
            out[row] = url.startswith(prefix)
        return out

    def mtime(self, row: int) -> str | None:
        mtimes = self._mtimes
        if mtimes._none and row in mtimes._none:
            return None
        at = mtimes._starts  # (its raw read spelled out: once for each of many small files)
        return mtimes.decoded(mtimes._data[at[row]:at[row + 1]])

    def sizes(self) -> np.ndarray:
        """Every row's size (-1: unknown)."""
        return np.frombuffer(self._sizes, np.int64) if len(self) else np.zeros(0, np.int64)

    def formats(self) -> _Codes:
        return self._formats

    def sorted_rows(self) -> np.ndarray | None:
        """The rows in the order of their paths (as ``sorted`` orders strings); None when added in that order."""
        if self.in_order:
            return None
        paths = self._rels.arrow()
        if len(self._roots._values) > 1:  # the roots put back
            roots = pa.array([r.encode("utf-8", "surrogatepass") for r in self._roots._values], pa.large_binary())
            codes = np.frombuffer(self._roots._codes, np.uint8)
            paths = pc.binary_join_element_wise(roots.take(pa.array(codes)), paths, pa.scalar(b"", pa.large_binary()))
        # UTF-8 bytes sort as the code points they encode: Arrow's binary order is Python's str order
        return pc.sort_indices(paths).to_numpy().astype(np.int64)


class _Index:
    """Where values sit among ``n``: found by their hash, then checked against the value itself."""

    def __init__(self, hashes: np.ndarray, value_at: Callable[[int], Any]) -> None:
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self._order = order.astype(np.int32) if len(order) < 2**31 else order  # kept: half the memory
        self._value_at = value_at

    def find(self, values: Sequence[Any]) -> np.ndarray:
        """The position of each of ``values`` (the first with that value), -1 for those not there."""
        out = np.full(len(values), -1, np.int64)
        n = len(self._hashes)
        if not n or not len(values):
            return out
        wanted = np.fromiter(map(hash, values), np.int64, len(values))
        at = np.searchsorted(self._hashes, wanted)
        hit = at < n
        hit[hit] = self._hashes[at[hit]] == wanted[hit]
        hashes, order, value_at = self._hashes, self._order, self._value_at
        found = np.flatnonzero(hit)
        for k, j, position in zip(found.tolist(), at[found].tolist(), order[at[found]].tolist()):
            value = values[k]
            if value_at(position) == value:
                out[k] = position
                continue
            h, j = int(wanted[k]), j + 1
            while j < n and hashes[j] == h:  # another value of the same hash: rare
                if value_at(int(order[j])) == value:
                    out[k] = order[j]
                    break
                j += 1
        return out


class Inputs(Sequence[InputFile]):
    """Inputs of a run, in order: files of a :class:`Listing` (``rows``), or pieces of them.

    ``starts`` and ``ends`` (None when no input is a piece) give each
    input's piece: ``[start, end)`` in bytes (JSONL) or row groups
    (Parquet), ``end`` -1 for a whole file.
    """

    def __init__(self, listing: Listing, rows: np.ndarray | None = None, starts: np.ndarray | None = None,
                 ends: np.ndarray | None = None) -> None:
        self.listing = listing
        self._rows = rows  # None: every row, in its order
        self._starts = starts
        self._ends = ends
        self._urls: _Index | None = None

    @classmethod
    def of(cls, files: Iterable[InputFile]) -> Inputs:
        """``files`` (any InputFile values; pieces of one file share its row)."""
        listing = Listing()
        rows: dict[InputFile, int] = {}
        positions, starts, ends = [], [], []
        for inp in files:
            whole = replace(inp, start=0, end=None, part="") if inp.part else inp
            if inp.part and (inp.end is None or inp.part != piece_part(inp.format, inp.start, inp.end)):
                raise ValueError(f"not a piece split_for_workers makes: {inp.key}")
            if whole not in rows:
                rows[whole] = len(listing)
                listing.append(whole)
            positions.append(rows[whole])
            starts.append(inp.start)
            ends.append(inp.end if inp.part and inp.end is not None else -1)
        pieces = any(end >= 0 for end in ends)
        return cls(listing, np.array(positions, np.int64),
                   np.array(starts, np.int64) if pieces else None, np.array(ends, np.int64) if pieces else None)

    @classmethod
    def empty(cls) -> Inputs:
        return cls(Listing())

    def __len__(self) -> int:
        return len(self.listing) if self._rows is None else len(self._rows)

    @overload
    def __getitem__(self, i: int) -> InputFile: ...

    @overload
    def __getitem__(self, i: slice) -> Inputs: ...

    def __getitem__(self, i: int | slice) -> InputFile | Inputs:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        inp = self.listing.file(self.row(i))
        if self._ends is not None and (end := int(self._ends[i])) >= 0:
            start = int(self._starts[i])  # type: ignore[index]
            inp = replace(inp, start=start, end=end, part=piece_part(inp.format, start, end))
        return inp

    def __iter__(self) -> Iterator[InputFile]:
        if self._ends is not None:
            for i in range(len(self)):
                yield self[i]
            return
        file = self.listing.file
        for row in self._each_row():
            yield file(row)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (Inputs, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Inputs({len(self)} inputs of a listing of {len(self.listing)} files)"

    def row(self, i: int) -> int:
        """The listing's row of input ``i``."""
        return i if self._rows is None else int(self._rows[i])

    def rows(self) -> np.ndarray:
        """Every input's row in the listing."""
        return np.arange(len(self.listing), dtype=np.int64) if self._rows is None else self._rows

    def take(self, positions: Sequence[int] | np.ndarray) -> Inputs:
        """The inputs at ``positions``, in that order."""
        at = np.asarray(positions, np.int64)
        pieces = self._ends is not None and bool((self._ends[at] >= 0).any())
        return Inputs(self.listing, at if self._rows is None else self._rows[at],
                      self._starts[at] if pieces else None, self._ends[at] if pieces else None)  # type: ignore[index]

    def where(self, mask: np.ndarray) -> Inputs:
        """The inputs ``mask`` (a boolean per input) holds, in order; these inputs themselves when it holds all."""
        return self if bool(mask.all()) else self.take(np.flatnonzero(mask))

    def pieces(self, starts: np.ndarray, ends: np.ndarray) -> Inputs:
        """These inputs cut as ``starts`` and ``ends`` say (``ends`` -1: the whole file)."""
        pieces = bool((ends >= 0).any())
        return Inputs(self.listing, self.rows(), starts if pieces else None, ends if pieces else None)

    def starting_with(self, prefix: str) -> np.ndarray:
        """Whether each input's url starts with ``prefix``, as a boolean array."""
        among = self.listing.starting_with(prefix)
        return among if self._rows is None else among[self._rows]

    def urls(self) -> Iterator[str]:
        """Every input's url, in order (no InputFile made)."""
        url = self.listing.url
        for row in self._each_row():
            yield url(row)

    def facts(self) -> Iterator[tuple[str, str, int | None, str | None]]:
        """Every input's url, key, size and time, in order (no InputFile made for a whole file)."""
        if self._ends is not None:
            for inp in self:
                yield inp.url, inp.key, inp.size, inp.mtime
            return
        listing = self.listing
        url, sizes, mtime = listing.url, listing._sizes, listing.mtime
        for row in self._each_row():
            size = sizes[row]
            yield (u := url(row)), u, None if size < 0 else size, mtime(row)

    def _each_row(self) -> Iterator[int]:
        if self._rows is None:
            yield from range(len(self.listing))
            return
        yield from _each(self._rows)

    def _file_rows(self) -> np.ndarray | None:
        """Which rows these inputs are, each once, as a boolean per row; None when they are every row once."""
        if self._rows is None:
            return None
        among = np.zeros(len(self.listing), bool)
        among[self._rows] = True
        return among

    def files(self) -> int:
        """How many files these inputs are (a file split in pieces counts once)."""
        among = self._file_rows()
        return len(self) if among is None else int(np.count_nonzero(among))

    def file_bytes(self) -> int:
        """The listed size of the files these inputs are, each once."""
        among = self._file_rows()
        sizes = self.listing.sizes()
        return _known_sum(sizes if among is None else sizes[among])

    def bytes_to_read(self) -> int:
        """What reading every input means in bytes: a JSONL piece its byte range, anything else its file's size."""
        sizes = self.listing.sizes()
        if self._rows is not None:
            sizes = sizes[self._rows]
        if self._ends is not None:
            assert self._starts is not None
            ranged = (self._ends >= 0) & self.listing.formats().where("jsonl")[self.rows()]
            sizes = np.where(ranged, self._ends - self._starts, sizes)
        return _known_sum(sizes)

    def missing(self, urls: Iterable[str]) -> list[str]:
        """Those of ``urls`` that are no input's url, in their order (looked up a chunk at a time)."""
        if self._urls is None:
            among = self._file_rows()
            url = self.listing.url
            if among is None:  # every row: no array of them kept (8 bytes an object)
                hashes = np.fromiter(map(hash, map(url, range(len(self.listing)))), np.int64, len(self.listing))
                self._urls = _Index(hashes, url)
            else:
                rows = np.flatnonzero(among)
                hashes = np.fromiter((hash(url(row)) for row in _each(rows)), np.int64, len(rows))
                self._urls = _Index(hashes, lambda i: url(int(rows[i])))
            del hashes
        out: list[str] = []
        for chunk in _chunks(urls):
            out += (u for u, at in zip(chunk, self._urls.find(chunk).tolist()) if at < 0)
        return out

    def settled_since(self, previous: Inputs | None) -> Inputs:
        """The inputs that ``previous`` (an earlier listing) held with the same key, size and time."""
        if previous is None or not len(previous) or not len(self):
            return self.take(np.zeros(0, np.int64))
        index = _Index(np.fromiter((hash(facts[1:]) for facts in previous.facts()), np.int64, len(previous)),
                       lambda i: _facts_of(previous[i]))
        found = np.concatenate([index.find([facts[1:] for facts in chunk]) for chunk in _chunks(self.facts())])
        return self.take(np.flatnonzero(found >= 0))


#: values looked up at once: a bounded number of strings alive at a time
CHUNK = 16_384


def _each(values: np.ndarray) -> Iterator[int]:
    """The integers of ``values``, as Python ints, a chunk at a time (not a list of them all)."""
    for start in range(0, len(values), CHUNK):
        yield from values[start:start + CHUNK].tolist()


def _known_sum(sizes: np.ndarray) -> int:
    """The sum of ``sizes``, the unknown (-1) counting 0 (without a copy of them all)."""
    return int(sizes.sum()) + int(np.count_nonzero(sizes < 0))


def _chunks(values: Iterable[Any]) -> Iterator[list[Any]]:
    """``values`` a ``CHUNK`` at a time."""
    chunk: list[Any] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _facts_of(inp: InputFile) -> tuple[str, int | None, str | None]:
    """What tells a settled input: the same key, size and time across two listings."""
    return inp.key, inp.size, inp.mtime
