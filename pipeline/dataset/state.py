"""Per-input resume state, kept in Parquet files under ``_state/`` rather than in ``_manifest.json``.

How far each input key is committed (``progress``, ``end``), the signature
each input file had when read, its seek checkpoints (``offsets``), and for
each shard the sources of its rows (url → records it completed) and the
resume marks it carries: state that grows with the number of inputs. Each
commit writes one file holding only what changed (:mod:`state_files`), and
the manifest save lists it, so the switch of ``_manifest.json`` publishes
the rows and the state together. Loading reads the listed files in order;
the last row of a name wins, a ``deleted`` row drops it.

:class:`State` is that state in memory, with what changed since it was last
written (see :attr:`State.dirty`). Its tables read and write as dicts, but
what was loaded stays in compact columns under them (:mod:`state_base`):
a million inputs take tens of MB, not hundreds.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from pipeline.dataset.state_base import Column, Shards, column, shards
from pipeline.types import END_OF_FILE


def of_url(key: str, url: str) -> bool:
    """Whether resume key ``key`` is input ``url`` or one of its pieces (``url#bytes=...``)."""
    return key == url or (key.startswith(url) and key[len(url)] == "#")


def held_back(changed: dict[str, str | None], pairs: Iterable[tuple[str, str]]) -> Iterable[tuple[str, str]]:
    """The url and signature ``pairs`` to record in the state now: those of inputs ``changed`` (read again,
    their new signature saved with their first new rows) are put there instead."""
    if not changed:
        return pairs
    pairs = list(pairs)
    for url, signature in pairs:
        if url in changed:
            changed[url] = signature
    return [(url, signature) for url, signature in pairs if url not in changed]


class State:
    """The resume state of one rank's inputs (or of a whole dataset, when loaded for reading)."""

    def __init__(self) -> None:
        #: input key → the location its commits reach (``END_OF_FILE`` once whole)
        self.progress: Column = Column("progress")
        #: input key → the location of its last record, once the whole input is done (to read on after it)
        self.ends: Column = Column("end")
        #: input file url → its signature (size and mtime or ETag) when it was last read
        self.files: Column = Column("signature")
        #: input file url → ``[lines before, byte offset]`` checkpoints, to resume big files by seeking (few)
        self.offsets: dict[str, list[list[int]]] = {}
        #: shard path → the sources of its rows, with the records each completed there
        self.sources: Shards = Shards()
        #: shard path → the resume marks of its commit (input key → location)
        self.marks: Shards = Shards()
        #: input names and shard paths changed since the state was last written
        self.dirty: set[str] = set()
        self.dirty_shards: set[str] = set()
        #: everything must be written again (a dataset of the previous format, or a rebuild)
        self.whole = False

    def __setattr__(self, name: str, value: Any) -> None:
        """The tables stay dict-like columns whatever is assigned to them (a dict: taken in as changes)."""
        if name in _COLUMNS:
            value = column(_COLUMNS[name], value)
        elif name in ("sources", "marks"):
            value = shards(value)
        super().__setattr__(name, value)

    # ------------------------------------------------------------ inputs

    def done_upto(self, key: str) -> int:
        """How far input ``key`` (a file url, plus its piece) is committed: a location, 0 if not started."""
        return self.progress.get(key, 0)

    def set_signature(self, url: str, signature: str) -> None:
        """Record the signature input ``url`` had when read."""
        if self.files.get(url) != signature:
            self.files[url] = signature
            self.dirty.add(url)

    def set_signatures(self, signatures: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        """:meth:`set_signature` for each (a mapping, or url and signature pairs), in one call: the new
        inputs of a listing of many small files are thousands."""
        pairs = signatures.items() if isinstance(signatures, Mapping) else signatures
        get = self.files.get
        changed = [(url, signature) for url, signature in pairs if get(url) != signature]
        self.files.set_many(changed)
        self.dirty.update(url for url, _ in changed)

    def set_offsets(self, offsets: dict[str, list[list[int]]]) -> None:
        """Replace the seek checkpoints (only those that changed become dirty)."""
        for url in [u for u in self.offsets if u not in offsets]:
            del self.offsets[url]
            self.dirty.add(url)
        for url, checkpoints in offsets.items():
            value = [[int(n), int(o)] for n, o in checkpoints]
            if self.offsets.get(url) != value:
                self.offsets[url] = value
                self.dirty.add(url)

    def restart(self, key: str, url: str) -> None:
        """Input ``key`` changed: read it again from the top, forgetting its checkpoints."""
        for table, name in ((self.progress, key), (self.ends, key), (self.offsets, url)):
            if table.pop(name, None) is not None:
                self.dirty.add(name)

    def read_on(self, key: str) -> bool:
        """Input ``key`` only grew at its end: read on after its last record; False when that is unknown."""
        if key not in self.ends:
            return False
        self.progress[key] = self.ends.pop(key)
        self.dirty.add(key)
        return True

    def forget(self, url: str) -> None:
        """Input ``url`` is gone: drop its signature, checkpoints and the progress of its every piece."""
        self.files.pop(url, None)
        self.offsets.pop(url, None)
        self.dirty.add(url)
        for key in self.progress.of_url(url):  # the pieces are indexed by url: no scan of every key
            self.progress.pop(key, None)
            self.ends.pop(key, None)
            self.dirty.add(key)

    def advance(self, marks: Iterable[tuple[str, int]], last: dict[str, int] | None = None) -> None:
        """Record how far each input key is now committed.

        A key reaching ``END_OF_FILE`` keeps the location of its last record
        in :attr:`ends` (``last`` holds this commit's, by key).
        """
        last = last or {}
        get = self.progress.getter()
        moved: dict[str, int] = {}  # set in the columns at the end, all at once (a commit may hold thousands)
        ended: dict[str, int] = {}
        for key, location in marks:
            before = moved.get(key)
            if before is None:
                before = get(key)
                if before is None:
                    before = -1
            if location > before:
                moved[key] = int(location)
                if location >= END_OF_FILE:
                    ended[key] = max(last.get(key, 0), before)
        self.progress.set_many(moved.items())
        self.ends.set_many(ended.items())
        self.dirty.update(moved)

    # ------------------------------------------------------------ shards

    def add_shard(self, path: str, sources: dict[str, int] | None, marks: dict[str, int]) -> None:
        """Shard ``path`` holds rows (or records) of ``sources`` (None: unknown) and carries resume ``marks``."""
        if sources is not None:
            self.sources[path] = dict(sources)
        self.marks[path] = dict(marks)
        self.dirty_shards.add(path)

    def drop_shard(self, path: str) -> None:
        """Shard ``path`` left the dataset."""
        self.sources.pop(path, None)
        self.marks.pop(path, None)
        self.dirty_shards.add(path)

    def share_of(self, urls: list[str]) -> float:
        """The share of the dataset's records whose source is one of ``urls`` (0 when shards do not say)."""
        wanted = set(urls)
        total = part = 0
        for sources in self.sources.values():
            for url, records in sources.items():
                total += records
                if url in wanted:
                    part += records
        return part / total if total else 0.0

    def sources_of(self, path: str) -> dict[str, int] | None:
        """The sources of shard ``path``'s rows (url → records), None when the state does not know them."""
        return self.sources.get(path)

    def rebuild_progress(self, kept: list[str]) -> None:
        """Only the shards ``kept`` remain: how far each input is done is what their marks say."""
        before = set(self.progress)
        self.progress = {}
        for path in kept:
            for key, location in (self.marks.get(path) or {}).items():
                self.progress[key] = max(int(location), self.progress.get(key, -1))
        self.ends = {k: v for k, v in self.ends.items() if self.progress.get(k, 0) >= END_OF_FILE}
        self.dirty |= before | set(self.progress)

    # ------------------------------------------------------------ rows

    def names(self) -> set[str]:
        """Every input name the state holds something of."""
        return set(self.progress) | set(self.ends) | set(self.files) | set(self.offsets)

    def shard_paths(self) -> set[str]:
        """Every shard the state holds sources or marks of."""
        return set(self.sources) | set(self.marks)

    def update(self, other: State) -> None:
        """Take in everything ``other`` holds (another rank's state)."""
        for name in (*_COLUMNS, "offsets", "sources", "marks"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if not mine and isinstance(theirs, (Column, Shards)):
                setattr(self, name, theirs.copy())  # the same compact rows, not a dict of them
            elif isinstance(mine, Shards) and isinstance(theirs, Shards):
                mine.take(theirs)
            else:
                mine.update(theirs)

    def clean(self) -> None:
        """Everything is written: nothing is dirty any more."""
        self.dirty = set()
        self.dirty_shards = set()
        self.whole = False

    def apply_shard(self, path: str, deleted: bool, sources: Mapping[str, int] | None,
                    marks: Mapping[str, int]) -> None:
        """Take one shard row as read from a state file (``sources`` None: unknown, asked of its rows)."""
        self.sources.load(path, None if deleted else sources)
        self.marks.load(path, None if deleted else marks)

    @classmethod
    def from_legacy(cls, data: dict[str, Any], shards: list[dict[str, Any]]) -> State:
        """The state a manifest of the previous format held in its own fields (written whole next)."""
        state = cls()
        state.progress = {str(k): int(v) for k, v in (data.get("progress") or {}).items()}
        state.files = {str(k): str(v) for k, v in (data.get("files") or {}).items()}
        state.offsets = {str(k): [[int(n), int(o)] for n, o in v] for k, v in (data.get("offsets") or {}).items()}
        state.ends = {str(k): int(v) for k, v in (data.get("ends") or {}).items()}
        for entry in shards:
            sources, marks = entry.pop("sources", None), entry.pop("marks", None) or {}
            if sources is not None:  # entries from before they knew their sources: the state does not either
                state.sources[entry["path"]] = {str(k): int(v) for k, v in sources.items()}
            state.marks[entry["path"]] = {str(k): int(v) for k, v in marks.items()}
        state.whole = True
        return state


#: the input tables kept as :class:`Column` (attribute → the state files' column)
_COLUMNS = {"progress": "progress", "ends": "end", "files": "signature"}
