"""A source.id_field or text_field that names nothing in a file's records: one warning a run, naming the
file, the key, its value, the fields there are and the likely one; validate says the same."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.fields import SAMPLE, FieldCheck, FieldMissing, closest
from pipeline.sources.listing import open_source
from pipeline.sources.readers import read_records
from pipeline.types import Failure, Record
from source_helpers import jsonl
from test_jobs_validate import write_job


def read_checked(path: Path, **cfg: object) -> tuple[list[Record | Failure], list[FieldMissing]]:
    """Every record of the source at ``path``, and what one run's FieldCheck said of it."""
    source = SourceConfig(path=str(path), **cfg)  # type: ignore[arg-type]
    fs, files = open_source(source)
    said: list[FieldMissing] = []
    check = FieldCheck(source, said.append)
    out: list[Record | Failure] = []
    for inp in files:
        out.extend(read_records(source, fs, inp, fields=check))
    return out, said


@pytest.mark.parametrize(("value", "names", "meant"), [
    ("uid", ["id", "text"], "id"),
    ("id", ["ID", "text"], "ID"),
    ("id", ["doc_id", "text"], "doc_id"),
    ("id", ["docId", "body"], "docId"),
    ("txt", ["id", "text"], "text"),
    ("text", ["id", "body"], None),
])
def test_the_likely_field(value: str, names: list[str], meant: str | None) -> None:
    """The did-you-mean: the same name but for case, a close spelling, or a name made of it and more."""
    assert closest(value, names) == meant


def test_the_text_field_is_never_the_guessed_id(tmp_path: Path) -> None:
    """id_field: texts on records with text: the text field serves its own key, no did-you-mean for the id."""
    (tmp_path / "a.jsonl").write_bytes(jsonl({"text": "x", "ref": 1}))
    _, said = read_checked(tmp_path, id_field="texts")
    assert [(m.key, m.did_you_mean) for m in said] == [("source.id_field", None)]


def test_a_misnamed_id_field_is_said_once_in_one_line(tmp_path: Path) -> None:
    """Records that all lack id_field while having other fields: one warning for the run (not one per file),
    naming the file, the key, its value, the fields present and the likely one; the ids are file:line."""
    (tmp_path / "a.jsonl").write_bytes(jsonl(*({"id": f"a{i}", "text": "x"} for i in range(3))))
    (tmp_path / "b.jsonl").write_bytes(jsonl({"id": "b0", "text": "y"}))
    out, said = read_checked(tmp_path, id_field="uid")
    assert [r.doc_id for r in out] == [f"{tmp_path}/a.jsonl:{n}" for n in (1, 2, 3)] + [f"{tmp_path}/b.jsonl:1"]
    assert len(said) == 1
    assert said[0].line() == (f"source.id_field 'uid' names no field of the records of {tmp_path}/a.jsonl (the "
                              "first 3 have: id, text); did you mean 'id'? every record's id is taken as {file}:{line}")


def test_a_misnamed_text_field_is_said_besides_the_error_rows(tmp_path: Path) -> None:
    """Every record is still an error row (missing_text), and one line says which key names nothing."""
    (tmp_path / "a.jsonl").write_bytes(jsonl(*({"id": f"a{i}", "text": "x"} for i in range(SAMPLE + 5))))
    out, said = read_checked(tmp_path, text_field="txt")
    assert {r.error_type for r in out} == {"missing_text"} and len(out) == SAMPLE + 5  # type: ignore[union-attr]
    (missing,) = said
    assert (missing.key, missing.value, missing.fields, missing.did_you_mean) == ("source.text_field", "txt",
                                                                                   ("id", "text"), "text")
    assert f"the first {SAMPLE} have" in missing.line()


def test_records_without_ids_on_purpose_are_not_warned_about(tmp_path: Path) -> None:
    """Records holding only their text (and metadata): file:line ids are what the user wants, no warning;
    nor when some of the first records have the field and others not."""
    (tmp_path / "a.jsonl").write_bytes(jsonl({"text": "x", "lang": "en"}, {"text": "y"}))
    (tmp_path / "b.jsonl").write_bytes(jsonl({"text": "z", "title": "t"}, {"id": "b1", "text": "w"}))
    out, said = read_checked(tmp_path, metadata_fields=["lang"])
    assert len(out) == 4 and said == []


def test_a_table_without_the_id_column_is_said_as_records_are(tmp_path: Path) -> None:
    """A parquet or arrow file without the id_field column: the same warning, naming its columns."""
    pq.write_table(pa.table({"ID": ["a"], "text": ["x"]}), tmp_path / "a.parquet")
    out, said = read_checked(tmp_path)
    assert [r.doc_id for r in out] == [f"{tmp_path}/a.parquet:1"]
    assert [m.line() for m in said] == [f"source.id_field 'id' names no column of {tmp_path}/a.parquet (its "
                                        "columns: ID, text); did you mean 'ID'? every record's id is taken as "
                                        "{file}:{row}"]
    feather.write_feather(pa.table({"uid": ["a"], "text": ["x"]}), tmp_path / "a.parquet")  # now arrow
    (tmp_path / "a.parquet").rename(tmp_path / "b.arrow")
    _, said = read_checked(tmp_path)
    assert [(m.value, m.did_you_mean) for m in said] == [("id", "uid")]


def test_a_table_without_the_text_column_fails_in_one_line(tmp_path: Path) -> None:
    """A csv without the text_field column: SourceError in the same words (file, key, columns, likely one)."""
    (tmp_path / "a.csv").write_text("id,Text\n1,x\n", encoding="utf-8")
    with pytest.raises(SourceError) as raised:
        read_checked(tmp_path)
    assert str(raised.value) == (f"source.text_field 'text' names no column of {tmp_path}/a.csv (its columns: id, "
                                 "Text); did you mean 'Text'? the file fails as a whole (unreadable_file)")


def test_run_and_validate_say_it_once(tmp_path: Path) -> None:
    """A real run warns once (source_field_missing, with the fields present); validate prints the same line
    as a warning; a run whose id_field is right says nothing."""
    job = write_job(tmp_path, [{"id": f"r{i}", "text": f"record {i}"} for i in range(5)])
    (tmp_path / "in" / "more.jsonl").write_text(json.dumps({"id": "m", "text": "more"}) + "\n")
    ran = run_cli("run", str(job), "--set", "source.id_field=uid")
    assert ran.returncode == 0, ran.stderr
    warned = [line for line in ran.stderr.splitlines() if "source_field_missing" in line]
    assert len(warned) == 1, ran.stderr
    assert "key=source.id_field value=uid" in warned[0] and 'has="id, text" did_you_mean=id' in warned[0]
    shown = run_cli("validate", str(job), "--set", "source.id_field=uid", "--set", f"sink.path={tmp_path / 'v'}")
    assert shown.returncode == 0, shown.stderr
    (line,) = [line for line in shown.stdout.splitlines() if line.startswith("warning: ")]
    assert line.startswith("warning: source.id_field 'uid' names no field of the records of ")
    assert "(the first " in line and "did you mean 'id'?" in line
    clean = run_cli("run", str(job), "--set", f"sink.path={tmp_path / 'right'}")
    assert clean.returncode == 0 and "source_field_missing" not in clean.stderr
    assert "warning: " not in run_cli("validate", str(job), "--set", f"sink.path={tmp_path / 'w'}").stdout
