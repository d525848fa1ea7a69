"""Tests for pipeline.sources.local_walk: a local directory listed as fsspec's ``find`` lists it."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec

from pipeline.config import SourceConfig
from pipeline.sources.listing import detect_format, open_source
from pipeline.sources.local_walk import each_file_below


def _tree(root: Path) -> None:
    """Files, folders whose names sort around their siblings' ('a-b' < 'a/' < 'a0'), hidden entries,
    symbolic links (to a file, to a folder, dangling), a fifo and an empty folder."""
    for name in ["b.md", "a/z.txt", "a/b/c.csv", "a-b.md", "a0.md", "a/x.jsonl.gz", ".hidden/h.md",
                 "_tmp/t.md", "a/.d.md", "a/_e.md", "notes.bin", "deep/er/est/f.md", "é.md", "z/Z.md"]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name * 3)
    (root / "empty").mkdir()
    os.symlink(root / "a/z.txt", root / "link.md")
    os.symlink(root / "a", root / "linked-folder.md")
    os.symlink(root / "nowhere.md", root / "dangling.md")
    os.mkfifo(root / "pipe.md")


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def test_files_below_are_what_fsspec_find_lists(tmp_path: Path) -> None:
    """Every non-hidden entry fsspec's find gives, with the same path, size and time, in the same order."""
    _tree(tmp_path)
    root = str(tmp_path)
    found = fsspec.filesystem("file").find(root, detail=True)
    expected = [(path, info["size"], str(info["mtime"])) for path, info in found.items()
                if not _hidden(path[len(root) + 1:])]
    listed: list[tuple[str, int, str]] = []
    each_file_below(root, lambda *facts: listed.append(facts))
    assert listed == expected
    assert {path[len(root) + 1:] for path, _, _ in listed} >= {"link.md", "linked-folder.md", "dangling.md",
                                                                "pipe.md", "a-b.md", "a/b/c.csv"}


def test_source_listing_of_a_local_folder_is_unchanged(tmp_path: Path) -> None:
    """open_source on a local folder gives the inputs listing through fsspec gives, and counts the skipped."""
    _tree(tmp_path)
    skipped: dict[str, int] = {}
    _, files = open_source(SourceConfig(path=str(tmp_path)), skipped)
    _, through_fsspec = open_source(SourceConfig(path=f"{tmp_path}/**"))  # a glob: fsspec lists it
    assert list(files) == list(through_fsspec)
    assert [f.rel_path for f in files][:4] == ["a-b.md", "a/b/c.csv", "a/x.jsonl.gz", "a/z.txt"]
    assert skipped == {".bin": 1}


def test_a_folder_that_cannot_be_read_is_left_out(tmp_path: Path, monkeypatch) -> None:
    """As with fsspec: a folder that cannot be listed is left out quietly, with everything below it."""
    _tree(tmp_path)
    real = os.scandir

    def scandir(path: str):  # root reads every folder: refuse one as a missing permission would
        if path.endswith("/a"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listed: list[str] = []
    each_file_below(str(tmp_path), lambda path, size, mtime: listed.append(path[len(str(tmp_path)) + 1:]))
    assert not [rel for rel in listed if rel.startswith("a/")] and "a-b.md" in listed and "b.md" in listed


def test_each_walked_file_has_the_format_and_compression_of_its_own_name(tmp_path: Path) -> None:
    """Names sharing what follows their first dot, or not quite (case, a second suffix, none), each as
    detect_format reads it (the walk reads each ending once)."""
    names = ["UP.MD", "up.md", "t.md.gz", "u.md.GZ", "c.jsonl.gz", "d.jsonl.gz", "x.tar.md", "y.tar.md",
             "dots..md", "plain", "other", "e.csv", "f.bin.gz", "g.bin.gz"]
    for name in names:
        (tmp_path / name).write_text("x")
    _, files = open_source(SourceConfig(path=str(tmp_path)))
    assert {f.rel_path: (f.format, f.compression) for f in files} == {
        name: detect_format(name) for name in names if detect_format(name)[0] is not None}
