"""One row per ``id``: a later record whose id is already taken becomes an error row.

Two input files that both hold ``id: 7`` would give two rows with one id
(a primary-key violation for anyone loading the dataset into a database).
Before batching, :mod:`pipeline.stages.triage` asks an :class:`IdRegistry`,
in read order: the first record with an id keeps it, every later one goes to
``errors/`` (``duplicate_id``) with a message naming both places, unpaid. The registry holds 64-bit hashes of the ids in
sorted numpy arrays (12 bytes an id, no Python object per id), seeded with
the ids the dataset already holds; the inputs they came from are kept in
compressed blocks (a million urls in a few MB rather than 200 MB of
strings), with a hash of each to find those of a changed input.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Iterable

import numpy as np
import pyarrow as pa

from pipeline.dataset.state_base import BLOCK, Filling, Texts
from pipeline.types import Chunk, EmbeddedBatch, Failure

MERGE_EVERY = 1 << 16  # new ids kept in a dict before they are merged into the sorted arrays


DUPLICATE_ID = "duplicate_id"  # the error_type of a record whose id another input holds
TAKEN_BY, THIS_ONE = "is already taken by a record of ", "; this one ("  # around the holder in its message


def holder_of(message: str, source: str) -> str | None:
    """The input that holds the id of a ``duplicate_id`` error row of ``source`` (None if ``message`` does
    not say): it is named between :data:`TAKEN_BY` and ``; this one ({source} ...``, so a name holding either
    phrase is still told right."""
    start = message.find(TAKEN_BY)
    end = message.rfind(f"{THIS_ONE}{source} line/row ")
    return message[start + len(TAKEN_BY):end] if 0 <= start < end else None


def losers_of(holders: set[str], rows: Iterable[tuple[str, str]]) -> set[str]:
    """The sources among ``rows`` (source, message of ``duplicate_id`` error rows) whose id one of
    ``holders`` held: once those inputs are gone or read again, the ids may be theirs."""
    return {source for source, message in rows
            if source not in holders and holder_of(message, source) in holders}


def id_hash(value: str) -> int:
    """A stable 64-bit hash of an id (two of a million ids share one with a chance of about 3 in 10^8)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")


class IdRegistry:
    """The ids taken so far, and which input each came from."""

    def __init__(self) -> None:
        self._keys = np.empty(0, np.uint64)
        self._places = np.empty(0, np.uint32)  # the input each id came from (see _place)
        self._pending: dict[int, int] = {}
        self._inputs = Texts()  # the names of the inputs, by place, a block at a time
        self._fresh: list[str] = []  # the names of the latest places, not yet in a block
        self._hashes = Filling(np.int64, BLOCK)  # hash() of each place's name (the latest: see _hashed)
        self._recent: dict[str, int] = {}  # place of the names placed since the last block
        self._yielding: set[int] = set()  # places of inputs whose ids go to the next input that has one
        self._yielded: set[str] = set()  # those inputs
        #: (source, id) of a chunk that took over a yielding input's id → the (source, doc_id) it displaces,
        #: until the chunk's embedded batch asks (:meth:`with_displaced`)
        self._displacing: dict[tuple[str, str], tuple[str, str]] = {}
        #: inputs read on after a mark an interrupted run committed (resume key → the location of the first
        #: record read again, once seen): that record's first chunks may be in the dataset already
        self._resumed: dict[str, int | None] = {}
        #: (source, id) of chunks found already stored, until the caller of :meth:`check` asks
        self._stored_again: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self._keys) + len(self._pending)

    def add_existing(self, ids: Iterable[str], sources: Iterable[str]) -> None:
        """Register ids already in the dataset (first come, first kept)."""
        self.seed([(ids, sources)])

    def seed(self, blocks: Iterable[tuple[Iterable[str], Iterable[str]]], rows: int = 0,
             skip: set[str] | None = None) -> None:
        """Register the ids already in the dataset, block after block as ``known_ids()`` yields them (first
        come, first kept), but those of the inputs in ``skip`` (as if :meth:`forget_source` was then asked
        for each); ``rows``: about how many (the arrays are then made once, at their size).

        The hashes and places of every block go into two arrays, sorted once
        at the end: no dict of Python ints in between, and no array made
        again at each merge (a million ids were some 40 MB of freed pieces
        the allocator kept).
        """
        self._merge()
        keys, places = Filling(np.uint64, rows), Filling(np.uint32, rows)
        for ids, sources in blocks:
            ids, sources = _strings(ids), _strings(sources)
            if skip and not skip.isdisjoint(sources):
                kept = [i for i, source in enumerate(sources) if source not in skip]
                ids, sources = [ids[i] for i in kept], [sources[i] for i in kept]
            keys.extend(np.fromiter(map(id_hash, ids), np.uint64, len(ids)))
            names = list(dict.fromkeys(sources))
            place = dict(zip(names, self._place_all(names)))
            if self._yielded:  # seeded after yield_sources was told of them (a run seeds after comparing)
                self._yielding |= {place[name] for name in names if name in self._yielded}
            places.extend(np.fromiter(map(place.__getitem__, sources), np.uint32, len(sources)))
            del ids, sources, names, place
        if keys.size and len(self._keys):
            self._keys, self._places = _first_of_each(np.concatenate([self._keys, keys.done()]),
                                                      np.concatenate([self._places, places.done()]))
        elif keys.size:
            self._keys, self._places = _first_of_each(keys.done(), places.done())

    def resume(self, keys: Iterable[str]) -> None:
        """The inputs of ``keys`` are read on after their committed mark (an interrupted run's)."""
        self._resumed.update(dict.fromkeys(keys))

    def stored_again(self, chunk: Chunk) -> bool:
        """Whether :meth:`check` left ``chunk`` out as already in the dataset (asked once for each)."""
        found = (chunk.source, chunk.id) in self._stored_again
        self._stored_again.discard((chunk.source, chunk.id))
        return found

    def check(self, batch: EmbeddedBatch) -> EmbeddedBatch:
        """``batch`` with chunks whose id is already taken moved to its failures.

        A resumed input's first record read again may have had its first
        chunks committed by the interrupted run (the commit fell inside it;
        its mark stays before it): those chunks, whose ids its own input
        holds in the dataset, are left out without an error row (see
        :meth:`stored_again`); the dataset has them.
        """
        keep: list[int] = []
        late: list[Failure] = []
        keys = [id_hash(chunk.id) for chunk in batch.chunks]
        stored = self._stored(keys)
        resumed = self._resumed
        for i, chunk in enumerate(batch.chunks):
            key = keys[i]
            pending = self._pending.get(key)  # (an id taken earlier in this batch is pending too)
            first = self._name(pending) if pending is not None else stored[i]
            if resumed and (read := chunk.source + chunk.part) in resumed:
                if resumed[read] is None:
                    resumed[read] = chunk.location
                if pending is None and first == chunk.source and chunk.location == resumed[read]:
                    self._stored_again.add((chunk.source, chunk.id))
                    continue
            if first is not None and self._yielding and self._take_over(key, pending, chunk.source):
                self._displacing[(chunk.source, chunk.id)] = (first, chunk.doc_id)
                keep.append(i)
                continue
            if first is None:
                self._pending[key] = self._place(chunk.source)
                keep.append(i)
                continue
            here = f"{chunk.source} line/row {chunk.location}"
            late.append(Failure.of(chunk, DUPLICATE_ID,
                                   f"id {chunk.id!r} {TAKEN_BY}{first}{THIS_ONE}{here}) "
                                   "is left out: ids must be unique in the dataset"))
        if len(self._pending) >= MERGE_EVERY:
            self._merge()
        if not late and len(keep) == len(batch.chunks):
            return batch
        chunks = tuple(batch.chunks[i] for i in keep)
        # which chunks took a stored vector is not known here: a left-out one may have been among them
        return EmbeddedBatch(batch.seq, chunks, batch.vectors[np.asarray(keep, dtype=np.int64)], batch.usage,
                             batch.failures + tuple(late), batch.records, batch.marks,
                             reused=min(batch.reused, len(chunks)), displaced=batch.displaced)

    def yield_sources(self, sources: Iterable[str]) -> None:
        """Let the ids of ``sources`` go to the first later input that has one.

        For rows kept only because ``run.on_deleted: keep`` (their input is
        gone from the listing): a renamed file's records then take their ids
        back instead of becoming ``duplicate_id`` errors. :meth:`check` keeps
        such a chunk and notes the row it displaces; :meth:`with_displaced`
        names it in the chunk's embedded batch, for the sink to remove in the
        same commit.
        """
        new = set(sources) - self._yielded
        if not new:  # a watcher says the same kept inputs every round
            return
        self._yielded |= new
        hashes = np.fromiter(map(hash, new), np.int64, len(new))
        maybe = np.flatnonzero(np.isin(self._hashed(), hashes)).tolist()  # one pass for them all
        self._yielding |= {p for p in maybe if self._name(p) in new}

    def with_displaced(self, batch: EmbeddedBatch) -> EmbeddedBatch:
        """``batch`` naming the kept rows its chunks displace (their ids were taken over when they were
        checked, before batching: see :mod:`pipeline.stages.triage`), for the sink to remove in the commit
        that brings them."""
        if not self._displacing:
            return batch
        pop = self._displacing.pop
        found = [pair for chunk in batch.chunks if (pair := pop((chunk.source, chunk.id), None)) is not None]
        if not found:
            return batch
        return replace(batch, displaced=tuple(dict.fromkeys(batch.displaced + tuple(found))))

    def _take_over(self, key: int, pending: int | None, source: str) -> bool:
        """Give ``key``'s id to ``source`` if a yielding input holds it; whether it did."""
        if pending is not None:
            if pending not in self._yielding:
                return False
            self._pending[key] = self._place(source)
            return True
        at = int(np.searchsorted(self._keys, np.uint64(key)))
        if int(self._places[at]) not in self._yielding:
            return False
        self._places[at] = self._place(source)
        return True

    def forget_source(self, source: str) -> None:
        """Free the ids of ``source`` (its rows are being read again)."""
        places = self._places_of(source)
        if not places:
            return
        self._pending = {k: v for k, v in self._pending.items() if v not in places}
        kept = ~np.isin(self._places, np.fromiter(places, np.uint32, len(places)))
        self._keys, self._places = self._keys[kept], self._places[kept]

    def _places_of(self, source: str) -> set[int]:
        """The places standing for input ``source``."""
        maybe = np.flatnonzero(self._hashed() == hash(source)).tolist()
        return {p for p in maybe if self._name(p) == source}

    def _place(self, source: str) -> int:
        """The number standing for input ``source`` (one input may get several: they are not all looked up)."""
        place = self._recent.get(source)
        if place is None:  # (_place_all of one, spelled out: once for each of many small files)
            place = self._inputs.rows + len(self._fresh)
            self._fresh.append(source)
            self._keep_fresh_bounded()
            self._recent[source] = place
        return place

    def _place_all(self, sources: list[str]) -> range:
        """New numbers standing for ``sources``."""
        first = self._inputs.rows + len(self._fresh)
        self._fresh += sources
        self._keep_fresh_bounded()
        return range(first, first + len(sources))

    def _keep_fresh_bounded(self) -> None:
        """The names placed since are kept as Arrow strings once they are a ``BLOCK``."""
        if len(self._fresh) >= BLOCK:
            self._hashed()
            self._inputs.extend(pa.array(self._fresh, pa.string()))
            self._fresh, self._recent = [], {}

    def _hashed(self) -> np.ndarray:
        """The hash of every place's name, by place.

        The names placed since the last call are hashed now, all at once: a
        new input is placed as its first chunk is checked, and an array made
        and copied for each of them was a few µs a file.
        """
        start = self._hashes.size - self._inputs.rows  # the first name in _fresh not hashed yet
        if start < len(self._fresh):
            new = self._fresh[start:]
            self._hashes.extend(np.fromiter(map(hash, new), np.int64, len(new)))
        return self._hashes.done()

    def _name(self, place: int) -> str:
        if place >= self._inputs.rows:
            return self._fresh[place - self._inputs.rows]
        return self._inputs.get(place)

    def _stored(self, keys: list[int]) -> list[str | None]:
        """For each key, the input holding its id among the merged ones (None when not there).

        One search for the whole batch: numpy lets go of the GIL in each call,
        and a call per id would hand the reader thread the GIL once per record.
        """
        if not len(self._keys):
            return [None] * len(keys)
        wanted = np.fromiter(keys, np.uint64, len(keys))
        at = np.minimum(np.searchsorted(self._keys, wanted), len(self._keys) - 1)
        hit = self._keys[at] == wanted
        return [self._name(place) if found else None
                for found, place in zip(hit.tolist(), self._places[at].tolist())]

    def _merge(self) -> None:
        if not self._pending:
            return
        keys = np.fromiter(self._pending.keys(), np.uint64, len(self._pending))
        places = np.fromiter(self._pending.values(), np.uint32, len(self._pending))
        keys, places = np.concatenate([self._keys, keys]), np.concatenate([self._places, places])
        order = np.argsort(keys, kind="stable")
        self._keys, self._places = keys[order], places[order]
        self._pending = {}


def _strings(values: Iterable[str]) -> list[str]:
    """``values`` as a list of str (an Arrow array's too)."""
    return values.to_pylist() if isinstance(values, (pa.Array, pa.ChunkedArray)) else list(values)


def _first_of_each(keys: np.ndarray, places: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``keys`` sorted, each once, with the place of its first occurrence (the one that came first); ``keys`` is
    sorted in place."""
    order = np.argsort(keys, kind="stable")
    keys.sort(kind="stable")  # as keys[order], without a second array
    places = places[order]
    del order
    first = np.ones(len(keys), bool)
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return (keys, places) if first.all() else (keys[first], places[first])
