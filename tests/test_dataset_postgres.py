"""The Postgres sink against a real PostgreSQL with pgvector: exact, resumable, one writer per rank."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from conftest import ROOT, pipeline_cmd, run_cli, serve_process
from pipeline.config import SinkConfig
from pipeline.dataset.postgres import PostgresSink, connect
from pipeline.embed.vectors import quantize
from pipeline.errors import CommitFailed, SinkError
from pipeline.serve.app import ServerOptions
from pipeline.types import END_OF_FILE, Chunk, EmbeddedBatch, Failure, Usage
from test_jobs_run import make_config, run, write_corpus

CHUNKING = {"strategy": "split", "max_chars": 2048, "overlap_chars": 0}


def open_sink(url: str, table: str, etype: str = "float", **kw: Any) -> PostgresSink:
    opts = {k: kw.pop(k) for k in list(kw) if k in ("index", "distance", "index_options", "shard_rows")}
    return PostgresSink(
        SinkConfig(path=url, table=table, **opts), rank=kw.pop("rank", 0), model="m", input_type="search_document",
        embedding_type=etype, metadata_fields=kw.pop("metadata_fields", ["lang"]), run_started_at="t0",
        chunking=kw.pop("chunking", CHUNKING), **kw,
    )


def batch(seq: int, ids: list[str], vectors: np.ndarray, *, source: str = "a.jsonl", failures: int = 0,
          meta: Any = "xx") -> EmbeddedBatch:
    chunks = tuple(Chunk(i, i.split("#")[0], 0, f"text of {i}", source, n + 1, f"h{i}", {"lang": meta})
                   for n, i in enumerate(ids))
    fails = tuple(Failure(f"bad{seq}-{k}", f"bad{seq}-{k}", 0, "", source, 99, "empty_text", "empty")
                  for k in range(failures))
    return EmbeddedBatch(seq, chunks, vectors, Usage(1, 0, 10, 10), fails, records=len(ids) + failures,
                         marks=((source, seq + 1),))


def floats(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def query(url: str, text: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(text, args or None)
        return cur.fetchall() if cur.description else []


def test_rows_errors_accounting_and_state_commit_together(postgres_url: str, table: str) -> None:
    """One commit: rows, error rows, a commit row with the tokens, and how far the input is done."""
    sink = open_sink(postgres_url, table)
    vecs = floats(3)
    sink.write_many([batch(0, ["a", "b", "c"], vecs, failures=1)])
    entries = sink.commit()
    assert [e["rows"] for e in entries] == [3] and entries[0]["prompt_tokens"] == 10
    sink.close("completed")
    rows = query(postgres_url, f"SELECT id, lang, embedding::text FROM {table} ORDER BY id")
    assert [r[:2] for r in rows] == [("a", "xx"), ("b", "xx"), ("c", "xx")]
    got = np.array([[float(x) for x in r[2][1:-1].split(",")] for r in rows], dtype=np.float32)
    assert (got == vecs).all()
    assert query(postgres_url, f"SELECT id, error_type FROM {table}_errors") == [("bad0-0", "empty_text")]
    assert query(postgres_url, f"SELECT rows, errors, prompt_tokens FROM {table}_commits") == [(3, 1, 10)]
    assert query(postgres_url, f"SELECT key, location FROM {table}_state") == [("a.jsonl", 1)]
    assert query(postgres_url, f"SELECT status FROM {table}_runs") == [("completed",)]
    again = open_sink(postgres_url, table)
    assert again.done_upto("a.jsonl") == 1
    assert again.counts.rows_embedded == 3 and again.counts.rows_failed == 1 and again.counts.records_read == 4
    again.close("completed")


def test_a_commit_holds_at_most_shard_rows_rows_and_as_many_error_rows(postgres_url: str, table: str) -> None:
    """What waits is committed before a batch that would take it past shard_rows rows or error rows,
    and as soon as it reaches shard_rows: each commit holds whole batches, within the limit."""
    sink = open_sink(postgres_url, table, shard_rows=100)
    sizes = [(96, 0), (4, 60), (10, 60), (10, 60), (96, 0), (96, 0)]
    committed = []
    for seq, (n, failures) in enumerate(sizes):
        committed += sink.write_many([batch(seq, [f"r{seq}-{k}" for k in range(n)], floats(n), failures=failures)])
    sink.close("completed")
    assert [(e["rows"], e["errors"]) for e in committed] == [(100, 60), (10, 60), (10, 60), (96, 0)]
    got = query(postgres_url, f"SELECT rows, errors, requests FROM {table}_commits ORDER BY n")
    assert got == [(100, 60, 2), (10, 60, 1), (10, 60, 1), (96, 0, 1), (96, 0, 1)]
    assert query(postgres_url, f"SELECT count(*) FROM {table}") == [(312,)]
    assert query(postgres_url, f"SELECT location FROM {table}_state") == [(len(sizes),)]


@pytest.mark.anyio
@pytest.mark.parametrize("shard_rows", [40, 100])
async def test_a_run_commits_at_most_shard_rows_rows(postgres_url: str, table: str, tmp_path: Path,
                                                     shard_rows: int) -> None:
    """A whole run with batch_size 96: no commit holds more than shard_rows rows or error rows (requests
    shrink to fit, a run of bad lines is cut too), the tokens add up, and every record lands once."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 1000, long_every=50)
    (tmp_path / "in" / "b.jsonl").write_text("{not json\n" * 130)
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []}, embedding={"batch_size": 96},
                      sink={"path": postgres_url, "table": table, "shard_rows": shard_rows},
                      run={"max_failed_fraction": 1})
    result, stats = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    assert result.exit_code == 0
    commits = query(postgres_url, f"SELECT rows, errors, requests, prompt_tokens FROM {table}_commits")
    assert all(rows <= shard_rows and errors <= shard_rows for rows, errors, _, _ in commits)
    ids = [r[0] for r in query(postgres_url, f"SELECT id FROM {table}")]
    assert len({i.split("#")[0] for i in ids}) == 1000 and sum(c[0] for c in commits) == len(ids)
    assert sum(c[1] for c in commits) == 132 == query(postgres_url, f"SELECT count(*) FROM {table}_errors")[0][0]
    assert sum(c[2] for c in commits) == stats["requests"] and sum(c[3] for c in commits) == stats["prompt_tokens"]
    assert stats["inputs_embedded"] == len(ids) and stats["duplicate_inputs_embedded"] == 0


@pytest.mark.parametrize("etype,column", [("float", "vector"), ("int8", "vector"), ("uint8", "vector"),
                                          ("binary", "bit"), ("ubinary", "bit")])
def test_every_embedding_type_lands_in_its_column(postgres_url: str, table: str, etype: str, column: str) -> None:
    """float, int8, uint8 as vector(d); binary and ubinary as bit(d), each with its values."""
    vecs = quantize(floats(4, 64), etype)
    sink = open_sink(postgres_url, table, etype)
    sink.write_many([batch(0, ["a", "b", "c", "d"], vecs)])
    sink.close("completed")
    kind = query(postgres_url, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                 "WHERE attrelid = %s::regclass AND attname = 'embedding'", table)
    assert kind == [(f"{'bit' if column == 'bit' else 'vector'}(64)",)]
    got = [r[0] for r in query(postgres_url, f"SELECT embedding::text FROM {table} ORDER BY id")]
    if column == "bit":
        assert got == ["".join(format(b, "08b") for b in row.view(np.uint8)) for row in vecs]
    else:
        parsed = np.array([[np.float32(x) for x in g[1:-1].split(",")] for g in got])
        assert (parsed == vecs.astype(np.float32)).all()


def test_a_second_writer_on_the_same_rank_is_refused(postgres_url: str, table: str) -> None:
    """The (table, rank) advisory lock: another rank may write, the same rank may not."""
    first = open_sink(postgres_url, table)
    other_rank = open_sink(postgres_url, table, rank=1)
    waited: list[dict[str, Any]] = []
    with pytest.raises(SinkError, match="another writer holds rank 0"):
        open_sink(postgres_url, table, lock_wait_s=0.3, on_wait=waited.append)
    assert waited and waited[0]["pid"] is not None
    first.close("completed")
    other_rank.close("completed")
    open_sink(postgres_url, table, lock_wait_s=0.3).close("completed")  # free again


def test_a_table_made_with_other_settings_is_refused(postgres_url: str, table: str) -> None:
    """Another embedding type or chunking is refused with the way out."""
    open_sink(postgres_url, table).close("completed")
    with pytest.raises(SinkError, match="embedding_type='float'.*--fresh"):
        open_sink(postgres_url, table, "int8")
    with pytest.raises(SinkError, match="chunking"):
        open_sink(postgres_url, table, chunking={**CHUNKING, "max_chars": 100})


def test_repeated_ids_keep_the_last_row(postgres_url: str, table: str) -> None:
    """An id already in the table, or twice in one commit, ends once with its last vector."""
    sink = open_sink(postgres_url, table)
    sink.write_many([batch(0, ["a", "b"], floats(2, seed=1))])
    sink.commit()
    last = floats(3, seed=2)
    sink.write_many([batch(1, ["b", "c", "c"], last)])
    sink.close("completed")
    rows = query(postgres_url, f"SELECT id FROM {table} ORDER BY id")
    assert [r[0] for r in rows] == ["a", "b", "c"]
    got = query(postgres_url, f"SELECT embedding::text FROM {table} WHERE id = 'c'")[0][0]
    assert np.allclose([float(x) for x in got[1:-1].split(",")], last[2])
    again = open_sink(postgres_url, table)
    assert again.counts.rows_embedded == 3
    again.close("completed")


def test_removed_sources_leave_with_the_next_commit(postgres_url: str, table: str) -> None:
    """remove_sources: the old rows and error rows of a source go, in the commit that brings its new rows."""
    sink = open_sink(postgres_url, table)
    sink.write_many([batch(0, ["a", "b"], floats(2), source="x.md", failures=1),
                     batch(1, ["c"], floats(1), source="y.md")])
    sink.commit()
    sink.remove_sources(["x.md"])
    assert len(query(postgres_url, f"SELECT id FROM {table}")) == 3  # not before the commit
    sink.write_many([batch(2, ["a2"], floats(1), source="x.md")])
    sink.close("completed")
    assert sorted(r[0] for r in query(postgres_url, f"SELECT id FROM {table}")) == ["a2", "c"]
    assert query(postgres_url, f"SELECT count(*) FROM {table}_errors") == [(0,)]
    again = open_sink(postgres_url, table)
    assert again.counts.rows_embedded == 2 and again.counts.rows_failed == 0
    again.close("completed")


def test_resume_state_round_trips(postgres_url: str, table: str) -> None:
    """Signatures, restarts and seek checkpoints are saved with a commit and read back."""
    sink = open_sink(postgres_url, table)
    sink.set_signature("a.jsonl", "10:t1")
    sink.set_offsets({"a.jsonl": [[100, 4096]]})
    sink.write_many([batch(0, ["a"], floats(1)), batch(END_OF_FILE - 1, ["b"], floats(1))])
    sink.close("completed")
    again = open_sink(postgres_url, table)
    assert again.signature("a.jsonl") == "10:t1" and again.offsets() == {"a.jsonl": [[100, 4096]]}
    assert again.done_upto("a.jsonl") == END_OF_FILE
    again.restart("a.jsonl", "a.jsonl")
    again.commit()
    again.close("completed")
    third = open_sink(postgres_url, table)
    assert third.done_upto("a.jsonl") == 0 and third.offsets() == {}
    third.close("completed")


def test_metadata_columns_take_types_and_widen(postgres_url: str, table: str) -> None:
    """Metadata columns get a type from their values and turn to text when values conflict."""
    sink = open_sink(postgres_url, table)
    sink.write_many([batch(0, ["a"], floats(1), meta=3)])
    sink.commit()
    assert query(postgres_url, "SELECT data_type FROM information_schema.columns WHERE table_name = %s "
                 "AND column_name = 'lang'", table) == [("bigint",)]
    sink.write_many([batch(1, ["b"], floats(1), meta="en"), batch(2, ["c"], floats(1), meta={"k": 1})])
    sink.close("completed")
    assert sorted(query(postgres_url, f"SELECT id, lang FROM {table}")) == [("a", "3"), ("b", "en"), ("c", '{"k":1}')]


def test_a_dropped_connection_is_opened_again_and_the_commit_retried(postgres_url: str, table: str) -> None:
    """pg_terminate_backend of the sink's connection: the next commit reconnects, lands once."""
    sink = open_sink(postgres_url, table, sleep=lambda s: None)
    sink.write_many([batch(0, ["a"], floats(1))])
    sink.commit()
    pid = sink.conn.info.backend_pid
    query(postgres_url, "SELECT pg_terminate_backend(%s)", pid)
    sink.write_many([batch(1, ["b"], floats(1))])
    sink.commit()
    assert sink.conn.info.backend_pid != pid
    sink.close("completed")
    assert sorted(r[0] for r in query(postgres_url, f"SELECT id FROM {table}")) == ["a", "b"]
    assert query(postgres_url, f"SELECT count(*) FROM {table}_commits") == [(2,)]


def test_a_database_that_stays_away_stops_the_run_with_the_last_commit_intact(postgres_url: str, table: str) -> None:
    """The sink's role loses its login mid-run: CommitFailed after the retry budget, one clear line."""
    role = f"r_{table}"
    query(postgres_url, f'DROP ROLE IF EXISTS "{role}"')
    query(postgres_url, f'CREATE ROLE "{role}" LOGIN SUPERUSER')
    url = postgres_url.replace("postgres:@", f"{role}:@", 1)
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    try:
        sink = open_sink(url, table, sleep=sleep, clock=lambda: now[0], retry_s=5)
        sink.write_many([batch(0, ["a"], floats(1))])
        sink.commit()
        query(postgres_url, f'ALTER ROLE "{role}" NOLOGIN')
        query(postgres_url, "SELECT pg_terminate_backend(%s)", sink.conn.info.backend_pid)
        sink.write_many([batch(1, ["b"], floats(1))])
        with pytest.raises(CommitFailed, match="stayed away.*intact") as err:
            sink.commit()
        assert "\n" not in str(err.value)
        with pytest.raises(CommitFailed):
            sink.close("completed")
    finally:
        query(postgres_url, f'ALTER ROLE "{role}" LOGIN')
    assert [r[0] for r in query(postgres_url, f"SELECT id FROM {table}")] == ["a"]
    again = open_sink(postgres_url, table)
    assert again.done_upto("a.jsonl") == 1
    again.close("completed")
    query(postgres_url, f'REASSIGN OWNED BY "{role}" TO postgres')
    query(postgres_url, f'DROP ROLE "{role}"')


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    """Nothing listening: SinkError (exit 2), the URL's password masked."""
    with pytest.raises(SinkError, match=r"cannot connect to sink.path postgresql://\*\*\*@127.0.0.1:9/") as err:
        connect("postgresql://u:hunter2@127.0.0.1:9/db")
    assert "hunter2" not in str(err.value) and "\n" not in str(err.value) and err.value.exit_code == 2


def test_a_wrong_password_is_one_line_without_the_password(postgres_url: str, tmp_path: Any) -> None:
    """A role with a password, a wrong one given: SinkError naming the failure, not the password."""
    query(postgres_url, "DROP ROLE IF EXISTS pw_user")
    query(postgres_url, "CREATE ROLE pw_user LOGIN PASSWORD 'right-one'")
    hba = query(postgres_url, "SHOW hba_file")[0][0]
    with open(hba) as f:
        original = f.read()
    try:
        with open(hba, "w") as f:
            f.write("local all pw_user scram-sha-256\n" + original)
        query(postgres_url, "SELECT pg_reload_conf()")
        url = postgres_url.replace("postgres:@", "pw_user:wrong-one@", 1)
        with pytest.raises(SinkError, match="password authentication failed") as err:
            connect(url)
        assert "wrong-one" not in str(err.value)
    finally:
        with open(hba, "w") as f:
            f.write(original)
        query(postgres_url, "SELECT pg_reload_conf()")


def test_the_index_is_built_at_the_end_of_a_completed_run(postgres_url: str, table: str) -> None:
    """hnsw with the configured distance and options after the load; none while loading."""
    sink = open_sink(postgres_url, table, index_options={"m": 8})
    sink.write_many([batch(0, ["a", "b"], floats(2))])
    sink.commit()
    assert query(postgres_url, "SELECT to_regclass(%s)", f"{table}_embedding_idx") == [(None,)]
    sink.close("completed")
    (ddl,) = query(postgres_url, "SELECT indexdef FROM pg_indexes WHERE indexname = %s", f"{table}_embedding_idx")
    assert "hnsw (embedding vector_cosine_ops) WITH (m='8')" in ddl[0]


def test_a_cosine_query_finds_a_row_by_its_own_vector(postgres_url: str, table: str) -> None:
    """Through the hnsw index, the nearest row to a row's vector is that row."""
    vecs = floats(200, 32, seed=5)
    sink = open_sink(postgres_url, table)
    sink.write_many([batch(0, [f"d{i}" for i in range(200)], vecs)])
    sink.close("completed")
    with connect(postgres_url) as conn:
        conn.execute("SET enable_seqscan = off")
        (hit,) = conn.execute(f"SELECT id FROM {table} ORDER BY embedding <=> %s LIMIT 1", (vecs[137],)).fetchall()
    assert hit == ("d137",)


# --------------------------------------------------------------------------- the whole job


def write_inputs(folder: Path, files: int = 3, per_file: int = 400, bad: bool = True) -> int:
    """JSONL files with a metadata field (and two bad lines in the first); returns the good records."""
    folder.mkdir(exist_ok=True)
    for part in range(files):
        lines = [json.dumps({"id": f"p{part}-{i}", "text": f"file {part} record {i} ünïcode", "lang": "xx"})
                 for i in range(per_file)]
        if bad and part == 0:
            lines[10:10] = ["{not json", json.dumps({"id": "empty", "text": ""})]
        (folder / f"part-{part}.jsonl").write_text("\n".join(lines) + "\n")
    return files * per_file


def job_yaml(tmp_path: Path, url: str, db: str, table: str, **sink: object) -> Path:
    extra = "".join(f"  {k}: {v}\n" for k, v in sink.items())
    job = tmp_path / "job.yaml"
    job.write_text(
        f"source:\n  path: {tmp_path / 'in'}\n  metadata_fields: [lang]\n"
        f"embedding:\n  url: {url}\n  model: m\n  batch_size: 20\n  concurrency: 4\n"
        f"sink:\n  path: '{db}'\n  table: {table}\n  shard_rows: 100\n{extra}"
        "run:\n  max_failed_fraction: 0.01\n  shutdown_grace_s: 2\n"
        "logging:\n  format: logfmt\n"
    )
    return job


def test_the_whole_job_lands_every_record_once(postgres_url: str, table: str, tmp_path: Path) -> None:
    """`pipeline run` into Postgres: good records as rows, bad ones as error rows, tokens as served."""
    good = write_inputs(tmp_path / "in")
    with serve_process("--fake", "--dimensions", "32") as url:
        done = run_cli("run", str(job_yaml(tmp_path, url, postgres_url, table)))
        assert done.returncode == 0, done.stderr
        stats = json.loads(urllib.request.urlopen(f"{url}/stats").read())
    ids = [r[0] for r in query(postgres_url, f"SELECT id FROM {table}")]
    assert len(ids) == len(set(ids)) == good
    assert sorted(r[0] for r in query(postgres_url, f"SELECT error_type FROM {table}_errors")) == [
        "empty_text", "invalid_json"]
    (tokens, requests, records), = query(postgres_url, f"SELECT sum(prompt_tokens), sum(requests), sum(records) "
                                         f"FROM {table}_commits")
    assert (tokens, requests, records) == (stats["prompt_tokens"], stats["requests"], good + 2)
    assert "event=shard_committed" in done.stderr and "hunter" not in done.stderr
    again = run_cli("run", str(job_yaml(tmp_path, "http://127.0.0.1:9", postgres_url, table)))
    assert again.returncode == 0, again.stderr  # nothing left to do: no request made
    assert query(postgres_url, f"SELECT count(*) FROM {table}") == [(good,)]


def test_sigkill_then_rerun_is_exact(postgres_url: str, table: str, tmp_path: Path) -> None:
    """A real `pipeline run` killed with SIGKILL mid-run, then run again: every record once."""
    good = write_inputs(tmp_path / "in", files=3, per_file=1000, bad=False)
    with serve_process("--fake", "--dimensions", "32", "--latency-ms", "20") as url:
        job = job_yaml(tmp_path, url, postgres_url, table)
        proc = subprocess.Popen(pipeline_cmd("run", str(job)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT)
        assert proc.stderr is not None
        seen = 0
        for line in proc.stderr:
            seen += "event=shard_committed" in line
            if seen >= 3:
                break
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        partial = query(postgres_url, f"SELECT count(*) FROM {table}")[0][0]
        assert 0 < partial < good
        done = run_cli("run", str(job))
        assert done.returncode == 0, done.stderr
        stats = json.loads(urllib.request.urlopen(f"{url}/stats").read())
    ids = [r[0] for r in query(postgres_url, f"SELECT id FROM {table}")]
    assert len(ids) == len(set(ids)) == good
    assert query(postgres_url, f"SELECT status FROM {table}_runs ORDER BY n") == [("unfinished",), ("completed",)]
    (tokens,), = query(postgres_url, f"SELECT sum(prompt_tokens) FROM {table}_commits")
    assert tokens <= stats["prompt_tokens"]  # what the killed run paid for and never committed is not counted


def test_an_unreachable_database_exits_2_before_anything_starts(tmp_path: Path) -> None:
    """`pipeline run` with a database nobody answers: one line, exit 2, the password masked."""
    write_inputs(tmp_path / "in", files=1, per_file=5)
    job = job_yaml(tmp_path, "http://127.0.0.1:9", "postgresql://u:hunter2@127.0.0.1:9/db", "t")
    done = run_cli("run", str(job))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline: error: cannot connect to sink.path postgresql://***@127.0.0.1:9/db")
    assert "hunter2" not in done.stderr


def test_nul_characters_do_not_stop_a_commit(postgres_url: str, table: str) -> None:
    """Postgres text cannot hold NUL: it is stored as U+FFFD instead of failing the commit."""
    sink = open_sink(postgres_url, table)
    vec = floats(1)
    chunk = Chunk("a\x00", "a\x00", 0, "te\x00xt", "a.jsonl", 1, "h", {"lang": "x\x00"})
    fail = Failure("b", "b", 0, "bad\x00", "a.jsonl", 2, "empty_text", "m\x00")
    sink.write_many([EmbeddedBatch(0, (chunk,), vec, Usage(), (fail,), records=2, marks=(("a.jsonl", 2),))])
    sink.close("completed")
    assert query(postgres_url, f"SELECT id, text, lang FROM {table}") == [("a\ufffd", "te\ufffdxt", "x\ufffd")]
    assert query(postgres_url, f"SELECT text, message FROM {table}_errors") == [("bad\ufffd", "m\ufffd")]


def test_fresh_drops_the_table_and_its_state(postgres_url: str, table: str) -> None:
    """--fresh on a Postgres sink starts over: no rows, no state, a table made anew."""
    from pipeline.config import Config
    from pipeline.dataset.postgres import open_postgres_sink

    sink = open_sink(postgres_url, table)
    sink.write_many([batch(0, ["a"], floats(1))])
    sink.close("completed")
    cfg = Config.model_validate({"source": {"path": "x"}, "embedding": {"provider": "local", "model": "m"},
                                 "sink": {"path": postgres_url, "table": table}})
    again = open_postgres_sink(cfg, started_at="t1", metadata_fields=[], fresh=True)
    assert again.done_upto("a.jsonl") == 0 and again.counts.rows_embedded == 0
    again.close("completed")
    assert query(postgres_url, "SELECT to_regclass(%s)", table) == [(None,)]


def test_in_watch_mode_the_index_comes_with_the_first_round(postgres_url: str, table: str) -> None:
    """build_index_on_commit: an explicit commit (a watch round's end) builds the index once rows are in."""
    sink = open_sink(postgres_url, table, build_index_on_commit=True)
    sink.write_many([batch(0, ["a", "b"], floats(2))])
    sink.commit()
    assert query(postgres_url, "SELECT to_regclass(%s)::text", f"{table}_embedding_idx") == [(f"{table}_embedding_idx",)]
    sink.close("interrupted")


def test_the_heartbeat_opens_a_lost_connection_again(postgres_url: str, table: str) -> None:
    """renew() after the sink's backend was terminated: a new connection, holding the lock again."""
    sink = open_sink(postgres_url, table, sleep=lambda s: None)
    pid = sink.conn.info.backend_pid
    query(postgres_url, "SELECT pg_terminate_backend(%s)", pid)
    sink.renew()
    assert sink.conn.info.backend_pid != pid
    with pytest.raises(SinkError, match="another writer"):
        open_sink(postgres_url, table, lock_wait_s=0)
    sink.close("completed")


def test_retry_failed_says_it_does_not_work_on_postgres_yet(tmp_path: Path) -> None:
    """retry-failed with a Postgres sink: one line, exit 2, nothing touched."""
    write_inputs(tmp_path / "in", files=1, per_file=5)
    done = run_cli("retry-failed", str(job_yaml(tmp_path, "http://127.0.0.1:9", "postgresql://u:pw@127.0.0.1:9/d", "t")))
    assert done.returncode == 2 and "not on a Postgres sink" in done.stderr and "pw@" not in done.stderr


def test_ivfflat_with_ip_takes_its_lists_from_the_rows(postgres_url: str, table: str) -> None:
    """index: ivfflat, distance: ip: vector_ip_ops, with lists at least 10 by default."""
    sink = open_sink(postgres_url, table, index="ivfflat", distance="ip")
    sink.write_many([batch(0, [f"d{i}" for i in range(50)], floats(50))])
    sink.close("completed")
    (ddl,) = query(postgres_url, "SELECT indexdef FROM pg_indexes WHERE indexname = %s", f"{table}_embedding_idx")
    assert "ivfflat (embedding vector_ip_ops) WITH (lists='10')" in ddl[0]


def test_a_distance_or_index_option_that_does_not_apply_is_refused(postgres_url: str, table: str) -> None:
    """l2 on bit vectors, or an hnsw option given to ivfflat: SinkError before anything is written."""
    with pytest.raises(SinkError, match="sink.distance: l2 does not apply to binary"):
        open_sink(postgres_url, table, "binary", distance="l2")
    with pytest.raises(SinkError, match="sink.index_options: 'm' is not an option of index ivfflat"):
        open_sink(postgres_url, table, index="ivfflat", index_options={"m": 4})


def test_a_run_rides_out_its_connection_being_killed(postgres_url: str, table: str, tmp_path: Path) -> None:
    """pg_terminate_backend of a running `pipeline run`'s connection: it reconnects, ends exit 0, exact."""
    good = write_inputs(tmp_path / "in", files=3, per_file=600, bad=False)
    with serve_process("--fake", "--dimensions", "32", "--latency-ms", "20") as url:
        proc = subprocess.Popen(pipeline_cmd("run", str(job_yaml(tmp_path, url, postgres_url, table))),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stderr is not None
        for line in proc.stderr:
            if "event=shard_committed" in line:
                break
        killed = query(postgres_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name LIKE %s", f"pipeline:%:{proc.pid}:rank0")
        _, rest = proc.communicate(timeout=120)
    assert killed == [(True,)]
    assert proc.returncode == 0, rest
    assert "event=database_retrying" in rest  # it noticed, and went on
    ids = [r[0] for r in query(postgres_url, f"SELECT id FROM {table}")]
    assert len(ids) == len(set(ids)) == good


def test_a_user_who_may_not_create_tables_is_one_line(postgres_url: str, table: str) -> None:
    """Permission denied on CREATE TABLE at open: SinkError (exit 2) naming the table, no traceback."""
    query(postgres_url, "DROP ROLE IF EXISTS reader")
    query(postgres_url, "CREATE ROLE reader LOGIN")
    query(postgres_url, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    try:
        with pytest.raises(SinkError, match=f"cannot open .* table {table}: permission denied") as err:
            open_sink(postgres_url.replace("postgres:@", "reader:@", 1), table)
        assert "\n" not in str(err.value)
    finally:
        query(postgres_url, "DROP ROLE reader")
