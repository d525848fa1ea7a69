"""Tests for pipeline.sources: listing input files and streaming records out of them."""

from __future__ import annotations

import bz2
import gzip
import lzma
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.readers import detect_format, open_source, read_records
from pipeline.types import Failure, InputFile, Record


def jsonl(*objs: Any) -> bytes:
    return b"".join((o if isinstance(o, bytes) else orjson.dumps(o)) + b"\n" for o in objs)


def read_all(path: str | Path, **cfg: Any) -> list[Record | Failure]:
    source = SourceConfig(path=str(path), **cfg)
    fs, files = open_source(source)
    out: list[Record | Failure] = []
    for inp in files:
        out.extend(read_records(source, fs, inp))
    return out


def texts(items: list[Record | Failure]) -> list[str | None]:
    return [i.text for i in items]


@pytest.fixture
def mem() -> Iterator[str]:
    """A fresh memory:// directory, removed afterwards (the memory store is process-global)."""
    root = f"/test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


# --------------------------------------------------------------------------- listing


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


# --------------------------------------------------------------------------- jsonl


def test_jsonl_records_ids_and_metadata(tmp_path: Path) -> None:
    """jsonl: ids as strings (numbers too), missing ids become url:line, metadata copied, blank lines skipped."""
    p = tmp_path / "d.jsonl"
    p.write_bytes(
        jsonl({"id": "a", "text": "first", "lang": "en", "n": 1}, {"id": 7, "text": "second"})
        + b"\n   \n"
        + jsonl({"text": "third", "lang": "fr"}, {"id": None, "text": "fourth"})
    )
    out = read_all(p, metadata_fields=["lang", "n"])
    assert all(isinstance(r, Record) for r in out)
    assert [(r.doc_id, r.location) for r in out] == [("a", 1), ("7", 2), (f"{p}:5", 5), (f"{p}:6", 6)]
    assert out[0].metadata == {"lang": "en", "n": 1}
    assert out[1].metadata == {"lang": None, "n": None}
    assert out[2].source == str(p)


def test_jsonl_custom_fields_and_crlf(tmp_path: Path) -> None:
    """id_field/text_field pick the fields; CRLF line ends and a missing final newline are fine."""
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"key": "k1", "body": "hello"}\r\n{"key": "k2", "body": "world"}')
    out = read_all(p, id_field="key", text_field="body")
    assert [(r.doc_id, r.text) for r in out] == [("k1", "hello"), ("k2", "world")]


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [
        (".gz", gzip.compress),
        (".zst", lambda b: zstandard.ZstdCompressor().compress(b)),
        (".bz2", bz2.compress),
        (".xz", lzma.compress),
    ],
)
def test_jsonl_compressed(tmp_path: Path, suffix: str, compress: Any) -> None:
    """Compressed jsonl (gz, zst, bz2, xz) is decompressed transparently."""
    p = tmp_path / f"d.jsonl{suffix}"
    p.write_bytes(compress(jsonl(*({"id": i, "text": f"doc {i}"} for i in range(3000)))))
    out = read_all(p)
    assert len(out) == 3000 and out[-1].text == "doc 2999" and out[-1].location == 3000


def test_jsonl_lines_span_read_blocks(tmp_path: Path) -> None:
    """Lines longer than the read block and lines crossing block edges come out whole."""
    long_text = "é" * 700_000  # 1.4 MB of UTF-8, over one 1 MiB block
    p = tmp_path / "d.jsonl"
    short = ({"id": i, "text": f"t{i}" * 50} for i in range(20_000))
    p.write_bytes(jsonl(*short, {"id": "long", "text": long_text}, {"id": "z", "text": "end"}))
    out = read_all(p)
    assert len(out) == 20_002
    assert [r.location for r in out] == list(range(1, 20_003))
    assert out[-2].text == long_text and out[-1].text == "end"


def test_jsonl_resume_after_skips_lines(tmp_path: Path) -> None:
    """after=N skips every record at location N or before, bad lines included."""
    p = tmp_path / "d.jsonl"
    p.write_bytes(jsonl({"id": 1, "text": "a"}, b"not json", {"id": 3, "text": "c"}, {"id": 4, "text": "d"}))
    source = SourceConfig(path=str(p))
    fs, (inp,) = open_source(source)
    assert [r.location for r in read_records(source, fs, inp, after=2)] == [3, 4]
    assert [r.location for r in read_records(source, fs, inp, after=4)] == []
    assert [r.location for r in read_records(source, fs, inp, after=0)] == [1, 2, 3, 4]


def test_jsonl_bad_records_become_failures(tmp_path: Path) -> None:
    """Each kind of bad line becomes a Failure with file, line and type; the good lines around it still come out."""
    p = tmp_path / "d.jsonl"
    p.write_bytes(
        jsonl(
            {"id": "ok1", "text": "good one"},
            b'{"id": "x", "text": ',  # 2 invalid_json
            b"[1, 2]",  # 3 invalid_json (not an object)
            b'{"id": "u", "text": "caf\xff"}',  # 4 invalid_utf8
            {"id": "m", "title": "no text"},  # 5 missing_text
            {"id": "nul", "text": None},  # 6 missing_text
            {"id": 9, "text": 42},  # 7 invalid_text
            {"id": "e", "text": ""},  # 8 empty_text
            {"text": "  \n\t "},  # 9 empty_text, no id
            {"id": "ok2", "text": "good two"},
        )
    )
    out = read_all(p)
    assert len(out) == 10
    good = [r for r in out if isinstance(r, Record)]
    assert [(r.doc_id, r.location) for r in good] == [("ok1", 1), ("ok2", 10)]
    bad = {f.location: f for f in out if isinstance(f, Failure)}
    kinds = {loc: f.error_type for loc, f in bad.items()}
    assert kinds == {
        2: "invalid_json",
        3: "invalid_json",
        4: "invalid_utf8",
        5: "missing_text",
        6: "missing_text",
        7: "invalid_text",
        8: "empty_text",
        9: "empty_text",
    }
    for loc, f in bad.items():
        assert f.source == str(p) and f.chunk_index == 0 and f.status is None and f.attempts == 0
        assert f.message.startswith(f"line {loc}: ") and "\n" not in f.message
        assert f.id == f.doc_id
    assert bad[2].id == f"{p}:2" and bad[2].text is None and "not valid JSON" in bad[2].message
    assert "not a JSON object" in bad[3].message
    assert bad[5].id == "m" and bad[7].id == "9" and bad[7].text is None
    assert bad[8].text == "" and bad[9].id == f"{p}:9" and bad[9].text == "  \n\t "


def test_corrupt_gzip_raises_source_error_naming_the_file(tmp_path: Path) -> None:
    """A gzip stream that breaks midway raises SourceError naming the file, after the records before it."""
    data = gzip.compress(jsonl(*({"id": i, "text": f"doc {i} " + "x" * 50} for i in range(5000))))
    p = tmp_path / "d.jsonl.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=str(p)) as info:
        read_all(p)
    assert "\n" not in str(info.value)


def test_file_removed_after_listing_raises_source_error(tmp_path: Path) -> None:
    """A listed file that is gone when read raises SourceError naming it."""
    p = tmp_path / "d.jsonl"
    p.write_bytes(jsonl({"text": "x"}))
    source = SourceConfig(path=str(p))
    fs, (inp,) = open_source(source)
    p.unlink()
    with pytest.raises(SourceError, match=str(p)):
        list(read_records(source, fs, inp))


# --------------------------------------------------------------------------- text


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


# --------------------------------------------------------------------------- tabular


def sample_table() -> pa.Table:
    return pa.table(
        {
            "id": [1, 2, None, 4, 5],
            "text": ["alpha", "", "gamma", None, "epsilon"],
            "lang": ["en", "fr", "de", "es", "it"],
            "extra": [1.5, 2.5, 3.5, 4.5, 5.5],
        }
    )


def check_tabular(out: list[Record | Failure], url: str) -> None:
    assert [type(r).__name__ for r in out] == ["Record", "Failure", "Record", "Failure", "Record"]
    assert [r.location for r in out] == [1, 2, 3, 4, 5]
    assert [r.doc_id for r in out] == ["1", "2", f"{url}:3", "4", "5"]
    assert out[1].error_type == "empty_text" and out[1].message.startswith("row 2: ")
    assert out[3].error_type == "missing_text"
    assert out[0].metadata == {"lang": "en"} and out[4].text == "epsilon"


def test_parquet_rows(tmp_path: Path) -> None:
    """parquet: one record per row with the named columns, row numbers from 1, in batches."""
    p = tmp_path / "t.parquet"
    pq.write_table(sample_table(), p, row_group_size=2)
    check_tabular(read_all(p, metadata_fields=["lang"]), str(p))


def test_parquet_resume_and_many_batches(tmp_path: Path) -> None:
    """parquet resume skips whole batches and rows up to after=N."""
    p = tmp_path / "t.parquet"
    n = 10_000
    table = pa.table({"id": [f"r{i}" for i in range(n)], "text": [f"row {i}" for i in range(n)]})
    pq.write_table(table, p, row_group_size=3000)
    source = SourceConfig(path=str(p))
    fs, (inp,) = open_source(source)
    out = list(read_records(source, fs, inp, after=8191))
    assert [r.location for r in out] == list(range(8192, n + 1))
    assert out[0].doc_id == "r8191"


def test_parquet_non_string_text_is_invalid_text(tmp_path: Path) -> None:
    """A text column that is not strings makes invalid_text failures."""
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": [3]}), p)
    (f,) = read_all(p)
    assert isinstance(f, Failure) and f.error_type == "invalid_text"


def test_missing_text_column_is_a_source_error(tmp_path: Path) -> None:
    """A table without the text column raises SourceError naming the file and column."""
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), p)
    with pytest.raises(SourceError, match="'text'"):
        read_all(p)
    c = tmp_path / "t.csv"
    c.write_text("id,body\n1,x\n", encoding="utf-8")
    with pytest.raises(SourceError, match="'text'"):
        read_all(c)


def test_corrupt_parquet_is_a_source_error(tmp_path: Path) -> None:
    """A file that is not valid parquet raises SourceError naming it."""
    p = tmp_path / "t.parquet"
    p.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(SourceError, match=str(p)):
        read_all(p)


@pytest.mark.parametrize("kind", ["file", "stream"])
def test_arrow_ipc_file_and_stream(tmp_path: Path, kind: str) -> None:
    """arrow: both the IPC file and the IPC stream format are read batch by batch."""
    p = tmp_path / "t.arrow"
    table = sample_table()
    opener = pa_ipc.new_file if kind == "file" else pa_ipc.new_stream
    with pa.OSFile(str(p), "wb") as sink, opener(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=2):
            writer.write_batch(batch)
    check_tabular(read_all(p, metadata_fields=["lang"]), str(p))


def test_arrow_stream_compressed(tmp_path: Path) -> None:
    """A gzip-compressed Arrow file is read as a stream."""
    p = tmp_path / "t.feather.gz"
    table = sample_table()
    with gzip.open(p, "wb") as raw, pa.PythonFile(raw, mode="w") as sink:
        with pa_ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    check_tabular(read_all(p, metadata_fields=["lang"]), str(p))


def test_csv_rows(tmp_path: Path) -> None:
    """csv: a record per data row (header excluded); an unquoted empty cell is missing; quoted newlines kept."""
    p = tmp_path / "t.csv"
    pa_csv.write_csv(sample_table().drop_columns(["extra"]), p)
    check_tabular(read_all(p, metadata_fields=["lang"]), str(p))
    q = tmp_path / "q.csv"
    q.write_text('id,text\n1,"line one\nline two"\n2,plain\n3,NA\n', encoding="utf-8")
    out = read_all(q)
    expected = [("1", "line one\nline two", 1), ("2", "plain", 2), ("3", "NA", 3)]
    assert [(r.doc_id, r.text, r.location) for r in out] == expected


def test_csv_compressed_and_resumed(tmp_path: Path) -> None:
    """csv.gz is read transparently and after=N skips rows."""
    p = tmp_path / "t.csv.gz"
    rows = "".join(f"{i},text {i}\n" for i in range(1, 101))
    p.write_bytes(gzip.compress(f"id,text\n{rows}".encode()))
    source = SourceConfig(path=str(p))
    fs, (inp,) = open_source(source)
    out = list(read_records(source, fs, inp, after=97))
    assert [(r.doc_id, r.location) for r in out] == [("98", 98), ("99", 99), ("100", 100)]


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


def test_resume_seeks_to_a_checkpoint_instead_of_rereading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed jsonl read seeks to a reported checkpoint: it never reads the file's start again."""
    import pipeline.sources.readers as sources

    monkeypatch.setattr(sources, "_BLOCK", 4096)
    monkeypatch.setattr(sources, "CHECKPOINT_BYTES", 16_384)
    path = tmp_path / "big.jsonl"
    path.write_bytes(jsonl(*({"id": f"r{i}", "text": f"text {i} " + "x" * 40} for i in range(3000))))
    cfg = SourceConfig(path=str(path))
    fs, [inp] = open_source(cfg)
    checkpoints: list[tuple[int, int]] = []
    everything = list(read_records(cfg, fs, inp, on_checkpoint=lambda n, off: checkpoints.append((n, off))))
    assert len(checkpoints) > 5
    after = 2500
    seek = max(c for c in checkpoints if c[0] <= after)
    # blank out the start of the file: counting lines from the top would now go wrong
    data = bytearray(path.read_bytes())
    data[: seek[1] // 2] = b"\n" * (seek[1] // 2)
    path.write_bytes(bytes(data))
    resumed = list(read_records(cfg, fs, inp, after=after, seek=seek))
    assert [r.doc_id for r in resumed] == [r.doc_id for r in everything if r.location > after]
    assert [r.location for r in resumed] == list(range(after + 1, 3001))


@pytest.mark.parametrize("split", [1, 7, 64, 100, 4096])
def test_byte_ranges_cover_every_line_once(tmp_path: Path, split: int) -> None:
    """Byte-range pieces of a jsonl file yield each line exactly once, whatever the cut points,
    and resuming a piece after a committed line continues right after it."""
    from pipeline.sources.readers import split_for_workers

    path = tmp_path / "f.jsonl"
    rows = [{"id": f"r{i}", "text": "ü" * (i % 9 + 1)} for i in range(200)]
    path.write_bytes(jsonl(*rows) + b"\n{bad json\n" + jsonl({"text": "no id"}))
    cfg = SourceConfig(path=str(path))
    fs, files = open_source(cfg)
    pieces = split_for_workers(fs, files, split)
    assert len(pieces) > 1 and all(p.part.startswith("#bytes=") for p in pieces)
    items = [item for p in pieces for item in read_records(cfg, fs, p)]
    ids = [i.doc_id for i in items]
    assert ids[:200] == [f"r{i}" for i in range(200)] and len(items) == 202
    assert isinstance(items[200], Failure) and items[200].message.startswith("byte ")
    assert items[201].doc_id == f"{items[201].source}@{items[201].location - 1}"
    piece = split_for_workers(fs, files, 2000)[1]  # a piece that starts mid-file, with many lines
    first = list(read_records(cfg, fs, piece))
    resumed = list(read_records(cfg, fs, piece, after=first[1].location))
    assert resumed == first[2:]
