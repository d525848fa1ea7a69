"""A Postgres table follows the source as the file dataset does: edits, appends, deletions (pipeline.jobs.changes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import Config
from pipeline.errors import SinkError

from test_jobs_changes import jsonl, rerun, touch_later
from test_jobs_run import make_config

pytestmark = pytest.mark.anyio

SUFFIXES = ("", "_errors", "_commits", "_state", "_runs", "_meta")


@pytest.fixture
def table(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[str]:
    """A table name of this test's own (the server is shared by the session)."""
    name = "c_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for suffix in SUFFIXES:
            conn.execute(f'DROP TABLE IF EXISTS "{name}{suffix}"')


def query(url: str, text: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(text, args or None)
        return cur.fetchall() if cur.description else []


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
    assert stats["inputs_embedded"] == 3 + 1 + 1  # a's three records (no self-reuse on Postgres), c5, e0
    check_exact(postgres_url, table, tmp_path, {k: v for d in docs.values() for k, v in d.items()}, result.totals)
    job, result, stats = await rerun(cfg)
    assert stats["inputs_embedded"] == 0 and job.changes["unchanged"] == 4


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
async def test_other_formats_follow_edits_and_deletions(postgres_url: str, table: str, tmp_path: Path,
                                                        fmt: str) -> None:
    """Text, CSV and Parquet sources: an edited file's rows are replaced, a deleted file's removed."""
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
    (src / f"b.{fmt}").unlink()
    job, result, stats = await rerun(cfg)
    assert result.exit_code == 0
    assert job.changes["changed"] == 1 and job.changes["deleted"] == 1 and job.changes["unchanged"] == 1
    assert stats["inputs_embedded"] == 1
    check_exact(postgres_url, table, tmp_path, expected, result.totals)


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
    assert result.exit_code == 0 and job.changes["deleted"] == 0
    assert table_rows(postgres_url, table) == {"a0": "zero", "b0": "one"}
    assert state_keys(postgres_url, table) == {str(src / "a.jsonl"), str(src / "b.jsonl")}


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
    assert "2 of the dataset's 3 source files (67%)" in message and "run.max_removed_fraction=0.5" in message
    assert table_rows(postgres_url, table) == {"a0": "a", "b0": "b", "c0": "c"}
    assert query(postgres_url, f'SELECT * FROM "{table}_state" ORDER BY key') == state
    lenient = pg_config(tmp_path, postgres_url, table, run={"max_removed_fraction": 1})
    _, result, _ = await rerun(lenient)
    check_exact(postgres_url, table, tmp_path, {"c0": "c"}, result.totals)


async def test_a_table_of_the_previous_version_follows_too(postgres_url: str, table: str, tmp_path: Path) -> None:
    """A state table without the column of ends (made before it) opens; a grown file, whose end is
    unknown, is read again whole, and the table ends exact."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {f"a{i}": f"text {i}" for i in range(3)}
    jsonl(src / "a.jsonl", docs)
    cfg = pg_config(tmp_path, postgres_url, table)
    await rerun(cfg)
    query(postgres_url, f'ALTER TABLE "{table}_state" DROP COLUMN end_location')
    with open(src / "a.jsonl", "a") as f:
        f.write(json.dumps({"id": "a3", "text": "text 3"}) + "\n")
    docs["a3"] = "text 3"
    touch_later(src / "a.jsonl")
    job, result, stats = await rerun(cfg)
    assert job.changes["changed"] == 1 and job.changes["appended"] == 0 and stats["inputs_embedded"] == 4
    check_exact(postgres_url, table, tmp_path, docs, result.totals)
    with open(src / "a.jsonl", "a") as f:  # the end is known again
        f.write(json.dumps({"id": "a4", "text": "text 4"}) + "\n")
    docs["a4"] = "text 4"
    touch_later(src / "a.jsonl")
    job, result, stats = await rerun(cfg)
    assert job.changes["appended"] == 1 and stats["inputs_embedded"] == 1
    check_exact(postgres_url, table, tmp_path, docs, result.totals)
