"""Fields the config names that a file's records do not have: ``source.id_field`` or ``source.text_field``
misspelled, said once a run, in one line.

A misnamed id field is silent otherwise: every record takes its
``{file}:{line}`` id, and the dataset is made of them. A misnamed text
field makes every record an error row, each saying only that its text is
missing. :class:`FieldCheck` looks at the first records of each file (a
table's columns) and says which key names nothing there, what the records do
have, and the field it likely meant.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.config import SourceConfig
from pipeline.types import InputFile

#: records of a file looked at before deciding (a jsonl file; a table's columns are known up front)
SAMPLE = 100
#: field names shown at most
SHOWN = 20

ID_KEY, TEXT_KEY = "source.id_field", "source.text_field"


@dataclass(frozen=True)
class FieldMissing:
    """``key`` (``source.id_field`` or ``source.text_field``) names ``value``, which no record of ``file``
    carries among the ``seen`` first records (0: a table, whose ``fields`` are its columns)."""

    key: str
    value: str
    file: str
    fields: tuple[str, ...]
    seen: int
    #: fields that serve another key (the text and metadata fields, for the id): never a guess
    taken: frozenset[str] = frozenset()

    @property
    def did_you_mean(self) -> str | None:
        """The field of ``fields`` the key likely meant: the same but for case, a close spelling, or a
        name with the value as one of its parts (``doc_id`` for ``id``)."""
        return closest(self.value, [f for f in self.fields if f not in self.taken])

    @property
    def then(self) -> str:
        """What the run does about it."""
        if self.key == ID_KEY:
            unit = "row" if not self.seen else "line"
            return f"every record's id is taken as {{file}}:{{{unit}}}"
        if not self.seen:
            return "the file fails as a whole (unreadable_file)"
        return "every record without it is an error row (missing_text)"

    def line(self) -> str:
        """The one line that says it all."""
        shown = ", ".join(self.fields[:SHOWN]) + (f" and {len(self.fields) - SHOWN} more" if len(self.fields) > SHOWN
                                                  else "")
        what = (f"no column of {self.file} (its columns: {shown})" if not self.seen else
                f"no field of the records of {self.file} (the first {self.seen:,} have: {shown})")
        guess = f"; did you mean {self.did_you_mean!r}?" if self.did_you_mean else ";"
        return f"{self.key} {self.value!r} names {what}{guess} {self.then}"

    def log_fields(self) -> dict[str, Any]:
        """The same as an event's context."""
        out = {"key": self.key, "value": self.value, "file": self.file, "has": ", ".join(self.fields[:SHOWN])}
        if self.did_you_mean:
            out["did_you_mean"] = self.did_you_mean
        return {**out, "then": self.then}


def closest(value: str, names: Iterable[str]) -> str | None:
    """The name of ``names`` that ``value`` most likely meant, or None."""
    names = [n for n in names if n != value]
    lower = value.lower()
    for name in names:
        if name.lower() == lower:
            return name
    close = difflib.get_close_matches(lower, {n.lower(): n for n in names}, n=1, cutoff=0.6)
    if close:
        return next(n for n in names if n.lower() == close[0])
    for name in names:
        if lower in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()):
            return name
    return None


def no_column(cfg: SourceConfig, inp: InputFile, names: list[str]) -> FieldMissing | None:
    """Why a table without the ``source.text_field`` column cannot be read (None: it has it)."""
    if cfg.text_field in names:
        return None
    return FieldMissing(TEXT_KEY, cfg.text_field, inp.url, tuple(names), 0)


class FieldCheck:
    """Watches the files a run reads for a ``source.id_field`` or ``source.text_field`` that names nothing
    there, and calls ``warn`` once per key for the first file where it does (from reader threads)."""

    def __init__(self, cfg: SourceConfig, warn: Callable[[FieldMissing], None]) -> None:
        self._cfg = cfg
        self._warn = warn
        self._lock = threading.Lock()
        self._said: set[str] = set()
        #: fields that are no id, whatever the id field is called: a record with only these has no id to miss
        self._not_ids = frozenset({cfg.text_field, *cfg.metadata_fields})

    @property
    def done(self) -> bool:
        """Whether both keys were warned about (nothing left to look for)."""
        return len(self._said) == 2

    def columns(self, inp: InputFile, names: list[str]) -> None:
        """A table's columns: warns of the named ones it lacks (without the text column the reader fails
        the file, with :func:`no_column`'s line)."""
        self.decide(inp, 0, dict.fromkeys(names), self._cfg.id_field in names, self._cfg.text_field in names)

    def records(self, inp: InputFile) -> RecordSample | None:
        """What looks at the first records of a jsonl file (None: nothing left to look for)."""
        return None if self.done else RecordSample(self, inp, self._cfg.id_field, self._cfg.text_field)

    def decide(self, inp: InputFile, seen: int, fields: dict[str, None], has_id: bool, has_text: bool) -> None:
        """Warn of what the ``seen`` first records of ``inp`` (0: its columns), whose ``fields`` are these,
        lack."""
        cfg, names = self._cfg, tuple(fields)
        if not has_id and set(names) - self._not_ids:  # other fields: one of them may be the id
            self._say(FieldMissing(ID_KEY, cfg.id_field, inp.url, names, seen, self._not_ids))
        if not has_text and names:
            self._say(FieldMissing(TEXT_KEY, cfg.text_field, inp.url, names, seen, frozenset({cfg.id_field})))

    def _say(self, missing: FieldMissing) -> None:
        with self._lock:
            if missing.key in self._said:
                return
            self._said.add(missing.key)
        self._warn(missing)


class RecordSample:
    """The first :data:`SAMPLE` records of one jsonl file, as the reader parses them: which fields they have."""

    __slots__ = ("open", "_check", "_inp", "_seen", "_fields", "_id", "_text", "_has_id", "_has_text")

    def __init__(self, check: FieldCheck, inp: InputFile, id_field: str, text_field: str) -> None:
        self._check, self._inp = check, inp
        self._id, self._text = id_field, text_field
        self._seen = 0
        self._fields: dict[str, None] = {}  # in the order met
        self._has_id = self._has_text = False
        #: still looking (the reader asks before each record)
        self.open = True

    def see(self, obj: dict[str, Any]) -> None:
        """One more record (a JSON object)."""
        self._seen += 1
        self._has_id = self._has_id or self._id in obj
        self._has_text = self._has_text or self._text in obj
        if len(self._fields) < 4 * SHOWN:
            self._fields.update(dict.fromkeys(obj))
        if (self._has_id and self._has_text) or self._seen >= SAMPLE:
            self.end()

    def end(self) -> None:
        """The file ended (or enough was seen): say what is missing."""
        if not self.open:
            return
        self.open = False
        if self._seen:
            self._check.decide(self._inp, self._seen, self._fields, self._has_id, self._has_text)
