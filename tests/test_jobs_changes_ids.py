"""A record left out as a ``duplicate_id`` gets its id once the input holding it is gone or no longer has it,
in the files dataset and in a Postgres table alike."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow.dataset as ds
import pytest

from pipeline.config import Config
from pipeline.jobs.validate import validate
from test_dataset_postgres import query
from test_jobs_changes import check_exact, jsonl, rerun, touch_later, until, watching
from test_jobs_changes_postgres import pg_config, table_rows
from test_jobs_run import make_config

pytestmark = pytest.mark.anyio


@dataclass
class Target:
    """A sink to run against: its config, what it holds (id → text) and its error rows (file name, type)."""

    cfg: Config
    check: Callable[[dict[str, str], dict[str, Any]], None]
    errors: Callable[[], list[tuple[str, str]]]


def files_errors(tmp_path: Path) -> list[tuple[str, str]]:
    """The (source name, error_type) of the error rows ``_manifest.json`` lists."""
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    files = [str(tmp_path / "out" / s["path"]) for s in manifest["shards"] if s["kind"] == "errors"]
    if not files:
        return []
    table = ds.dataset(files, format="parquet").to_table(columns=["source", "error_type"])
    return [(Path(s).name, e) for s, e in zip(table["source"].to_pylist(), table["error_type"].to_pylist())]


def files_target(tmp_path: Path) -> Target:
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []},
                      run={"max_failed_fraction": 1})
    return Target(cfg, lambda expected, totals: check_exact(tmp_path, expected), lambda: files_errors(tmp_path))


def postgres_target(tmp_path: Path, url: str, table: str) -> Target:
    def check(expected: dict[str, str], totals: dict[str, Any]) -> None:
        assert table_rows(url, table) == expected and totals["rows_embedded"] == len(expected)

    def errors() -> list[tuple[str, str]]:
        return [(Path(s).name, e) for s, e in query(url, f'SELECT source, error_type FROM "{table}_errors"')]

    return Target(pg_config(tmp_path, url, table, run={"max_failed_fraction": 1}), check, errors)


@pytest.fixture(params=["files", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "files":
        return files_target(tmp_path)
    url, table = request.getfixturevalue("postgres_url"), request.getfixturevalue("table")
    return postgres_target(tmp_path, url, table)


async def a_takes_b_id(tmp_path: Path, target: Target, others: int = 0) -> None:
    """a.jsonl holds id 7 first, b.jsonl's id 7 is a duplicate_id error row (and its id 8 a row); ``others``
    files of a record each besides."""
    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "a.jsonl", {"7": "from A"})
    jsonl(src / "b.jsonl", {"7": "from B", "8": "eight"})
    for i in range(others):
        jsonl(src / f"c{i}.jsonl", {f"c{i}": f"other {i}"})
    await rerun(target.cfg)
    assert target.errors() == [("b.jsonl", "duplicate_id")]


async def test_a_record_gets_its_id_once_the_file_holding_it_is_deleted(tmp_path: Path, target: Target) -> None:
    """The holder deleted, the file whose record lost the id is read again in the same run: the record gets
    its id, its error row leaves, and only it is paid for (id 8 keeps its vector); validate counts the file as
    changed and estimates the one chunk to pay."""
    await a_takes_b_id(tmp_path, target)
    (tmp_path / "in" / "a.jsonl").unlink()
    shown = "\n".join(validate(target.cfg, "job.yaml").lines)
    assert "changed 1, appended 0, deleted 1, unchanged 0; 1 of the changed read again for freed ids" in shown
    assert "a run reads 1 input(s) of them (0 unchanged, not opened): 2 chunks" in shown
    assert "unchanged chunks): 1 chunks" in shown, shown
    job, result, stats = await rerun(target.cfg)
    assert result.exit_code == 0
    assert job.changes["deleted"] == 1 and job.changes["changed"] == 1
    assert stats["inputs_embedded"] == 1
    target.check({"7": "from B", "8": "eight"}, result.totals)
    assert target.errors() == []
    job, _, stats = await rerun(target.cfg)
    assert stats["inputs_embedded"] == 0 and job.changes["unchanged"] == 1


async def test_a_record_gets_its_id_once_the_file_holding_it_has_another(tmp_path: Path, target: Target) -> None:
    """The holder edited to another id frees id 7 for b.jsonl's record in the same run."""
    await a_takes_b_id(tmp_path, target)
    jsonl(tmp_path / "in" / "a.jsonl", {"9": "nine"})
    touch_later(tmp_path / "in" / "a.jsonl")
    job, result, stats = await rerun(target.cfg)
    assert result.exit_code == 0 and job.changes["changed"] == 2
    assert stats["inputs_embedded"] == 2  # 9 and 7 (from B); 8 keeps its vector
    target.check({"7": "from B", "8": "eight", "9": "nine"}, result.totals)
    assert target.errors() == []


async def test_only_the_files_that_lost_an_id_to_a_deleted_one_are_read_again(tmp_path: Path,
                                                                               target: Target) -> None:
    """Among unchanged files, only the one whose error row names the deleted holder is opened again."""
    await a_takes_b_id(tmp_path, target, others=3)
    (tmp_path / "in" / "a.jsonl").unlink()
    job, result, stats = await rerun(target.cfg)
    assert job.changes == {"new": 0, "resumed": 0, "changed": 1, "appended": 0, "deleted": 1, "unchanged": 3}
    assert job.progress.files == 1 and stats["inputs_embedded"] == 1
    target.check({"7": "from B", "8": "eight", **{f"c{i}": f"other {i}" for i in range(3)}}, result.totals)


async def test_a_watcher_gives_the_id_back_in_the_round_that_removes_its_holder(tmp_path: Path) -> None:
    """A watcher's round that removes the deleted holder reads the file that lost the id to it again."""
    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "a.jsonl", {"7": "from A"})
    jsonl(src / "b.jsonl", {"7": "from B", "8": "eight"})
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []},
                      run={"max_failed_fraction": 1, "watch": True, "poll_interval_s": 0.05})
    async with watching(cfg) as (job, server):
        def counts() -> tuple[int, int]:
            sink = getattr(job, "commit", None)  # made once the sink is open
            return (sink.sink.counts.rows_embedded, sink.sink.counts.rows_failed) if sink else (0, 0)

        await until(lambda: counts() == (2, 1))
        (src / "a.jsonl").unlink()
        await until(lambda: job.changes.get("deleted") == 1 and job.changes.get("changed") == 1 and counts() == (2, 0))
    check_exact(tmp_path, {"7": "from B", "8": "eight"})
    assert files_errors(tmp_path) == [] and server.stats.snapshot()["inputs_embedded"] == 3
