"""The signatures a run records for new and changed inputs (pipeline.jobs.changes), taken from the listing's columns."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import fsspec

from pipeline.config import SourceConfig
from pipeline.jobs.changes import _record_signatures, full_signature
from pipeline.sources.listing import open_source


class _Recorded:
    """A sink that only keeps the signatures it is told."""

    def __init__(self) -> None:
        self.signatures: dict[str, str] = {}

    def set_signature(self, url: str, signature: str) -> None:
        self.signatures[url] = signature

    def set_signatures(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.signatures.update(pairs)


def test_signatures_are_those_of_the_input_files(tmp_path: Path) -> None:
    """Text files, compressed and whole JSONL files: the same signature full_signature gives each InputFile
    (a whole JSONL file's with the hash of its tail), in listing order."""
    (tmp_path / "a.md").write_text("alpha")
    (tmp_path / "b.jsonl").write_text('{"id": 1, "text": "x"}\n')
    (tmp_path / "c.jsonl.gz").write_bytes(b"")
    (tmp_path / "d.txt").write_text("delta")
    fs, files = open_source(SourceConfig(path=str(tmp_path)))
    sink = _Recorded()
    _record_signatures(sink, fs, files)  # type: ignore[arg-type]
    local = fsspec.filesystem("file")
    assert sink.signatures == {inp.url: full_signature(local, inp) for inp in files}
    assert list(sink.signatures) == [inp.url for inp in files]
    assert "|tail=" in sink.signatures[str(tmp_path / "b.jsonl")]
    assert "|tail=" not in sink.signatures[str(tmp_path / "c.jsonl.gz")]


def test_a_refused_removal_just_over_the_bound_does_not_read_as_the_bound() -> None:
    """101 of 200 files is 50.5%, not "50% ... more than 0.5" (found by a tryout); a round share stays round."""
    from pipeline.jobs.changes import removal_refused

    assert "(50.5% of the files, 50.5% of the records), more than run.max_removed_fraction=0.5" in (
        removal_refused(200, 101, 0.505, 0.5) or "")
    assert "(75% of the files, 10% of the records)" in (removal_refused(200, 150, 0.1, 0.5) or "")
    assert removal_refused(200, 100, 0.5, 0.5) is None
