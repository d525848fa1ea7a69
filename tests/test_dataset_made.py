"""What a dataset or table was made with includes ``source.id_field``: a rerun with another is refused,
and one made before it was recorded opens as made with the config's, recording it from then on."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli
from test_dataset_postgres import query
from test_jobs_validate import GOOD, write_job


def refused_line(result: object, old: str, new: str) -> str:
    """The one stderr line of a refused run or validate, checked to name the key, both values and the way out."""
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 2, result.stdout + stderr  # type: ignore[attr-defined]
    line = stderr.strip().splitlines()[-1]
    assert f"source.id_field {old!r}; this config says {new!r}. Refusing to mix them" in line, stderr
    assert "--fresh" in line and "Traceback" not in stderr
    return line


def test_a_dataset_remembers_its_id_field_and_refuses_another(tmp_path: Path) -> None:
    """Another source.id_field on a rerun would mix ``file:line`` ids with the records' own: refused by the
    run and by validate alike, in one line; ``--fresh`` starts over with the new one."""
    job = write_job(tmp_path, GOOD)
    assert run_cli("run", str(job)).returncode == 0
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["id_field"] == "id"
    other = ["--set", "source.id_field=uid"]
    line = refused_line(run_cli("run", str(job), *other), "id", "uid")
    assert refused_line(run_cli("validate", str(job), *other), "id", "uid") == line
    assert run_cli("run", str(job), *other, "--fresh").returncode == 0
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["id_field"] == "uid"


def test_a_dataset_made_before_id_field_was_recorded_opens_and_records_it(tmp_path: Path) -> None:
    """A manifest without ``id_field`` (an earlier version's) is taken as made with the config's: the rerun
    goes on and records it, and only then is another refused."""
    job = write_job(tmp_path, GOOD)
    assert run_cli("run", str(job)).returncode == 0
    path = tmp_path / "out" / "_manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["id_field"]
    path.write_text(json.dumps(manifest))
    shown = run_cli("validate", str(job), "--set", "source.id_field=uid")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert run_cli("run", str(job)).returncode == 0
    assert json.loads(path.read_text())["id_field"] == "id"
    refused_line(run_cli("run", str(job), "--set", "source.id_field=uid"), "id", "uid")


def test_a_postgres_table_remembers_its_id_field(postgres_url: str, table: str, tmp_path: Path) -> None:
    """The same for a table: ``{table}_meta`` records it; a table made before it was (no such column) opens,
    validate reads it without adding the column, the run adds and records it, and then refuses another."""
    job = write_job(tmp_path, GOOD, sink=postgres_url)
    sets = ["--set", f"sink.table={table}"]
    assert run_cli("run", str(job), *sets).returncode == 0
    assert query(postgres_url, f'SELECT id_field FROM "{table}_meta"') == [("id",)]
    other = [*sets, "--set", "source.id_field=uid"]
    line = refused_line(run_cli("run", str(job), *other), "id", "uid")
    assert refused_line(run_cli("validate", str(job), *other), "id", "uid") == line

    query(postgres_url, f'ALTER TABLE "{table}_meta" DROP COLUMN id_field')  # as an earlier version made it
    shown = run_cli("validate", str(job), *other)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    columns = query(postgres_url, "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                    f"{table}_meta")
    assert ("id_field",) not in columns  # validate only reads
    assert run_cli("run", str(job), *sets).returncode == 0
    assert query(postgres_url, f'SELECT id_field FROM "{table}_meta"') == [("id",)]
    refused_line(run_cli("run", str(job), *other), "id", "uid")
