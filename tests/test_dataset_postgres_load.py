"""The Postgres sink's load path: rows COPY straight into the table, through the upsert only when an id is there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import run_cli, serve_process
from pipeline.dataset import postgres_rows
from test_dataset_postgres import batch, floats, job_yaml, open_sink, query, write_inputs


def vectors_of(url: str, table: str) -> dict[str, np.ndarray]:
    rows = query(url, f"SELECT id, embedding::text FROM {table}")
    return {i: np.array([np.float32(x) for x in v[1:-1].split(",")]) for i, v in rows}


def test_new_ids_go_straight_in_and_an_existing_id_falls_back_to_the_upsert(
        postgres_url: str, table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit of new ids skips the upsert; one meeting an id already there is undone to its savepoint and upserted."""
    upserts: list[int] = []
    real = postgres_rows.upsert_rows

    def counted(*args: Any) -> int:
        upserts.append(1)
        return real(*args)

    monkeypatch.setattr(postgres_rows, "upsert_rows", counted)
    sink = open_sink(postgres_url, table)
    sink.write_many([batch(0, ["a", "b"], floats(2, seed=1))])
    assert sink.commit()[0]["replaced"] == 0 and upserts == []
    new = floats(2, seed=2)
    sink.write_many([batch(1, ["c", "b"], new)])  # no id twice in the commit, but b is in the table
    assert sink.commit()[0]["replaced"] == 1 and upserts == [1]
    sink.close("completed")
    got = vectors_of(postgres_url, table)
    assert sorted(got) == ["a", "b", "c"] and (got["c"] == new[0]).all() and (got["b"] == new[1]).all()
    assert query(postgres_url, f"SELECT rows, replaced FROM {table}_commits ORDER BY n") == [(2, 0), (2, 1)]
    again = open_sink(postgres_url, table)
    assert again.counts.rows_embedded == 3 and again.done_upto("a.jsonl") == 2
    again.close("completed")


@pytest.mark.parametrize("dims,storage", [(16, "p"), (800, "p"), (1024, "e"), (3072, "e")])
def test_vectors_are_stored_inline_while_two_rows_fit_a_page(postgres_url: str, table: str, dims: int,
                                                            storage: str) -> None:
    """PLAIN storage up to 800 dimensions, EXTERNAL (no compression attempt) beyond, where PLAIN rows would not fit."""
    vecs = floats(3, dims)
    sink = open_sink(postgres_url, table)
    sink.write_many([batch(0, ["a", "b", "c"], vecs)])
    sink.close("completed")
    assert query(postgres_url, "SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass "
                 "AND attname = 'embedding'", table) == [(storage,)]
    got = vectors_of(postgres_url, table)
    assert all((got[i] == v).all() for i, v in zip("abc", vecs))


def test_a_rerun_after_an_edit_updates_the_rows_without_duplicates(postgres_url: str, table: str,
                                                                   tmp_path: Path) -> None:
    """`pipeline run`, one file edited in place (same ids, new texts), run again: its rows change, none doubles."""
    good = write_inputs(tmp_path / "in", files=2, per_file=150, bad=False)
    with serve_process("--fake", "--dimensions", "32") as url:
        job = job_yaml(tmp_path, url, postgres_url, table)
        assert (done := run_cli("run", str(job))).returncode == 0, done.stderr
        before = vectors_of(postgres_url, table)
        edited = tmp_path / "in" / "part-1.jsonl"
        lines = [json.loads(line) for line in edited.read_text().splitlines()]
        edited.write_text("".join(json.dumps({**r, "text": r["text"] + " edited"}) + "\n" for r in lines))
        assert (done := run_cli("run", str(job))).returncode == 0, done.stderr
    ids = [r[0] for r in query(postgres_url, f"SELECT id FROM {table}")]
    assert len(ids) == len(set(ids)) == good
    texts = dict(query(postgres_url, f"SELECT id, text FROM {table}"))
    assert all(texts[r["id"]].endswith(" edited") for r in lines)
    assert not any(t.endswith(" edited") for i, t in texts.items() if i.startswith("p0-"))
    after = vectors_of(postgres_url, table)
    assert all(not (after[r["id"]] == before[r["id"]]).all() for r in lines)  # the fake server hashes the text
    # the edited file's old rows leave with its first new ones (the table follows the source), so they are
    # counted removed; none is left for ON CONFLICT to update
    (replaced, removed), = query(postgres_url, f"SELECT sum(replaced), sum(removed) FROM {table}_commits")
    assert (replaced, removed) == (0, len(lines))
    again = run_cli("run", str(job_yaml(tmp_path, "http://127.0.0.1:9", postgres_url, table)))
    assert again.returncode == 0, again.stderr
