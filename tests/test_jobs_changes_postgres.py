"""A Postgres table follows the source as the file dataset does: edits, appends, deletions.

The sink's resume state (pipeline.dataset.postgres_state), reruns in process (pipeline.jobs.changes), then
real processes killed mid-replacement and watching.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli, serve_process
from pipeline.config import Config
from pipeline.errors import SinkError
from pipeline.types import END_OF_FILE

from test_dataset_postgres import batch, floats, open_sink, query
from test_jobs_changes import RENAMED_UNDER_KEEP, jsonl, moved_sources, renamed_under_keep, rerun, touch_later
from test_jobs_follow import edit, expected_ids, sigint_mid_replacement_then_rerun
from test_jobs_run import make_config
from test_signals import RECORDS, finish, start, wait_for_commits, write_job




def pg_config(tmp_path: Path, url: str, table: str, *, shard_rows: int = 200, **sections: dict[str, Any]) -> Config:
    """``make_config`` with the sink in ``table`` of the database at ``url``."""
    return make_config(tmp_path, "http://placeholder", source={"metadata_fields": []},
                       sink={"path": url, "table": table, "shard_rows": shard_rows}, **sections)


def table_rows(url: str, table: str) -> dict[str, str]:
    """id → text of the table's rows."""
    return dict(query(url, f'SELECT id, text FROM "{table}"'))  # id is the primary key: each once


def state_keys(url: str, table: str) -> set[str]:
    return {r[0] for r in query(url, f'SELECT key FROM "{table}_state"')}


def check_exact(url: str, table: str, tmp_path: Path, expected: dict[str, str], totals: dict[str, int]) -> None:
    """The table holds exactly ``expected``; the state knows exactly the files in the source; totals agree."""
    assert table_rows(url, table) == expected
    assert totals["rows_embedded"] == len(expected)
    on_disk = {str(p) for p in (tmp_path / "in").iterdir()}
    assert state_keys(url, table) == on_disk


# --------------------------------------------------------------------------- the sink's resume state


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


# --------------------------------------------------------------------------- reruns


@pytest.mark.anyio
async def test_jsonl_edits_deletions_additions_and_appends(postgres_url: str, table: str, tmp_path: Path) -> None:
    """A rerun replaces an edited file's rows, removes a deleted file's (and its state row), adds a new
    one's, reads only the appended lines of a grown file, skips an unchanged one, and counts each kind."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {name: {f"{name}{i}": f"{name} text {i}" for i in range(5)} for name in "abcd"}
    for name, d in docs.items():
        jsonl(src / f"{name}.jsonl", d)
    cfg = pg_config(tmp_path, postgres_url, table)
    _, _, first = await rerun(cfg)
    assert first["inputs_embedded"] == 20
    docs["a"] = {"a0": "a text 0", "a1": "a edited 1", "a9": "a new 9"}  # edited: a2..a4 gone, a9 new
    jsonl(src / "a.jsonl", docs["a"])
    touch_later(src / "a.jsonl")
    (src / "b.jsonl").unlink()
    del docs["b"]
    with open(src / "c.jsonl", "a") as f:  # appended
        f.write(json.dumps({"id": "c5", "text": "c text 5"}) + "\n")
    docs["c"]["c5"] = "c text 5"
    touch_later(src / "c.jsonl")
    docs["e"] = {"e0": "e text 0"}
    jsonl(src / "e.jsonl", docs["e"])
    job, result, stats = await rerun(cfg)
    assert result.exit_code == 0
    assert job.changes == {"new": 1, "resumed": 0, "changed": 1, "appended": 1, "deleted": 1, "unchanged": 1}
    assert stats["inputs_embedded"] == 2 + 1 + 1  # a1 and a9 (a0 keeps its vector), c5, e0
    check_exact(postgres_url, table, tmp_path, {k: v for d in docs.values() for k, v in d.items()}, result.totals)
    job, result, stats = await rerun(cfg)
    assert stats["inputs_embedded"] == 0 and job.changes["unchanged"] == 4


@pytest.mark.anyio
async def test_an_append_after_an_append_reads_only_the_newest_lines(postgres_url: str, table: str,
                                                                     tmp_path: Path) -> None:
    """The end of a file read on is remembered too: a second append reads only its own lines."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {f"a{i}": f"text {i}" for i in range(4)}
    jsonl(src / "a.jsonl", docs)
    cfg = pg_config(tmp_path, postgres_url, table)
    await rerun(cfg)
    for n in (4, 6):
        more = {f"a{i}": f"text {i}" for i in range(n, n + 2)}
        with open(src / "a.jsonl", "a") as f:
            f.write("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in more.items()))
        touch_later(src / "a.jsonl")
        docs.update(more)
        job, result, stats = await rerun(cfg)
        assert job.changes["appended"] == 1 and stats["inputs_embedded"] == 2
        check_exact(postgres_url, table, tmp_path, docs, result.totals)


@pytest.mark.anyio
async def test_a_changed_file_spanning_many_commits_keeps_every_new_row(postgres_url: str, table: str,
                                                                         tmp_path: Path) -> None:
    """An edited file whose new rows take several commits (and mostly keep their ids): the old rows
    leave with the first of them only, and the table ends with every current record."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {f"r{i}": f"record {i}" for i in range(300)}
    jsonl(src / "a.jsonl", docs)
    cfg = pg_config(tmp_path, postgres_url, table, shard_rows=20)
    await rerun(cfg)
    docs = {k: v + (" (edited)" if int(k[1:]) % 9 == 0 else "") for k, v in docs.items() if int(k[1:]) % 10 != 3}
    jsonl(src / "a.jsonl", docs)
    touch_later(src / "a.jsonl")
    job, result, _ = await rerun(cfg)
    assert job.changes["changed"] == 1
    check_exact(postgres_url, table, tmp_path, docs, result.totals)
    commits = query(postgres_url, f'SELECT removed FROM "{table}_commits" ORDER BY n')
    assert sum(r[0] for r in commits) == 300 and sum(1 for r in commits if r[0]) == 1


@pytest.mark.parametrize("fmt", ["md", "csv", "parquet"])
@pytest.mark.anyio
async def test_other_formats_follow_edits_and_deletions(postgres_url: str, table: str, tmp_path: Path,
                                                        fmt: str) -> None:
    """Text, CSV and Parquet sources: an edited file's rows are replaced, a deleted file's removed, a new
    file's added."""
    src = tmp_path / "in"
    src.mkdir()

    def put(name: str, texts: list[str]) -> dict[str, str]:
        path = src / f"{name}.{fmt}"
        if fmt == "md":
            path.write_text(texts[0])
            touch_later(path)
            return {f"{name}.md": texts[0]}
        ids = [f"{name}{i}" for i in range(len(texts))]
        if fmt == "csv":
            path.write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in zip(ids, texts)))
        else:
            pq.write_table(pa.table({"id": ids, "text": texts}), path)
        touch_later(path)
        return dict(zip(ids, texts))

    expected = {**put("a", ["alpha one", "alpha two"]), **put("b", ["beta one"]), **put("c", ["gamma"])}
    cfg = pg_config(tmp_path, postgres_url, table)
    _, result, _ = await rerun(cfg)
    check_exact(postgres_url, table, tmp_path, expected, result.totals)
    expected = {k: v for k, v in expected.items() if not k.startswith(("a", "b"))}
    expected.update(put("a", ["alpha ONE"]))
    expected.update(put("d", ["delta"]))
    (src / f"b.{fmt}").unlink()
    job, result, stats = await rerun(cfg)
    assert result.exit_code == 0
    assert job.changes == {"new": 1, "resumed": 0, "changed": 1, "appended": 0, "deleted": 1, "unchanged": 1}
    assert stats["inputs_embedded"] == 2
    check_exact(postgres_url, table, tmp_path, expected, result.totals)


@pytest.mark.anyio
async def test_on_deleted_keep_leaves_the_rows(postgres_url: str, table: str, tmp_path: Path) -> None:
    """With run.on_deleted: keep, a deleted file's rows and state stay in the table."""
    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "a.jsonl", {"a0": "zero"})
    jsonl(src / "b.jsonl", {"b0": "one"})
    cfg = pg_config(tmp_path, postgres_url, table, run={"on_deleted": "keep"})
    await rerun(cfg)
    (src / "b.jsonl").unlink()
    job, result, _ = await rerun(cfg)
    assert result.exit_code == 0 and job.changes["deleted"] == job.changes["kept"] == 1
    assert table_rows(postgres_url, table) == {"a0": "zero", "b0": "one"}
    assert state_keys(postgres_url, table) == {str(src / "a.jsonl"), str(src / "b.jsonl")}


@pytest.mark.anyio
async def test_a_file_renamed_under_keep_moves_its_documents(postgres_url: str, table: str, tmp_path: Path) -> None:
    """Under run.on_deleted: keep, a new file's records take over the ids a kept (deleted) file's rows hold:
    each document's kept rows (all its chunks) leave with its new ones, with no duplicate_id error and no
    token; what no live file took over stays, and goes once on_deleted is remove."""
    src = tmp_path / "in"
    sections = {**RENAMED_UNDER_KEEP, "sink": {"path": postgres_url, "table": table, "shard_rows": 200}}
    cfg = await renamed_under_keep(tmp_path, make_config(tmp_path, "http://placeholder", **sections))
    texts = table_rows(postgres_url, table)
    assert {"m#0", "m#1", "m#2"} <= set(texts)
    job, result, stats = await rerun(cfg)
    assert job.changes["new"] == 2 and job.changes["kept"] == 2
    assert stats["inputs_embedded"] == 0 and result.totals["rows_failed"] == 0
    assert dict(query(postgres_url, f'SELECT id, source FROM "{table}"')) == moved_sources(src)
    assert not query(postgres_url, f'SELECT id FROM "{table}_errors"')
    removing = cfg.model_copy(update={"run": cfg.run.model_copy(update={"on_deleted": "remove"})})
    _, result, _ = await rerun(removing)
    expected = {i: t for i, t in texts.items() if i not in ("m#2", "w")}
    check_exact(postgres_url, table, tmp_path, expected, result.totals)


@pytest.mark.anyio
async def test_mass_deletion_is_refused_before_anything_changes(postgres_url: str, table: str,
                                                                tmp_path: Path) -> None:
    """A run that would remove more than run.max_removed_fraction of the files stops (exit 2, one line)
    and leaves the table and its state as they were; raising the key lets it through."""
    src = tmp_path / "in"
    src.mkdir()
    for name in "abc":
        jsonl(src / f"{name}.jsonl", {f"{name}0": name})
    cfg = pg_config(tmp_path, postgres_url, table)
    await rerun(cfg)
    state = query(postgres_url, f'SELECT * FROM "{table}_state" ORDER BY key')
    (src / "a.jsonl").unlink()
    (src / "b.jsonl").unlink()
    with pytest.raises(SinkError) as caught:
        await rerun(cfg)
    message = str(caught.value)
    assert caught.value.exit_code == 2 and "\n" not in message
    assert "2 of the dataset's 3 source files (67% of the files" in message and "run.max_removed_fraction=0.5" in message
    assert table_rows(postgres_url, table) == {"a0": "a", "b0": "b", "c0": "c"}
    assert query(postgres_url, f'SELECT * FROM "{table}_state" ORDER BY key') == state
    lenient = pg_config(tmp_path, postgres_url, table, run={"max_removed_fraction": 1})
    _, result, _ = await rerun(lenient)
    check_exact(postgres_url, table, tmp_path, {"c0": "c"}, result.totals)


@pytest.mark.anyio
async def test_a_table_of_the_previous_version_follows_too(postgres_url: str, table: str, tmp_path: Path) -> None:
    """Tables without the column of ends and of writers (made before them) open; a grown file, whose end
    is unknown, is read again whole, its rows of no writer replaced, and the table ends exact."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {f"a{i}": f"text {i}" for i in range(3)}
    jsonl(src / "a.jsonl", docs)
    jsonl(src / "b.jsonl", {"b0": "other"})
    cfg = pg_config(tmp_path, postgres_url, table)
    await rerun(cfg)
    query(postgres_url, f'ALTER TABLE "{table}_state" DROP COLUMN end_location')
    query(postgres_url, f'ALTER TABLE "{table}" DROP COLUMN writer_rank')
    docs["b0"] = "other"
    with open(src / "a.jsonl", "a") as f:
        f.write(json.dumps({"id": "a3", "text": "text 3"}) + "\n")
    docs["a3"] = "text 3"
    touch_later(src / "a.jsonl")
    job, result, stats = await rerun(cfg)
    assert job.changes["changed"] == 1 and job.changes["appended"] == 0 and stats["inputs_embedded"] == 1
    # (read whole again, but a0-a2 keep their vectors)
    check_exact(postgres_url, table, tmp_path, docs, result.totals)
    assert sorted(query(postgres_url, f'SELECT id, writer_rank FROM "{table}" ORDER BY id')) == [
        ("a0", 0), ("a1", 0), ("a2", 0), ("a3", 0), ("b0", None)]
    with open(src / "a.jsonl", "a") as f:  # the end is known again
        f.write(json.dumps({"id": "a4", "text": "text 4"}) + "\n")
    docs["a4"] = "text 4"
    touch_later(src / "a.jsonl")
    job, result, stats = await rerun(cfg)
    assert job.changes["appended"] == 1 and stats["inputs_embedded"] == 1
    check_exact(postgres_url, table, tmp_path, docs, result.totals)


@pytest.mark.anyio
async def test_two_ranks_each_follow_their_own_files(postgres_url: str, table: str, tmp_path: Path) -> None:
    """world_size 2 on one table: each rank replaces, appends and removes the files it owns, and drops only
    its own state rows; the table ends with exactly the current records."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {name: {f"{name}{i}": f"{name} text {i}" for i in range(3)} for name in "abcdef"}
    for name, d in docs.items():
        jsonl(src / f"{name}.jsonl", d)

    def ranks() -> list[Config]:
        return [pg_config(tmp_path, postgres_url, table, run={"world_size": 2, "rank": r, "max_removed_fraction": 1})
                for r in (0, 1)]

    for cfg in ranks():
        await rerun(cfg)
    owners = {key: rank for rank, key in query(postgres_url, f'SELECT rank, key FROM "{table}_state"')}
    assert set(owners.values()) == {0, 1}
    docs["a"]["a1"] = "a edited"
    jsonl(src / "a.jsonl", docs["a"])
    touch_later(src / "a.jsonl")
    with open(src / "c.jsonl", "a") as f:
        f.write(json.dumps({"id": "c3", "text": "c text 3"}) + "\n")
    docs["c"]["c3"] = "c text 3"
    touch_later(src / "c.jsonl")
    for name in "be":
        (src / f"{name}.jsonl").unlink()
        del docs[name]
    changes: dict[str, int] = {}
    for cfg in ranks():
        job, result, _ = await rerun(cfg)
        assert result.exit_code == 0
        changes = {k: changes.get(k, 0) + v for k, v in job.changes.items()}
    assert changes == {"new": 0, "resumed": 0, "changed": 1, "appended": 1, "deleted": 2, "unchanged": 2}
    assert table_rows(postgres_url, table) == {k: v for d in docs.values() for k, v in d.items()}
    state = {key: rank for rank, key in query(postgres_url, f'SELECT rank, key FROM "{table}_state"')}
    assert state == {k: r for k, r in owners.items() if Path(k).exists()}


@pytest.mark.anyio
async def test_a_changed_file_split_between_two_ranks_keeps_every_row(postgres_url: str, table: str,
                                                                       tmp_path: Path) -> None:
    """A file cut into pieces that two ranks share, edited: each rank replaces only the rows it wrote, so
    the rank that runs second does not delete what the first copied in."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {f"r{i}": f"record {i} " + "x" * 40 for i in range(60)}
    jsonl(src / "a.jsonl", docs)

    def ranks() -> list[Config]:
        out = []
        for r in (0, 1):
            cfg = pg_config(tmp_path, postgres_url, table, run={"world_size": 2, "rank": r})
            out.append(cfg.model_copy(update={"source": cfg.source.model_copy(update={"split_bytes": 600})}))
        return out

    for cfg in ranks():
        await rerun(cfg)
    assert {r for r, in query(postgres_url, f'SELECT DISTINCT writer_rank FROM "{table}"')} == {0, 1}
    docs["r5"] = "edited"
    jsonl(src / "a.jsonl", docs)
    touch_later(src / "a.jsonl")
    totals = 0
    for cfg in ranks():
        job, result, _ = await rerun(cfg)
        assert job.changes["changed"] == 1
        totals += result.totals["rows_embedded"]
    assert table_rows(postgres_url, table) == docs and totals == len(docs)


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


def test_sigint_during_a_replacement_then_rerun_pays_only_for_changed_chunks(postgres_url: str, table: str,
                                                                            tmp_path: Path) -> None:
    """Ctrl-C while an edited file's rows are being replaced in a table; the rerun still sends only its
    edited records (the old rows' vectors wait in {table}_retired until the file is whole, then go)."""
    with serve_process("--fake", "--dimensions", "8", "--latency-ms", "150") as url:
        job = pg_job(tmp_path, url, postgres_url, table)
        sigint_mid_replacement_then_rerun(tmp_path, url, job)
    check_table_follows(tmp_path, postgres_url, table)
    assert query(postgres_url, f"SELECT count(*) FROM {table}_retired") == [(0,)]


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_watch_follows_changes_and_deletions(postgres_url: str, table: str, tmp_path: Path) -> None:
    """A watcher into Postgres replaces an edited file's rows and removes a deleted file's (and its state
    row), then stops on SIGTERM."""
    gone = str(tmp_path / "in" / "part-2.jsonl")

    def follows() -> bool:
        return dict(query(postgres_url, f"SELECT id, text FROM {table}")) == expected_ids(tmp_path) and \
            not query(postgres_url, f"SELECT 1 FROM {table}_state WHERE key = %s", gone)

    with serve_process("--fake", "--dimensions", "8") as url:
        job = pg_job(tmp_path, url, postgres_url, table, watch="true", poll_interval_s=0.2, max_removed_fraction=1)
        proc = start(job)
        lines: list[str] = []
        assert proc.stderr is not None
        drain = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
        drain.start()
        try:
            wait_until(lambda: query(postgres_url, "SELECT to_regclass(%s)", table) != [(None,)] and
                       query(postgres_url, f"SELECT count(*) FROM {table}") == [(RECORDS,)], "the first load")
            edit(tmp_path)
            wait_until(follows, "the table to follow the edit and the deletion")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        finally:
            proc.kill()
            drain.join(timeout=10)
            for pipe in (proc.stdout, proc.stderr):
                assert pipe is not None
                pipe.close()
    err = "".join(lines)
    assert code == 143, err
    assert "deleted=1" in err and "changed=1" in err
    check_table_follows(tmp_path, postgres_url, table)
