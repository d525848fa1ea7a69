"""What changed in the source since the dataset last saw it: new, changed, appended, deleted, unchanged.

Every run (and every round of a watcher) compares the listing with the
signatures the sink recorded: an input's size and modification time or
ETag. Unchanged inputs are not opened. A whole, uncompressed JSONL file
that only grew is *appended*: the last KB before its old end is the same
as when it was read, so only the lines after its last record are read.
Inputs gone from the listing have their rows removed, unless a run would
remove more than ``run.max_removed_fraction`` of the dataset's inputs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.dataset.sink import Sink
from pipeline.errors import SinkError, SourceError
from pipeline.jobs.progress import Progress
from pipeline.logs import get_logger
from pipeline.stages.read import Checkpoints
from pipeline.types import END_OF_FILE, InputFile

TAIL_BYTES = 1024  # how much before a JSONL file's old end must be the same for it to count as appended
TAIL = "|tail="


def signature(inp: InputFile) -> str:
    """What tells that an input changed: its size and modification time or ETag."""
    return f"{inp.size}:{inp.mtime}"


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


@dataclass
class Changes:
    """The inputs of one comparison, by what happened to them (lists of inputs; urls for the deleted)."""

    new: list[InputFile] = field(default_factory=list)
    resumed: list[InputFile] = field(default_factory=list)
    changed: list[InputFile] = field(default_factory=list)
    appended: list[InputFile] = field(default_factory=list)
    unchanged: int = 0
    deleted: list[str] = field(default_factory=list)

    @property
    def to_read(self) -> list[InputFile]:
        """What a round reads, in listing order."""
        return [*self.new, *self.resumed, *self.changed, *self.appended]

    def counts(self) -> dict[str, int]:
        """How many inputs (files; a split file once) each kind counts."""

        def urls(files: list[InputFile]) -> int:
            return len({f.url for f in files})

        return {"new": urls(self.new), "resumed": urls(self.resumed), "changed": urls(self.changed),
                "appended": urls(self.appended), "deleted": len(self.deleted), "unchanged": self.unchanged}


class Known(Protocol):
    """What :func:`compare` asks of a sink (or of a manifest read without opening the sink)."""

    def signature(self, url: str) -> str | None: ...

    def signatures(self) -> dict[str, str]: ...

    def done_upto(self, key: str) -> int: ...


def known_inputs(sink: Any) -> dict[str, str]:
    """The inputs ``sink`` holds rows of, with their signatures; empty for a sink that cannot say."""
    signatures = getattr(sink, "signatures", None)
    return signatures() if signatures is not None else {}


def compare(sink: Known, fs: Any, mine: list[InputFile], listed: set[str]) -> Changes:
    """Sort this rank's inputs ``mine`` by what changed, and find what the dataset holds of inputs not in ``listed``.

    ``listed`` holds the urls of the whole listing (every rank's), so that
    an input another rank reads is not taken for a deleted one.
    """
    out = Changes()
    grew: dict[str, bool] = {}
    for inp in mine:
        known = sink.signature(inp.url)
        if known is None:
            out.new.append(inp)
        elif known.partition(TAIL)[0] == signature(inp):
            if sink.done_upto(inp.key) >= END_OF_FILE:
                out.unchanged += 1
            else:
                out.resumed.append(inp)
        else:
            if inp.url not in grew:
                grew[inp.url] = only_grew(fs, inp, known)
            (out.appended if grew[inp.url] else out.changed).append(inp)
    out.deleted = sorted(url for url in known_inputs(sink) if url not in listed)
    return out


def removal_refused(known: int, removed: int, records_share: float, max_fraction: float) -> str | None:
    """Why removing ``removed`` of ``known`` source files (``records_share`` of the records) is refused."""
    files_share = removed / known if known else 0.0
    if max(files_share, records_share) <= max_fraction:
        return None
    return (
        f"this run would remove the rows of {removed} of the dataset's {known} source files "
        f"({files_share:.0%} of the files, {records_share:.0%} of the records), more than "
        f"run.max_removed_fraction={max_fraction:g}; check source.path, or --set run.max_removed_fraction=1 "
        "to allow it"
    )


def renamed(changes: Changes, signatures: dict[str, str]) -> bool:
    """Whether the new inputs hold at least as many bytes as the deleted ones did (moved or renamed files,
    not a listing that lost them)."""
    def size(signature: str) -> int:
        head = signature.partition(TAIL)[0].split(":", 1)[0]
        return int(head) if head.isdigit() else 0

    gone = sum(size(signatures.get(url, "")) for url in changes.deleted)
    return sum(inp.size or 0 for inp in {f.url: f for f in changes.new}.values()) >= gone > 0


def records_share(changes: Changes, sink: Any, signatures: dict[str, str]) -> float:
    """The share of the sink's records the deleted inputs hold; 0 when new inputs make up for them."""
    return 0.0 if renamed(changes, signatures) else sink.share_of(changes.deleted)


def check_removals(changes: Changes, sink: Sink, *, max_fraction: float) -> None:
    """Refuse (``SinkError``, exit 2) a run that would remove more than ``max_fraction`` of the source
    files, or of the records (a typo matching the many small files but not the few big ones)."""
    if not changes.deleted:
        return
    known = known_inputs(sink)
    share = records_share(changes, sink, known)
    refused = removal_refused(len(known), len(changes.deleted), share, max_fraction)
    if refused:
        raise SinkError(refused)


def apply(sink: Sink, fs: Any, changes: Changes, checkpoints: Checkpoints, progress: Progress,
          *, remove: bool) -> None:
    """Tell the sink what changed: new signatures, inputs to read again or on, rows to remove."""
    log = get_logger()
    for inp in list(changes.appended):
        if not sink.append(inp.key, inp.url):  # its last record is not known: read it whole again
            changes.appended.remove(inp)
            changes.changed.append(inp)
    for inp in changes.changed:
        log.info("file_changed", file=inp.key)
        sink.restart(inp.key, inp.url)
        checkpoints.forget(inp.url)
    for inp in changes.appended:
        log.info("file_appended", file=inp.key, after=sink.done_upto(inp.key))
    for inp in [*changes.new, *changes.changed, *changes.appended]:
        sink.set_signature(inp.url, full_signature(fs, inp))
    for inp in changes.to_read:
        progress.expect(inp)
    if remove and changes.deleted:
        log.info("files_deleted", count=len(changes.deleted), first=changes.deleted[0])
        for url in changes.deleted:
            checkpoints.forget(url)
        sink.remove_sources(changes.deleted)
