"""Tests for pipeline.sources.readers: one file's records in order; text files; files that cannot be read."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.listing import open_source
from pipeline.sources.readers import read_records
from pipeline.types import Failure, Record

from source_helpers import jsonl, read_all


def test_file_removed_after_listing_raises_source_error(tmp_path: Path) -> None:
    """A listed file that is gone when read raises SourceError naming it."""
    p = tmp_path / "d.jsonl"
    p.write_bytes(jsonl({"text": "x"}))
    source = SourceConfig(path=str(p))
    fs, (inp,) = open_source(source)
    p.unlink()
    with pytest.raises(SourceError, match=str(p)):
        list(read_records(source, fs, inp))


def test_text_files_are_one_record_each(tmp_path: Path) -> None:
    """A text file is one record: id = path relative to the root, location 0, UTF-8 decoded."""
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "intro.md").write_text("# Intro\n\nBonjour à tous 日本\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    out = read_all(tmp_path)
    by_id = {r.doc_id: r for r in out}
    assert isinstance(by_id["guide/intro.md"], Record)
    assert by_id["guide/intro.md"].text == "# Intro\n\nBonjour à tous 日本\n"
    assert by_id["guide/intro.md"].location == 0
    assert isinstance(by_id["empty.txt"], Failure) and by_id["empty.txt"].error_type == "empty_text"
    assert isinstance(by_id["latin1.txt"], Failure) and by_id["latin1.txt"].error_type == "invalid_utf8"


def test_text_file_resume(tmp_path: Path) -> None:
    """A text file's single record is skipped once after >= 1."""
    p = tmp_path / "a.txt"
    p.write_text("hello", encoding="utf-8")
    source = SourceConfig(path=str(p))
    fs, (inp,) = open_source(source)
    assert len(list(read_records(source, fs, inp))) == 1
    assert list(read_records(source, fs, inp, after=1)) == []


