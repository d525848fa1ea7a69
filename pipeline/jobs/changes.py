"""What changed in the source since the dataset last saw it: new, changed, appended, deleted, unchanged.

Every run (and every round of a watcher) compares the listing with the
signatures the sink recorded: an input's size and modification time or
ETag. Unchanged inputs are not opened. A whole, uncompressed JSONL file
that only grew is *appended*: the last KB before its old end is the same
as when it was read, so only the lines after its last record are read.
Inputs gone from the listing have their rows removed, unless a run would
remove more than ``run.max_removed_fraction`` of the dataset's inputs.
Under ``run.on_deleted: keep`` their rows stay, and the run that first
finds one gone counts it (``deleted``, ``kept``) and marks its signature
(:data:`GONE`): later runs leave it out of their counts, and a switch to
``remove`` removes it then.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from pipeline.dataset.sink import Sink
from pipeline.errors import SinkError, SourceError
from pipeline.jobs.progress import Progress
from pipeline.logs import get_logger
from pipeline.sources.listed import Inputs
from pipeline.stages.read import Checkpoints
from pipeline.types import END_OF_FILE, InputFile

TAIL_BYTES = 1024  # how much before a JSONL file's old end must be the same for it to count as appended
TAIL = "|tail="
#: ends the signature of an input gone from the listing whose rows stay (``run.on_deleted: keep``) once a run
#: counted it deleted, so that later runs do not count it again; a signature without it (every one a dataset
#: of an earlier version holds) is an input not yet counted
GONE = "|gone"


def marked_gone(signature: str) -> str:
    """``signature`` marked as that of an input counted gone, its rows kept."""
    return signature if signature.endswith(GONE) else signature + GONE


def as_read(signature: str) -> str:
    """The signature an input had when read: ``signature`` without its :data:`GONE` mark."""
    return signature.removesuffix(GONE)


def signature(inp: InputFile) -> str:
    """What tells that an input changed: its size and modification time or ETag."""
    return signature_of(inp.size, inp.mtime)


def signature_of(size: int | None, mtime: str | None) -> str:
    """The :func:`signature` of an input of ``size`` and ``mtime``."""
    return f"{size}:{mtime}"


def appendable(inp: InputFile) -> bool:
    """Whether ``inp`` can be read on after its old end: a whole, uncompressed JSONL file."""
    return inp.format == "jsonl" and inp.compression is None and not inp.part and inp.size is not None


def _tail(fs: Any, inp: InputFile, end: int) -> bytes:
    """The ``TAIL_BYTES`` of ``inp`` before byte ``end``."""
    start = max(0, end - TAIL_BYTES)
    try:
        return fs.cat_file(inp.path, start=start, end=end) if end else b""
    except OSError as exc:
        raise SourceError(f"cannot read {inp.url}: {exc}") from exc


def tail_hash(fs: Any, inp: InputFile, end: int) -> str:
    """SHA-256 (hex, 16 digits) of the ``TAIL_BYTES`` of ``inp`` before byte ``end``."""
    return hashlib.sha256(_tail(fs, inp, end)).hexdigest()[:16]


def full_signature(fs: Any, inp: InputFile) -> str:
    """The signature to record: :func:`signature`, plus the hash of its tail for an appendable file."""
    if appendable(inp):
        return signature(inp) + TAIL + tail_hash(fs, inp, inp.size or 0)
    return signature(inp)


def only_grew(fs: Any, inp: InputFile, known: str) -> bool:
    """Whether ``inp`` is the file of signature ``known`` with lines added at its end."""
    base, _, tail = known.partition(TAIL)
    if not appendable(inp) or not tail:
        return False
    try:
        old_size = int(base.split(":", 1)[0])
    except ValueError:
        return False
    if (inp.size or 0) <= old_size:
        return False
    before = _tail(fs, inp, old_size)
    # a last line without its newline was cut short (a writer mid-line): what follows may complete it,
    # so the file is read again whole, its half line's error row replaced
    return before.endswith(b"\n") and hashlib.sha256(before).hexdigest()[:16] == tail


#: what happened to an input since the dataset last saw it (a byte per input of :attr:`Changes.inputs`)
NEW, RESUMED, CHANGED, APPENDED, UNCHANGED = range(5)


@dataclass
class Changes:
    """The inputs of one comparison, by what happened to them (urls for the deleted).

    ``kinds[i]`` says what happened to ``inputs[i]`` (:data:`NEW`, ...):
    a byte per input, however many there are, and each kind's inputs are
    the listing's, in its order, made into InputFile values only when read.
    """

    inputs: Inputs = field(default_factory=Inputs.empty)
    kinds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    #: inputs gone from the listing that no run counted yet (once settled, :func:`settle_deleted`: those
    #: whose rows leave, under ``run.on_deleted: remove``)
    deleted: list[str] = field(default_factory=list)
    #: deleted inputs whose rows stay (``run.on_deleted: keep``): taken out of ``deleted`` once settled
    kept: list[str] = field(default_factory=list)
    #: inputs gone from the listing that an earlier run counted and kept (signature marked :data:`GONE`):
    #: counted by no later run; their rows stay under keep, and leave (as ``deleted``) under remove
    gone: list[str] = field(default_factory=list)
    #: listed inputs whose signature is marked :data:`GONE`: back in the listing, the mark is dropped
    back: list[str] = field(default_factory=list)

    def of(self, *kinds: int) -> Inputs:
        """The inputs of those kinds, in listing order."""
        return self.inputs.where(np.isin(self.kinds, kinds))

    @property
    def new(self) -> Inputs:
        return self.of(NEW)

    @property
    def resumed(self) -> Inputs:
        return self.of(RESUMED)

    @property
    def changed(self) -> Inputs:
        return self.of(CHANGED)

    @property
    def appended(self) -> Inputs:
        return self.of(APPENDED)

    @property
    def unchanged(self) -> int:
        return int(np.count_nonzero(self.kinds == UNCHANGED))

    @property
    def to_read(self) -> Inputs:
        """What a round reads, in listing order."""
        return self.of(NEW, RESUMED, CHANGED, APPENDED)

    def without_unchanged(self) -> Changes:
        """These changes but the unchanged inputs, the others made into a listing of their own: when few of
        the inputs changed, the listing (a million objects are some 60 MB) is no longer held by them."""
        keep = np.flatnonzero(self.kinds != UNCHANGED)
        return Changes(Inputs.of(self.inputs.take(keep)), self.kinds[keep], self.deleted, self.kept, self.gone,
                       self.back)

    @property
    def retained(self) -> list[str]:
        """The inputs gone from the listing whose rows stay (kept now or before)."""
        return [*self.kept, *self.gone]

    def counts(self) -> dict[str, int]:
        """How many inputs (files; a split file once) each kind counts; ``deleted`` counts the kept too,
        and ``kept`` is there when some are (inputs gone before, counted then, are in neither)."""
        out = {"new": self.new.files(), "resumed": self.resumed.files(), "changed": self.changed.files(),
               "appended": self.appended.files(), "deleted": len(self.deleted) + len(self.kept),
               "unchanged": self.unchanged}
        if self.kept:
            out["kept"] = len(self.kept)
        return out


class Known(Protocol):
    """What :func:`compare` asks of a sink (or of a manifest read without opening the sink)."""

    def signature(self, url: str) -> str | None: ...

    def signatures(self) -> Mapping[str, str]: ...

    def done_upto(self, key: str) -> int: ...


class Listed(Protocol):
    """The urls of a whole listing (an :class:`Inputs`, or any container of urls)."""

    def __contains__(self, url: object) -> bool: ...


def known_inputs(sink: Any) -> Mapping[str, str]:
    """The inputs ``sink`` holds rows of, with their signatures; empty for a sink that cannot say."""
    signatures = getattr(sink, "signatures", None)
    return signatures() if signatures is not None else {}


def compare(sink: Known, fs: Any, mine: Sequence[InputFile], listed: Listed | Inputs) -> Changes:
    """Sort this rank's inputs ``mine`` by what changed, and find what the dataset holds of inputs not in ``listed``.

    ``listed`` holds the urls of the whole listing (every rank's), so that
    an input another rank reads is not taken for a deleted one. Against a
    dataset that knows nothing, every input is new without a look each.
    """
    inputs = mine if isinstance(mine, Inputs) else Inputs.of(mine)
    out = Changes(inputs, np.full(len(inputs), NEW, np.uint8))
    known_all = known_inputs(sink)
    if not len(known_all):
        return out
    grew: dict[str, bool] = {}
    kinds = out.kinds
    for i, (url, key, size, mtime) in enumerate(inputs.facts()):
        known = sink.signature(url)
        if known is None:
            continue
        if known.endswith(GONE):
            out.back.append(url)
            known = as_read(known)
        if known.partition(TAIL)[0] == signature_of(size, mtime):
            kinds[i] = UNCHANGED if sink.done_upto(key) >= END_OF_FILE else RESUMED
        else:
            if url not in grew:
                grew[url] = only_grew(fs, inputs[i], known)
            kinds[i] = APPENDED if grew[url] else CHANGED
    by_sink = getattr(sink, "unlisted", None)  # the sink's own index: no index of the listing built
    missing = sorted(by_sink(listed.urls()) if by_sink is not None and isinstance(listed, Inputs)
                     else unlisted(known_all, listed))
    for url in missing:
        (out.gone if (sink.signature(url) or "").endswith(GONE) else out.deleted).append(url)
    return out


def settle_deleted(changes: Changes, *, remove: bool) -> None:
    """Apply ``run.on_deleted`` to ``changes``: under remove (``remove``) every input gone from the listing
    is deleted, those kept by earlier runs too (their rows leave now); under keep the newly gone are kept
    and the others stay as they were, uncounted."""
    if remove:
        changes.deleted, changes.gone = sorted([*changes.deleted, *changes.gone]), []
    else:
        changes.deleted, changes.kept = [], [*changes.kept, *changes.deleted]


def reread_losers(changes: Changes, id_losers: Callable[[set[str]], set[str]], *, deleted: bool = True) -> list[str]:
    """Mark as changed the unchanged (resumed, appended) inputs whose ``duplicate_id`` error rows name an input
    whose ids this comparison frees (changed, or, when ``deleted``, gone); their urls.

    The record that lost its id to another input gets it once that input is
    gone or no longer has it: read again, as a changed input is (its rows and
    error rows replaced in one commit, its unchanged chunks' vectors reused).
    ``id_losers`` (the sink's) is asked only when something was freed.
    """
    freed = set(changes.changed.urls()) | (set(changes.deleted) if deleted else set())
    losers = id_losers(freed) if freed else set()
    if not losers:
        return []
    at = np.flatnonzero(np.isin(changes.kinds, (UNCHANGED, RESUMED, APPENDED))).tolist()
    found = [i for i, url in zip(at, changes.inputs.take(at).urls()) if url in losers] if at else []
    changes.kinds[found] = CHANGED
    return list(changes.inputs.take(found).urls()) if found else []


def own_sources(changes: Changes, replacing: set[str]) -> set[str]:
    """The inputs whose rows' vectors a round indexes so as not to pay again for unchanged text: the changed
    ones; the deleted ones, kept or not, when files were also added (renames); the kept ones when files
    changed (a file back under a name whose documents a kept file took over); the resumed ones among
    ``replacing`` (a replacement an earlier run left unfinished)."""
    sources = set(changes.changed.urls())
    if len(changes.new):
        sources |= set(changes.deleted) | set(changes.retained)
    elif len(changes.changed):
        sources |= set(changes.retained)
    return sources | (set(changes.resumed.urls()) & replacing)


def unlisted(urls: Iterable[str], listed: Listed | Inputs) -> list[str]:
    """Those of ``urls`` not in ``listed`` (looked up a chunk at a time when it can)."""
    missing = getattr(listed, "missing", None)
    if missing is not None:
        return missing(urls)  # type: ignore[no-any-return]
    return [url for url in urls if url not in listed]


def removal_refused(known: int, removed: int, records_share: float, max_fraction: float,
                    emptied: int = 0) -> str | None:
    """Why removing ``removed`` of ``known`` source files (``records_share`` of the records; ``emptied``
    of them still listed, with no bytes) is refused."""
    files_share = removed / known if known else 0.0
    if max(files_share, records_share) <= max_fraction:
        return None
    how = f", {emptied} of them listed with 0 bytes" if emptied else ""
    return (
        f"this run would remove the rows of {removed} of the dataset's {known} source files{how} "
        f"({_percent(files_share, max_fraction)} of the files, {_percent(records_share, max_fraction)} of the "
        f"records), more than "
        f"run.max_removed_fraction={max_fraction:g}; check source.path, or --set run.max_removed_fraction=1 "
        "to allow it"
    )


def _percent(share: float, bound: float) -> str:
    """``share`` as a percentage, with as many decimals as it takes not to read as ``bound`` when it is not."""
    for decimals in range(4):
        shown = f"{share:.{decimals}%}"
        if share == bound or round(share * 100, decimals) != round(bound * 100, decimals):
            return shown
    return shown


def _size(signature: str) -> int:
    """The size a :func:`signature` records (0 when it does not say)."""
    head = signature.partition(TAIL)[0].split(":", 1)[0]
    return int(head) if head.isdigit() else 0


def renamed(changes: Changes, signatures: Mapping[str, str]) -> bool:
    """Whether the new inputs hold at least as many bytes as the deleted ones did (moved or renamed files,
    not a listing that lost them)."""
    gone = sum(_size(signatures.get(url, "")) for url in changes.deleted)
    return changes.new.file_bytes() >= gone > 0


def emptied(changes: Changes, signatures: Mapping[str, str]) -> list[str]:
    """The changed inputs now listed with 0 bytes that had bytes when the dataset read them: reading them
    again removes their rows as surely as a deletion (told from the listing, nothing opened)."""
    return [url for url, _, size, _ in changes.changed.facts()
            if size == 0 and _size(signatures.get(url, "")) > 0]


def refusal(changes: Changes, signatures: Mapping[str, str], share_of: Callable[[list[str]], float],
            max_fraction: float, *, deleted: bool = True) -> str | None:
    """Why removing ``changes.deleted`` (when ``deleted``: ``run.on_deleted: remove``) and the rows of the
    :func:`emptied` inputs is refused (None when it is not): more than ``max_fraction`` of the source files
    the dataset knows (``signatures``), or of its records (``share_of`` the removed; a typo matching the
    many small files but not the few big ones). Files that reappear under new names with at least as
    many bytes count as moved, not lost; files truncated to nothing count as lost, whatever was added."""
    gone = changes.deleted if deleted and not renamed(changes, signatures) else []
    empty = emptied(changes, signatures)
    removed = [*gone, *empty]
    if not removed:
        return None
    return removal_refused(len(signatures), len(removed), share_of(removed), max_fraction, len(empty))


def check_removals(changes: Changes, sink: Sink, *, max_fraction: float) -> None:
    """Refuse (``SinkError``, exit 2) a run whose removals :func:`refusal` refuses."""
    refused = refusal(changes, known_inputs(sink), sink.share_of, max_fraction)
    if refused:
        raise SinkError(refused)


def _record_signatures(sink: Sink, fs: Any, inputs: Inputs) -> None:
    """``sink.set_signatures`` of ``inputs``: each one's :func:`full_signature`, taken from the listing's
    columns (no InputFile made) for every input but whole JSONL files, whose tail is hashed."""
    jsonl = inputs.listing.formats().where("jsonl")[inputs.rows()].tolist()
    sink.set_signatures((url, full_signature(fs, inputs[i]) if jsonl[i] else signature_of(size, mtime))
                        for i, (url, _, size, mtime) in enumerate(inputs.facts()))


def apply(sink: Sink, fs: Any, changes: Changes, checkpoints: Checkpoints, progress: Progress,
          *, remove: bool) -> None:
    """Tell the sink what changed: new signatures, inputs to read again or on, rows to remove, inputs
    counted gone and kept (their signature marked) or back from being gone (the mark dropped)."""
    log = get_logger()
    for url in changes.back:  # a changed one's new signature follows, with its new rows
        sink.set_signature(url, as_read(sink.signature(url) or ""))
    for url in changes.kept:
        sink.set_signature(url, marked_gone(sink.signature(url) or ""))
    for i in np.flatnonzero(changes.kinds == APPENDED).tolist():
        inp = changes.inputs[i]
        if not sink.append(inp.key, inp.url):  # its last record is not known: read it whole again
            changes.kinds[i] = CHANGED
    for inp in changes.changed:
        log.info("file_changed", file=inp.key)
        sink.restart(inp.key, inp.url)
        checkpoints.forget(inp.url)
    for inp in changes.appended:
        log.info("file_appended", file=inp.key, after=sink.done_upto(inp.key))
    _record_signatures(sink, fs, changes.of(NEW, CHANGED, APPENDED))
    progress.expect_all(changes.to_read)
    if remove and changes.deleted:
        log.info("files_deleted", count=len(changes.deleted), first=changes.deleted[0])
        for url in changes.deleted:
            checkpoints.forget(url)
        sink.remove_sources(changes.deleted)
