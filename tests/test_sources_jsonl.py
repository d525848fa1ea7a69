"""Tests for pipeline.sources.jsonl: JSON Lines read in blocks, resumed by line or offset, shared in byte ranges."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.listing import open_source, split_for_workers
from pipeline.sources.readers import read_records
from pipeline.types import Failure, Record

from source_helpers import jsonl, read_all


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


def test_zstd_frames_one_after_another(tmp_path: Path) -> None:
    """A .zst file of several frames (as `cat a.zst b.zst` makes) reads whole, frame after frame."""
    first = jsonl(*({"id": i, "text": f"doc {i}"} for i in range(1000)))
    second = jsonl(*({"id": i, "text": f"doc {i}"} for i in range(1000, 1500)))
    p = tmp_path / "d.jsonl.zst"
    p.write_bytes(zstandard.ZstdCompressor().compress(first) + zstandard.ZstdCompressor().compress(second))
    assert [r.location for r in read_all(p)] == list(range(1, 1501))


@pytest.mark.parametrize(
    ("suffix", "compress", "decompressor"),
    [
        (".gz", gzip.compress, lambda: zlib.decompressobj(31)),
        (".xz", lzma.compress, lzma.LZMADecompressor),
        (".bz2", bz2.compress, bz2.BZ2Decompressor),
        (".zst", zstandard.ZstdCompressor().compress, lambda: zstandard.ZstdDecompressor().decompressobj()),
    ],
)
def test_truncated_stream_keeps_every_record_decoded_before_the_break(
    tmp_path: Path, suffix: str, compress: Any, decompressor: Any
) -> None:
    """A compressed file cut short yields every complete line decoded before the break, then raises
    SourceError (the reader's blocks of 1 MB must not take the good records down with the break)."""
    data = compress(jsonl(*({"id": i, "text": f"doc {i} " + "x" * (i % 97)} for i in range(60_000))))
    cut = data[: len(data) * 2 // 3]
    complete = decompressor().decompress(cut).count(b"\n")
    assert complete > 0
    p = tmp_path / f"d.jsonl{suffix}"
    p.write_bytes(cut)
    source = SourceConfig(path=str(p))
    fs, (inp,) = open_source(source)
    got: list[Record | Failure] = []
    with pytest.raises(SourceError, match=str(p)):
        for item in read_records(source, fs, inp):
            got.append(item)
    assert [r.location for r in got] == list(range(1, complete + 1))
    assert all(isinstance(r, Record) for r in got)


def test_resume_seeks_to_a_checkpoint_instead_of_rereading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed jsonl read seeks to a reported checkpoint: it never reads the file's start again."""
    import pipeline.sources.jsonl as sources

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
