"""Tests for pipeline.sources.listing: the input files of source.path, their formats, and sharing them out."""

from __future__ import annotations

import functools
import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import fsspec.asyn
import fsspec.implementations.memory
import pytest

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.listing import assign, detect_format, open_source, split_for_workers
from pipeline.sources.readers import read_records
from pipeline.types import Failure, InputFile, Record

from source_helpers import jsonl, read_all


@pytest.fixture
def mem() -> Iterator[str]:
    """A fresh memory:// directory, removed afterwards (the memory store is process-global)."""
    root = f"/test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_detect_format_strips_compression_first() -> None:
    """Formats come from the extension left after a compression suffix, which names the codec."""
    assert detect_format("a/b.jsonl") == ("jsonl", None)
    assert detect_format("b.NDJSON.GZ") == ("jsonl", "gzip")
    assert detect_format("b.md.zst") == ("text", "zstd")
    assert detect_format("b.csv.bz2") == ("csv", "bz2")
    assert detect_format("b.feather.xz") == ("arrow", "xz")
    assert detect_format("b.parquet") == ("parquet", None)
    assert detect_format("b.bin") == (None, None)
    assert detect_format("b.bin.gz", "jsonl") == ("jsonl", "gzip")


def test_directory_lists_supported_files_recursively_sorted(tmp_path: Path) -> None:
    """A directory yields every supported, non-hidden file below it, sorted by path, with rel_path."""
    names = ["b.jsonl", "a/z.txt", "a/b/c.csv", "a/x.jsonl.gz", ".hidden/h.jsonl", "_tmp.jsonl", "a/.d.jsonl"]
    names.append("notes.bin")
    for name in names:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    fs, files = open_source(SourceConfig(path=str(tmp_path)))
    assert [f.rel_path for f in files] == ["a/b/c.csv", "a/x.jsonl.gz", "a/z.txt", "b.jsonl"]
    assert [f.path for f in files] == sorted(f.path for f in files)
    gz = files[1]
    assert (gz.format, gz.compression, gz.size) == ("jsonl", "gzip", 0)
    assert gz.url == gz.path == str(tmp_path / "a/x.jsonl.gz")
    assert gz.mtime is not None


def test_glob_is_recursive_and_relative_to_its_prefix(tmp_path: Path) -> None:
    """A ** glob matches at every depth; rel_path is relative to the glob's non-wildcard prefix."""
    for name in ["docs/a.jsonl", "docs/sub/b.jsonl", "docs/sub/c.txt", "docs/_skip/d.jsonl"]:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    _, files = open_source(SourceConfig(path=f"{tmp_path}/docs/**/*.jsonl"))
    assert [f.rel_path for f in files] == ["a.jsonl", "sub/b.jsonl"]


def test_single_file_and_file_url(tmp_path: Path) -> None:
    """A single file (plain path or file:// URL) lists as itself; its rel_path is its name and url its local path."""
    p = tmp_path / "one.ndjson"
    p.write_bytes(jsonl({"id": 1, "text": "x"}))
    _, files = open_source(SourceConfig(path=str(p)))
    _, files_url = open_source(SourceConfig(path=f"file://{p}"))
    assert files == files_url
    assert files[0].rel_path == "one.ndjson" and files[0].url == str(p) and files[0].format == "jsonl"


def test_single_file_with_unknown_extension_is_an_error(tmp_path: Path) -> None:
    """A named file whose format cannot be told from its extension raises SourceError, unless format is set."""
    p = tmp_path / "data.bin"
    p.write_bytes(jsonl({"text": "x"}))
    with pytest.raises(SourceError, match="source.format"):
        open_source(SourceConfig(path=str(p)))
    assert [r.text for r in read_all(p, format="jsonl")] == ["x"]


def test_missing_path_is_a_one_line_source_error(tmp_path: Path) -> None:
    """A path that does not exist raises SourceError with one line naming the path."""
    missing = str(tmp_path / "nope" / "docs.jsonl")
    with pytest.raises(SourceError) as info:
        open_source(SourceConfig(path=missing))
    assert missing in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_nothing_matching_is_a_source_error(tmp_path: Path) -> None:
    """A glob or directory with no supported files raises 'no input files match'."""
    (tmp_path / "x.bin").write_bytes(b"")
    for path in (f"{tmp_path}/*.jsonl", str(tmp_path)):
        with pytest.raises(SourceError, match="no input files match source.path: "):
            open_source(SourceConfig(path=path))


def test_memory_filesystem(mem: str) -> None:
    """memory:// URLs list and read; url carries the protocol."""
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{mem}/b.jsonl", jsonl({"id": "b1", "text": "bee"}))
    fs.pipe(f"{mem}/a.jsonl", jsonl({"id": "a1", "text": "ay"}))
    fs.pipe(f"{mem}/.skip.jsonl", jsonl({"id": "s", "text": "no"}))
    source = SourceConfig(path=f"memory://{mem}")
    fs2, files = open_source(source)
    assert [f.rel_path for f in files] == ["a.jsonl", "b.jsonl"]
    assert files[0].url == f"memory://{mem}/a.jsonl"
    records = [r for f in files for r in read_records(source, fs2, f)]
    assert [(r.doc_id, r.text, r.source) for r in records] == [
        ("a1", "ay", f"memory://{mem}/a.jsonl"),
        ("b1", "bee", f"memory://{mem}/b.jsonl"),
    ]
    _, globbed = open_source(SourceConfig(path=f"memory://{mem}/*.jsonl"))
    assert [f.rel_path for f in globbed] == ["a.jsonl", "b.jsonl"]


def test_input_file_is_frozen(tmp_path: Path) -> None:
    """open_source returns InputFile values (frozen, comparable)."""
    p = tmp_path / "a.txt"
    p.write_text("x", encoding="utf-8")
    _, files = open_source(SourceConfig(path=str(p)))
    assert isinstance(files[0], InputFile) and files == open_source(SourceConfig(path=str(p)))[1]


def test_unknown_protocol_is_a_source_error() -> None:
    """An fsspec URL with an unknown protocol raises a one-line SourceError naming the path."""
    with pytest.raises(SourceError, match="nosuchproto://b/x.jsonl") as info:
        open_source(SourceConfig(path="nosuchproto://b/x.jsonl"))
    assert "\n" not in str(info.value)


def test_existing_path_with_wildcard_characters_is_used_as_written(tmp_path: Path) -> None:
    """A folder or file whose name holds [ ] * ? is listed as itself when it exists, not taken for a glob."""
    folder = tmp_path / "docs [2024]"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jsonl").write_bytes(jsonl({"id": "a", "text": "ay"}))
    (folder / "sub" / "b*.jsonl").write_bytes(jsonl({"id": "b", "text": "bee"}))
    (tmp_path / "docs 2").mkdir()  # what [2024] means as a glob: must not be what is listed
    (tmp_path / "docs 2" / "c.jsonl").write_bytes(jsonl({"id": "c", "text": "sea"}))
    _, files = open_source(SourceConfig(path=str(folder)))
    assert [f.rel_path for f in files] == ["a.jsonl", "sub/b*.jsonl"]
    _, (single,) = open_source(SourceConfig(path=str(folder / "sub" / "b*.jsonl")))
    assert single.path == str(folder / "sub" / "b*.jsonl") and single.rel_path == "b*.jsonl"
    _, globbed = open_source(SourceConfig(path=f"{tmp_path}/docs ?/*.jsonl"))  # a real glob still globs
    assert [f.rel_path for f in globbed] == ["docs 2/c.jsonl"]


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[str]:
    """A static HTTP server on loopback serving ``tmp_path``; yields its URL with user:SECRET@ in it."""
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://user:SECRET@127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def test_urls_with_credentials_are_never_shown(tmp_path: Path, http_root: str) -> None:
    """A source URL carrying user:password lists and reads, but no url, record or message shows the secret."""
    (tmp_path / "a.jsonl").write_bytes(jsonl({"text": "no id"}, b"{bad"))
    source = SourceConfig(path=f"{http_root}/a.jsonl")
    fs, (inp,) = open_source(source)
    items = list(read_records(source, fs, inp))
    assert len(items) == 2 and isinstance(items[0], Record) and isinstance(items[1], Failure)
    shown = [inp.url, inp.key, *(i.source for i in items), *(i.doc_id for i in items), items[1].message]
    assert inp.url == f"{http_root.replace('user:SECRET@', '***@')}/a.jsonl"
    assert not any("SECRET" in text for text in shown)
    for missing in (f"{http_root}/nope.jsonl", f"{http_root}/a.csv"):
        with pytest.raises(SourceError) as info:
            fs, files = open_source(SourceConfig(path=missing))
            list(read_records(SourceConfig(path=missing), fs, files[0]))
        assert "SECRET" not in str(info.value) and "***@127.0.0.1" in str(info.value)


def test_assign_shares_files_and_pieces_out_once_and_stably(tmp_path: Path) -> None:
    """Each file or piece goes to exactly one of the workers, the same one whatever the listing order;
    one worker gets everything, whole."""
    for i in range(12):
        (tmp_path / f"f{i:02d}.jsonl").write_bytes(jsonl(*({"id": f"{i}-{j}", "text": "x" * 40} for j in range(30))))
    fs, files = open_source(SourceConfig(path=str(tmp_path)))
    assert assign(fs, files, 0, 1, 100) == files
    shares = [assign(fs, files, rank, 3, 600) for rank in range(3)]
    pieces = sorted(p.key for share in shares for p in share)
    assert pieces == sorted(p.key for p in split_for_workers(fs, files, 600)) and len(pieces) > len(files)
    assert len(set(pieces)) == len(pieces) and all(shares)
    reordered = assign(fs, list(reversed(files)), 1, 3, 600)
    assert sorted(p.key for p in reordered) == sorted(p.key for p in shares[1])


class _PagedStore(fsspec.implementations.memory.MemoryFileSystem):
    """An S3-like store that lists a page at a time (``_iterdir``, as s3fs does) and refuses ``find``."""

    protocol = ("s3", "s3a")
    pages = 0

    def __init__(self, keys: list[str]) -> None:
        super().__init__(skip_instance_cache=True)
        self.keys = keys
        self.loop = fsspec.asyn.get_loop()

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return path.split("://", 1)[-1].strip("/")

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return {"name": path, "type": "directory", "size": 0}

    def find(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the whole tree was gathered")

    def invalidate_cache(self, path: str | None = None) -> None:
        pass

    def split_path(self, path: str) -> tuple[str, str, None]:
        bucket, _, key = path.partition("/")
        return bucket, key, None

    async def _iterdir(self, bucket: str, prefix: str = "", delimiter: str = "/") -> Any:
        assert delimiter == "" and prefix == "docs/"
        for start in range(0, len(self.keys), 3):
            self.pages += 1
            for key in self.keys[start:start + 3]:
                yield {"name": f"{bucket}/{key}", "type": "file", "size": len(key), "ETag": f'"{key}"'}


def test_s3_listing_is_taken_a_page_at_a_time() -> None:
    """Below an S3 prefix, objects come a page at a time into input files (never one dict of them all);
    folder markers and hidden or unknown files are left out, the rest sorted by path."""
    from pipeline.sources.listing import list_files
    from pipeline.storage import Location

    keys = ["docs/b.md", "docs/a.jsonl", "docs/sub/", "docs/sub/c.txt", "docs/_hidden.md", "docs/x.bin",
            "docs/sub/d.md"]
    fs = _PagedStore(keys)
    skipped: dict[str, int] = {}
    files = list_files(Location.on(fs, "s3://bkt/docs", role="source.path"), SourceConfig(path="s3://bkt/docs"),
                       skipped)
    assert [f.rel_path for f in files] == ["a.jsonl", "b.md", "sub/c.txt", "sub/d.md"]
    assert files[1].url == "s3://bkt/docs/b.md" and files[1].mtime == '"docs/b.md"' and files[1].size == 9
    assert skipped == {".bin": 1} and fs.pages == 3
