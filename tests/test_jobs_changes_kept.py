"""Inputs gone from the source under run.on_deleted: keep: counted once, by the run that finds them gone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from pipeline.config import Config
from pipeline.errors import SinkError
from pipeline.jobs.changes import GONE
from pipeline.jobs.validate import validate
from state_helpers import read_state

from test_jobs_changes import (RENAMED_UNDER_KEEP, a_and_b, check_exact, counted_listings, jsonl, rerun, until,
                               watching)
from test_jobs_changes_postgres import pg_config, table_rows
from test_jobs_run import make_config

pytestmark = pytest.mark.anyio


def with_run(cfg: Config, **run: Any) -> Config:
    """``cfg`` with these ``run`` settings."""
    return cfg.model_copy(update={"run": cfg.run.model_copy(update=run)})


def changes_line(cfg: Config) -> str:
    """validate's line comparing the listing with the dataset."""
    shown = validate(cfg, "job.yaml")
    return next(line for line in shown.lines if line.startswith("changes since the dataset"))


async def counted(cfg: Config) -> dict[str, Any]:
    """What a rerun of ``cfg`` says it found (its run_finished line), checked against validate's line."""
    line = changes_line(cfg)
    with capture_logs() as logs:
        await rerun(cfg)
    finished = next(e for e in logs if e["event"] == "run_finished")
    kept = f", kept {finished['kept']}" if finished.get("kept") else ""
    assert f"deleted {finished['deleted']}{kept}, unchanged {finished['unchanged']}" in line, (line, finished)
    return finished


async def test_a_kept_file_is_counted_deleted_once_and_removed_on_a_switch_to_remove(tmp_path: Path) -> None:
    """A file gone under keep is deleted=1 kept=1 in the run that finds it gone, in no later run (nor in
    validate's line), its rows staying; switching to remove then removes them, counted deleted."""
    cfg = a_and_b(tmp_path, on_deleted="keep")
    await rerun(cfg)
    (tmp_path / "in" / "b.jsonl").unlink()
    first = await counted(cfg)
    assert (first["deleted"], first.get("kept")) == (1, 1)
    for _ in range(2):
        later = await counted(cfg)
        assert (later["deleted"], later.get("kept"), later["unchanged"]) == (0, None, 1)
    check_exact(tmp_path, {"a0": "zero", "b0": "one"})
    switched = await counted(with_run(cfg, on_deleted="remove", max_removed_fraction=1))
    assert (switched["deleted"], switched.get("kept")) == (1, None)
    check_exact(tmp_path, {"a0": "zero"})


async def test_a_table_counts_a_kept_file_deleted_once_and_removes_it_on_a_switch(
        postgres_url: str, table: str, tmp_path: Path) -> None:
    """A Postgres sink marks a kept file in its state as the file dataset does: deleted=1 kept=1 once, then
    nothing (validate too), its row staying until a switch to remove."""
    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "a.jsonl", {"a0": "zero"})
    jsonl(src / "b.jsonl", {"b0": "one"})
    cfg = pg_config(tmp_path, postgres_url, table, run={"on_deleted": "keep"})
    await rerun(cfg)
    (src / "b.jsonl").unlink()
    first = await counted(cfg)
    assert (first["deleted"], first.get("kept")) == (1, 1)
    later = await counted(cfg)
    assert (later["deleted"], later.get("kept")) == (0, None)
    assert table_rows(postgres_url, table) == {"a0": "zero", "b0": "one"}
    switched = await counted(with_run(cfg, on_deleted="remove", max_removed_fraction=1))
    assert switched["deleted"] == 1 and table_rows(postgres_url, table) == {"a0": "zero"}


async def test_a_kept_file_that_comes_back_is_unchanged_and_counted_again_if_it_goes_again(tmp_path: Path) -> None:
    """A kept file back with the same bytes and time is unchanged (not read again); its mark is dropped, so
    that going again is a new deletion, counted once more."""
    cfg = a_and_b(tmp_path, on_deleted="keep")
    await rerun(cfg)
    b = tmp_path / "in" / "b.jsonl"
    st = b.stat()
    b.unlink()
    await rerun(cfg)
    jsonl(b, {"b0": "one"})
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    back = await counted(cfg)
    assert (back["new"], back["changed"], back["deleted"], back["unchanged"]) == (0, 0, 0, 2)
    assert not read_state(tmp_path / "out").files[str(b)].endswith(GONE)
    b.unlink()
    again = await counted(cfg)
    assert (again["deleted"], again.get("kept")) == (1, 1)
    check_exact(tmp_path, {"a0": "zero", "b0": "one"})


async def test_renames_under_keep_count_each_deletion_once_and_a_name_back_is_read_again(tmp_path: Path) -> None:
    """f1 renamed to g1 and back under keep: each run counts the name it finds gone once (the moved one
    too), the name back is read again at no token, and the run after finds nothing."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("f1", "f2", "f3"):
        jsonl(src / f"{name}.jsonl", {f"{name}-{i}": f"{name} record {i}" for i in range(4)})
    cfg = make_config(tmp_path, "http://placeholder", **RENAMED_UNDER_KEEP)
    await rerun(cfg)
    (src / "f1.jsonl").rename(src / "g1.jsonl")
    there = await counted(cfg)
    assert (there["new"], there["deleted"], there.get("kept")) == (1, 1, 1)
    (src / "g1.jsonl").rename(src / "f1.jsonl")
    line = changes_line(cfg)
    job, result, stats = await rerun(cfg)
    assert (job.changes["changed"], job.changes["deleted"], job.changes.get("kept")) == (1, 1, 1), line
    assert stats["inputs_embedded"] == 0 and result.totals["rows_failed"] == 0
    still = await counted(cfg)
    assert (still["changed"], still["deleted"], still.get("kept"), still["unchanged"]) == (0, 0, None, 3)


async def test_kept_files_gone_long_ago_are_removed_on_a_switch_past_the_guard_only(tmp_path: Path) -> None:
    """Three of four files gone and kept stay uncounted by later runs under keep; a switch to remove would
    remove 75% of the dataset's files: refused (exit 2) as any mass removal, by validate too, until allowed."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        jsonl(src / f"f{i}.jsonl", {f"d{i}": f"document {i}"})
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []}, run={"on_deleted": "keep"})
    await rerun(cfg)
    for i in range(1, 4):
        (src / f"f{i}.jsonl").unlink()
    assert (await counted(cfg))["kept"] == 3
    assert (await counted(cfg))["deleted"] == 0
    removing = with_run(cfg, on_deleted="remove")
    assert validate(removing, "job.yaml").exit_code == 2
    with pytest.raises(SinkError, match="3 of the dataset's 4 source files"):
        await rerun(removing)
    switched = await counted(with_run(removing, max_removed_fraction=1))
    assert switched["deleted"] == 3
    check_exact(tmp_path, {"d0": "document 0"})


async def test_a_watcher_marks_a_kept_file_at_once_and_a_later_watcher_does_not_say_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The round that finds a file gone under keep commits its mark (the state on disk says it while the
    watcher runs on); a watcher started later never logs it in watch_found, nor counts it."""
    listings = counted_listings(monkeypatch)
    cfg = a_and_b(tmp_path, on_deleted="keep", watch=True, poll_interval_s=0.05)
    b = str(tmp_path / "in" / "b.jsonl")
    async with watching(cfg) as (job, _):
        await until(lambda: job.changes.get("new") == 2 and job.progress.shards >= 1)
        (tmp_path / "in" / "b.jsonl").unlink()
        await until(lambda: read_state(tmp_path / "out").files.get(b, "").endswith(GONE))
        assert job.changes["kept"] == 1
    with capture_logs() as logs:
        async with watching(cfg) as (job, _):
            after = len(listings)
            await until(lambda: len(listings) >= after + 4)
    assert [e for e in logs if e["event"] == "watch_found"] == []
    assert job.changes.get("deleted", 0) == 0 and "kept" not in job.changes
    check_exact(tmp_path, {"a0": "zero", "b0": "one"})
