"""Tests for pipeline.sources.listed and the comparison over it: listed inputs kept column by column."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import SourceConfig
from pipeline.jobs.changes import APPENDED, CHANGED, NEW, RESUMED, UNCHANGED, compare, full_signature
from pipeline.jobs.progress import Progress
from pipeline.sources import listed
from pipeline.sources.listed import Inputs, Listing, _Index
from pipeline.sources.listing import assign, open_source, split_for_workers
from pipeline.types import END_OF_FILE, InputFile

from source_helpers import jsonl


def _file(path: str, **fields: Any) -> InputFile:
    return InputFile(**{"path": path, "url": f"s3://{path}", "size": 10, "format": "jsonl", "compression": None,
                        "rel_path": path.split("/", 1)[1], "mtime": '"e"', **fields})


def test_inputs_give_back_every_field_as_listed_in_listing_order() -> None:
    """Each listed file comes back equal, in the order it was listed: unknown size or time, a compression,
    a url or relative path not made from the path, a local name that is not UTF-8."""
    files = [
        _file("b/z.jsonl.gz", compression="gzip", size=None, mtime=None),
        _file("b/a.md", format="text", rel_path="a.md"),
        InputFile("/data/x\udcff.csv", "/data/x\udcff.csv", 0, "csv", None, "x\udcff.csv"),
        _file("b/odd.md", url="https://***@host/odd.md", rel_path="elsewhere.md", format="text"),
    ]
    inputs = Inputs.of(files)
    assert list(inputs) == files and inputs == files and len(inputs) == 4
    assert inputs[-1] == files[-1] and inputs[1:3] == files[1:3]
    assert list(inputs.urls()) == [f.url for f in files]


def test_times_and_etags_come_back_as_listed_whatever_their_form() -> None:
    """An ETag of 32 hex digits in quotes is kept as 16 bytes, yet every time or ETag comes back the same
    string: upper-case or multipart ETags, values of 16 bytes, no value at all."""
    tags = ['"0123456789abcdef0123456789abcdef"', '"0123456789ABCDEF0123456789ABCDEF"', '"0123456789abcdef-3"',
            "0123456789abcdef0123456789abcdef", "2024-01-01T00:00Z", "é" * 8, "\udcff" * 5 + "x", "", None,
            '"00000000000000000000000000000000"']
    inputs = Inputs.of([_file(f"b/{i}.md", mtime=tag) for i, tag in enumerate(tags)])
    assert [inp.mtime for inp in inputs] == tags
    assert [facts[3] for facts in inputs.facts()] == tags


def test_files_under_many_roots_keep_their_paths() -> None:
    """Paths are kept after their root (the start before the relative path): with more roots than a byte
    tells, the others are kept whole, and a listing of them sorts as Python sorts their paths."""
    files = [_file(f"r{i % 300:03d}/x/{(7 * i) % 600:03d}.md", rel_path=f"{(7 * i) % 600:03d}.md")
             for i in range(600)]
    inputs = Inputs.of(files)
    assert list(inputs) == files
    listing = inputs.listing
    assert [inp.path for inp in Inputs(listing, listing.sorted_rows())] == sorted(f.path for f in files)


def test_an_unsorted_listing_is_read_in_the_order_sorted_gives() -> None:
    """Rows added out of order are read sorted by path as Python sorts strings (non-ASCII included)."""
    paths = ["b/é.md", "b/z.md", "b/a.md", "b/Z.md", "b/日本.md", "b/a b.md"]
    listing = Listing()
    for path in paths:
        listing.append(_file(path))
    assert [inp.path for inp in Inputs(listing, listing.sorted_rows())] == sorted(paths)
    ordered = Listing()
    for path in sorted(paths):
        ordered.append(_file(path))
    assert ordered.sorted_rows() is None


def test_listing_a_folder_gives_inputs_sorted_by_path(tmp_path: Path) -> None:
    """open_source's inputs are the files below the folder, sorted, with their url and relative path."""
    for name in ("c.jsonl", "a/b.jsonl", "a.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(jsonl({"text": name}))
    _, files = open_source(SourceConfig(path=str(tmp_path)))
    assert isinstance(files, Inputs)
    assert [(f.rel_path, f.url, f.size) for f in files] == [
        (rel, str(tmp_path / rel), (tmp_path / rel).stat().st_size) for rel in ("a.md", "a/b.jsonl", "c.jsonl")]


def test_ranks_get_disjoint_inputs_covering_all_in_listing_order(tmp_path: Path) -> None:
    """assign over a listing: every file or piece to one rank only, each rank's in listing order, the same
    shares as splitting the files and hashing each key."""
    for i in range(12):
        (tmp_path / f"f{i:02d}.jsonl").write_bytes(jsonl(*({"id": f"{i}-{j}", "text": "x" * 40} for j in range(30 - i))))
    fs, files = open_source(SourceConfig(path=str(tmp_path)))
    pieces = split_for_workers(fs, list(files), 600)
    shares = [assign(fs, files, rank, 3, 600) for rank in range(3)]
    for rank, share in enumerate(shares):
        expected = [p for p in pieces
                    if int.from_bytes(hashlib.sha256(p.key.encode()).digest()[:8], "big") % 3 == rank]
        assert list(share) == expected and share.files() == len({p.url for p in expected})
    assert sorted(p.key for share in shares for p in share) == sorted(p.key for p in pieces)
    assert sum(share.bytes_to_read() for share in shares) == sum(
        (p.end or 0) - p.start if p.part else p.size or 0 for p in pieces)


def test_urls_not_listed_are_found_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """missing() gives the urls no input has, in their order, whatever the chunk size."""
    monkeypatch.setattr(listed, "CHUNK", 3)
    inputs = Inputs.of([_file(f"b/{i:03d}.md") for i in range(20)])
    asked = ["s3://b/gone.md", *(f"s3://b/{i:03d}.md" for i in range(0, 20, 2)), "s3://b/020.md", "b/001.md"]
    assert inputs.missing(asked) == ["s3://b/gone.md", "s3://b/020.md", "b/001.md"]
    assert inputs.take([1, 3]).missing(["s3://b/001.md", "s3://b/002.md"]) == ["s3://b/002.md"]


class _Same:
    """A value whose hash says nothing: every one hashes alike, only equality tells them apart."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.name == self.name


def test_the_index_checks_values_whose_hashes_collide() -> None:
    """A value is found only where the value itself is, not where another of the same hash is."""
    values = [_Same("a"), _Same("b"), _Same("c")]
    index = _Index(np.array([7, 7, 7], np.int64), values.__getitem__)
    assert index.find([_Same("c"), _Same("x"), _Same("a")]).tolist() == [2, -1, 0]


class _Known:
    """A dataset's signatures and marks, as compare asks them."""

    def __init__(self, signatures: dict[str, str], done: dict[str, int]) -> None:
        self._signatures, self._done = signatures, done

    def signature(self, url: str) -> str | None:
        return self._signatures.get(url)

    def signatures(self) -> dict[str, str]:
        return self._signatures

    def done_upto(self, key: str) -> int:
        return self._done.get(key, 0)


def test_compare_sorts_inputs_by_kind_in_listing_order(tmp_path: Path) -> None:
    """New, resumed, changed, appended and unchanged inputs as before, each kind and what a round reads in
    listing order; deleted ones found among the known urls; a progress counts what is read, once."""
    names = ["a-new", "b-same", "c-resumed", "d-grown", "e-edited", "f-new"]
    for name in names:
        (tmp_path / f"{name}.jsonl").write_bytes(jsonl({"text": name}))
    fs, files = open_source(SourceConfig(path=str(tmp_path)))
    by = {f.rel_path.split(".")[0]: f for f in files}
    known = {f.url: full_signature(fs, f) for name, f in by.items() if not name.endswith("new")}
    known["/gone.jsonl"] = "3:1"
    (tmp_path / "d-grown.jsonl").write_bytes(jsonl({"text": "d-grown"}, {"text": "more"}))
    (tmp_path / "e-edited.jsonl").write_bytes(jsonl({"text": "e-edited, and longer"}))
    _, files = open_source(SourceConfig(path=str(tmp_path)))
    done = {f.key: END_OF_FILE for f in files} | {by["c-resumed"].key: 1}
    changes = compare(_Known(known, done), fs, files, files)
    assert changes.kinds.tolist() == [NEW, UNCHANGED, RESUMED, APPENDED, CHANGED, NEW]
    assert [f.rel_path for f in changes.to_read] == [f"{n}.jsonl" for n in names if n != "b-same"]
    assert [f.rel_path for f in changes.new] == ["a-new.jsonl", "f-new.jsonl"]
    assert (list(changes.resumed), list(changes.appended), list(changes.changed)) == (
        [files[2]], [files[3]], [files[4]])
    assert changes.deleted == ["/gone.jsonl"]
    assert changes.counts() == {"new": 2, "resumed": 1, "changed": 1, "appended": 1, "deleted": 1, "unchanged": 1}
    assert compare(_Known(known, done), fs, list(files), {f.url for f in files}).kinds.tolist() == changes.kinds.tolist()
    each, together = Progress(), Progress()
    for inp in changes.to_read:
        each.expect(inp)
    together.expect_all(changes.to_read)
    assert together.bytes_total == each.bytes_total > 0


def test_against_a_dataset_that_knows_nothing_every_input_is_new(tmp_path: Path) -> None:
    """With no signature known, every input is new and none is looked at one by one."""
    (tmp_path / "a.jsonl").write_bytes(jsonl({"text": "a"}))

    class Nothing(_Known):
        def signature(self, url: str) -> str | None:
            raise AssertionError("looked up one by one")

    fs, files = open_source(SourceConfig(path=str(tmp_path)))
    changes = compare(Nothing({}, {}), fs, files, files)
    assert changes.to_read == files and changes.to_read is files and not changes.deleted


def test_settled_inputs_are_those_the_listing_before_held_alike() -> None:
    """An input is settled when the previous listing had it with the same key, size and time."""
    before = Inputs.of([_file("b/a.md"), _file("b/b.md"), _file("b/c.md", size=3)])
    now = Inputs.of([_file("b/a.md"), _file("b/b.md", mtime='"f"'), _file("b/c.md", size=4), _file("b/d.md")])
    assert [f.path for f in now.settled_since(before)] == ["b/a.md"]
    assert len(now.settled_since(None)) == 0


def test_a_run_of_files_added_at_once_reads_back_as_added_one_by_one() -> None:
    """Listing.add_run (a local folder's files in bulk) keeps what append keeps, whatever the names and
    times: not ASCII, not UTF-8, a time of 16 characters, one that looks like an ETag; out of order too."""
    root = "/data/corpus/"
    rels = ["a.md", "b/c.md", "x\udcff.md", "z.jsonl.gz", "é.md"]
    sizes = [1, 0, 30, 4, 5]
    mtimes = ["1764600000.12345", "1764600000.5", "1764600001.0", '"0123456789abcdef0123456789abcdef"', "7"]
    formats = ["text", "text", "text", "jsonl", "text"]
    compressions: list[str | None] = [None, None, None, "gzip", None]
    files = [InputFile(root + rel, root + rel, size, fmt, compression, rel, mtime)
             for rel, size, mtime, fmt, compression in zip(rels, sizes, mtimes, formats, compressions)]
    bulk = Listing()
    bulk.add_run(root, rels[:2], sizes[:2], mtimes[:2], formats[:2], compressions[:2])
    bulk.add_run(root, rels[2:], sizes[2:], mtimes[2:], formats[2:], compressions[2:])
    assert list(Inputs(bulk)) == files and bulk.in_order
    one_by_one = Listing()
    for inp in files:
        one_by_one.append(inp)
    assert [bulk.url(row) for row in range(5)] == [one_by_one.url(row) for row in range(5)]
    assert [bulk.mtime(row) for row in range(5)] == mtimes
    late = Listing()
    late.add_run(root, rels[2:], sizes[2:], mtimes[2:], formats[2:], compressions[2:])
    late.add_run(root, rels[:2], sizes[:2], mtimes[:2], formats[:2], compressions[:2])
    assert not late.in_order and list(Inputs(late, late.sorted_rows())) == files


def test_urls_under_a_prefix_are_told_by_root_or_one_by_one() -> None:
    """Inputs.starting_with: every file of a root under the prefix, none of a root beside it, each of a
    root the prefix lies below; a url kept aside whole by its own."""
    listing = Listing()
    listing.add_run("/src/", ["a.md", "out/x.md", "out/y.md", "z.md"], [1] * 4, ["1.0"] * 4, ["text"] * 4, [None] * 4)
    listing.add_run("/src-out/", ["b.md"], [1], ["1.0"], ["text"], [None])
    inputs = Inputs(listing)
    assert inputs.starting_with("/src/out/").tolist() == [False, True, True, False, False]
    assert inputs.starting_with("/src-out/").tolist() == [False] * 4 + [True]
    assert inputs.starting_with("/src").tolist() == [True] * 5
    assert inputs.starting_with("/elsewhere/").tolist() == [False] * 5
    odd = Inputs.of([_file("b/odd.md", url="https://***@host/odd.md", rel_path="elsewhere.md", format="text"),
                     _file("b/a.md", rel_path="a.md")])
    assert odd.starting_with("https://").tolist() == [True, False]
    assert odd.take([1, 0]).starting_with("s3://b/").tolist() == [True, False]
