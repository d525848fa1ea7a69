"""Tests for pipeline.sources.tabular: CSV, Parquet and Arrow IPC files, one record per row."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.listing import open_source
from pipeline.sources.readers import read_records
from pipeline.types import Failure, Record

from source_helpers import read_all


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


# --------------------------------------------------------------------------- bytes that are not UTF-8


def unchecked_strings(values: list[bytes]) -> pa.Array:
    """A string array holding any bytes, as another tool may write one (Arrow checks nothing here)."""
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())


@pytest.mark.parametrize("kind", ["parquet", "arrow"])
def test_invalid_utf8_in_a_string_column_fails_only_its_rows(tmp_path: Path, kind: str) -> None:
    """A Parquet or Arrow string column with invalid UTF-8 fails the rows that hold it (text, id or metadata
    field named), never the whole file or the run; the rows around them come out as records."""
    table = pa.table({
        "id": unchecked_strings([b"a", b"b", b"\xffc", b"d", b"e"]),
        "text": unchecked_strings([b"alpha", b"caf\xe9", b"gamma", b"delta", b"eps"]),
        "lang": unchecked_strings([b"en", b"fr", b"de", b"\xc3(", b"it"]),
    })
    p = tmp_path / f"t.{kind}"
    if kind == "parquet":
        pq.write_table(table, p, row_group_size=2)
    else:
        with pa.OSFile(str(p), "wb") as sink, pa_ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=2)
    out = read_all(p, metadata_fields=["lang"])
    assert [type(r).__name__ for r in out] == ["Record", "Failure", "Failure", "Failure", "Record"]
    assert [r.location for r in out] == [1, 2, 3, 4, 5]
    assert [r.doc_id for r in out] == ["a", "b", f"{p}:3", "d", "e"]
    assert all(f.error_type == "invalid_utf8" for f in out[1:4])
    assert out[1].message == "row 2: not valid UTF-8 at byte 4"
    assert out[2].message == "row 3: field 'id' is not valid UTF-8 at byte 1"
    assert out[3].message == "row 4: field 'lang' is not valid UTF-8 at byte 1"
    assert out[4].metadata == {"lang": "it"}


def test_csv_row_with_invalid_utf8_fails_alone(tmp_path: Path) -> None:
    """A CSV with one row of invalid UTF-8 among 100 gives 99 records and one invalid_utf8 failure at that row."""
    rows = [f"{i},text {i},en\n".encode() for i in range(1, 101)]
    rows[41] = b"42,caf\xe9 au lait,fr\n"
    p = tmp_path / "t.csv"
    p.write_bytes(b"id,text,lang\n" + b"".join(rows))
    out = read_all(p, metadata_fields=["lang"])
    assert len(out) == 100 and [r.location for r in out] == list(range(1, 101))
    (bad,) = [r for r in out if isinstance(r, Failure)]
    assert (bad.location, bad.doc_id, bad.error_type) == (42, "42", "invalid_utf8")
    assert bad.message == "row 42: not valid UTF-8 at byte 4"
    assert out[0].metadata == {"lang": "en"} and out[99].text == "text 100"
