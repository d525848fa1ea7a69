"""The Postgres sink following a changing source: its resume state, then real watching and killed processes."""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path

import pytest

from conftest import run_cli, serve_process
from test_dataset_postgres import batch, floats, open_sink, query, table  # noqa: F401 (table: a fixture)
from test_jobs_follow import edit, expected_ids
from test_signals import RECORDS, finish, start, wait_for_commits, write_job
from pipeline.types import END_OF_FILE


def test_a_changed_inputs_old_rows_leave_with_its_first_new_rows(postgres_url: str, table: str) -> None:
    """restart: a commit before the input's first new batch keeps its old rows and old signature; the
    commit of that batch deletes the old rows before copying the new ones (an id kept stays)."""
    sink = open_sink(postgres_url, table)
    sink.set_signature("a.jsonl", "s1")
    sink.write_many([batch(0, ["a", "b", "c"], floats(3)), batch(END_OF_FILE - 1, [], floats(0))])
    sink.commit()
    sink.restart("a.jsonl", "a.jsonl")
    sink.set_signature("a.jsonl", "s2")
    sink.write_many([batch(0, ["y"], floats(1), source="y.md")])
    sink.commit()
    assert sorted(r[0] for r in query(postgres_url, f"SELECT id FROM {table}")) == ["a", "b", "c", "y"]
    assert query(postgres_url, f"SELECT signature, location FROM {table}_state WHERE key = 'a.jsonl'") == [("s1", None)]
    sink.write_many([batch(0, ["a"], floats(1, seed=3))])
    sink.commit()
    assert sorted(r[0] for r in query(postgres_url, f"SELECT id FROM {table}")) == ["a", "y"]
    assert query(postgres_url, f"SELECT signature, location FROM {table}_state WHERE key = 'a.jsonl'") == [("s2", 1)]
    sink.write_many([batch(1, ["b"], floats(1))])  # later commits of the same input remove nothing
    sink.close("completed")
    assert sorted(r[0] for r in query(postgres_url, f"SELECT id FROM {table}")) == ["a", "b", "y"]
    again = open_sink(postgres_url, table)
    assert again.counts.rows_embedded == 3 and again.signature("a.jsonl") == "s2"
    again.close("completed")


def test_a_gone_inputs_state_rows_leave_in_the_commit_of_its_rows(postgres_url: str, table: str) -> None:
    """remove_sources: signatures() forgets it at once; its state rows (its pieces' too) go with its rows."""
    sink = open_sink(postgres_url, table)
    sink.set_signature("x.jsonl", "sx")
    sink.set_signature("y.jsonl", "sy")
    sink.set_offsets({"x.jsonl": [[10, 100]]})
    sink.write_many([batch(0, ["a"], floats(1), source="x.jsonl"), batch(1, ["b"], floats(1), source="y.jsonl")])
    sink.write_many([batch(5, [], floats(0), source="x.jsonl#bytes=0-9"),
                     batch(6, [], floats(0), source="x.jsonl_2")])  # not a piece of x.jsonl
    sink.commit()
    assert sink.signatures() == {"x.jsonl": "sx", "y.jsonl": "sy"}
    sink.remove_sources(["x.jsonl"])
    assert sink.signatures() == {"y.jsonl": "sy"} and sink.done_upto("x.jsonl") == 0
    assert len(query(postgres_url, f"SELECT key FROM {table}_state")) == 4  # not before the commit
    sink.set_offsets({})
    sink.close("completed")
    assert sorted(r[0] for r in query(postgres_url, f"SELECT key FROM {table}_state")) == ["x.jsonl_2", "y.jsonl"]
    assert [r[0] for r in query(postgres_url, f"SELECT id FROM {table}")] == ["b"]
    again = open_sink(postgres_url, table)
    assert again.signatures() == {"y.jsonl": "sy"} and again.offsets() == {}
    again.close("completed")


def test_append_reads_on_after_the_last_record(postgres_url: str, table: str) -> None:
    """An input committed whole remembers where its last record was; append() resumes after it, once."""
    sink = open_sink(postgres_url, table)
    sink.write_many([batch(0, ["a", "b"], floats(2)), batch(END_OF_FILE - 1, [], floats(0))])  # rows at 1, 2
    sink.close("completed")
    again = open_sink(postgres_url, table)
    assert again.done_upto("a.jsonl") == END_OF_FILE
    assert not again.append("b.jsonl", "b.jsonl")
    assert again.append("a.jsonl", "a.jsonl") and again.done_upto("a.jsonl") == 2
    assert not again.append("a.jsonl", "a.jsonl")  # its end is the one being read now
    again.commit()
    again.close("completed")
    assert query(postgres_url, f"SELECT location, end_location FROM {table}_state") == [(2, None)]


# --------------------------------------------------------------------------- real processes


def pg_job(tmp_path: Path, url: str, db: str, table: str, **run: object) -> Path:
    """test_signals' job (three JSONL files of RECORDS in all) with its sink in ``table``."""
    job = write_job(tmp_path, url, **run)
    text = job.read_text().replace(f"  path: {tmp_path / 'out'}\n", f"  path: '{db}'\n  table: {table}\n")
    job.write_text(text)
    return job


def check_table_follows(tmp_path: Path, db: str, table: str) -> None:
    """The table holds exactly the source's records; the state knows exactly the source's files."""
    assert dict(query(db, f"SELECT id, text FROM {table}")) == expected_ids(tmp_path)
    assert {r[0] for r in query(db, f"SELECT key FROM {table}_state")} == {
        str(p) for p in (tmp_path / "in").glob("*.jsonl")}


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_during_a_replacement_then_rerun_is_exact(postgres_url: str, table: str, tmp_path: Path,
                                                          seed: int) -> None:
    """SIGKILL at some point of a rerun that replaces an edited file and removes a deleted one; the run
    after it leaves exactly the current records."""
    rng = random.Random(seed)
    with serve_process("--fake", "--dimensions", "8", "--latency-ms", "20") as url:
        job = pg_job(tmp_path, url, postgres_url, table, max_removed_fraction=1)
        assert run_cli("run", str(job)).returncode == 0
        edit(tmp_path)
        proc = start(job)
        watchdog = threading.Timer(60, proc.kill)  # a hung run ends the waits below, failing the test
        watchdog.start()
        assert proc.stderr is not None
        for line in proc.stderr:  # the comparison is done; the deletion's commit comes next
            if "event=files_deleted" in line:
                break
        wait_for_commits(proc, rng.randint(0, 4))
        proc.send_signal(signal.SIGKILL)
        finish(proc)
        watchdog.cancel()
        again = run_cli("run", str(job))
        assert again.returncode == 0, again.stderr
    check_table_follows(tmp_path, postgres_url, table)
    (rows,), = query(postgres_url, f"SELECT sum(rows - replaced - removed) FROM {table}_commits")
    assert rows == len(expected_ids(tmp_path))


def test_watch_follows_changes_and_deletions(postgres_url: str, table: str, tmp_path: Path) -> None:
    """A watcher into Postgres replaces an edited file's rows and removes a deleted file's (and its state
    row), then stops on SIGTERM."""
    with serve_process("--fake", "--dimensions", "8") as url:
        job = pg_job(tmp_path, url, postgres_url, table, watch="true", poll_interval_s=0.2, max_removed_fraction=1)
        proc = start(job)
        watchdog = threading.Timer(90, proc.kill)
        watchdog.start()
        assert proc.stderr is not None
        for line in proc.stderr:  # the files present at start are all committed
            if "event=shard_committed" in line and query(postgres_url, f"SELECT count(*) FROM {table}") == [(RECORDS,)]:
                break
        edit(tmp_path)
        gone = str(tmp_path / "in" / "part-2.jsonl")
        for line in proc.stderr:  # until the table holds the source as it is now
            if "event=shard_committed" in line and \
                    dict(query(postgres_url, f"SELECT id, text FROM {table}")) == expected_ids(tmp_path) and \
                    not query(postgres_url, f"SELECT 1 FROM {table}_state WHERE key = %s", gone):
                break
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        watchdog.cancel()
    assert code == 143, err
    assert "deleted=1" in err and "changed=1" in err
    check_table_follows(tmp_path, postgres_url, table)
