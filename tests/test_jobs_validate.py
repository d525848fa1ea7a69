"""pipeline validate: counts, what run.reuse_from saves, the sink, skipped files, and the exit code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
import pytest
from fsspec.spec import AbstractFileSystem

from structlog.testing import capture_logs

from conftest import ROOT, run_cli
from pipeline.config import load_config
from pipeline.jobs.validate import check_sink, estimate, validate

SAMPLE = str(ROOT / "configs" / "local.yaml")


def test_sample_counts() -> None:
    """The sample corpus: 300 records (2 unusable), 308 chunks, 4 requests of 96."""
    est = estimate(load_config(SAMPLE))
    assert (est.records, est.bad_records, est.chunks, est.requests) == (300, 2, 308, 4)
    assert est.by_error == {"empty_text": 1, "invalid_json": 1}
    assert est.tokens > 0 and est.reusable_chunks == 0


def test_reuse_from_counts_what_is_already_embedded(tmp_path: Path) -> None:
    """After a run, an estimate that reuses it has nothing left to spend; with provider: local, a
    fresh estimate's tokens are the run's own count."""
    out = tmp_path / "v1"
    assert run_cli("run", SAMPLE, "--set", f"sink.path={out}").returncode == 0
    est = estimate(load_config(SAMPLE, [f"run.reuse_from={out}"]))
    assert est.reusable_chunks == est.chunks == 308
    assert est.tokens == 0 and est.requests == 0
    shown = run_cli("validate", SAMPLE, "--set", f"run.reuse_from={out}")
    assert "reusable from" in shown.stdout and "estimated tokens: 0 (" in shown.stdout
    assert "; after reuse)" in shown.stdout
    manifest = json.loads((out / "_manifest.json").read_text())
    fresh = validate(load_config(SAMPLE, [f"sink.path={tmp_path / 'v2'}"]), SAMPLE)
    counted = next(line for line in fresh.lines if line.startswith("estimated tokens: "))
    assert counted == f"estimated tokens: {manifest['totals']['prompt_tokens']:,} " \
                      "(counted with the local model's tokenizer)"  # provider: local: what the run reports


def write_job(tmp_path: Path, records: list[dict], sink: str | None = None, extra: str = "") -> Path:
    """A job reading ``records`` (one jsonl file under in/) with the local provider."""
    (tmp_path / "in").mkdir(exist_ok=True)
    lines = [json.dumps(r) if isinstance(r, dict) else str(r) for r in records]
    (tmp_path / "in" / "docs.jsonl").write_text("\n".join(lines) + "\n")
    job = tmp_path / "job.yaml"
    job.write_text(f"source: {{path: '{tmp_path / 'in'}'}}\nembedding: {{provider: local}}\n"
                   f"sink: {{path: '{sink or tmp_path / 'out'}'}}\n{extra}")
    return job


GOOD = [{"id": f"r{i}", "text": f"record number {i}"} for i in range(10)]


def test_sink_inside_proc_is_an_error() -> None:
    """A sink under /proc (writable-looking to root) is refused: one error line and exit 2."""
    result = run_cli("validate", SAMPLE, "--set", "sink.path=/proc/out")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == "pipeline: error: sink.path /proc/out: inside /proc, a virtual filesystem " \
                                    "of the kernel, not a place for files"
    assert "records: 300" in result.stdout  # the rest of the report is still there


def test_sink_under_a_file_is_an_error(tmp_path: Path) -> None:
    """A sink whose nearest existing parent is a file cannot be created."""
    (tmp_path / "file.txt").write_text("x")
    check = check_sink(load_config(write_job(tmp_path, GOOD, sink=str(tmp_path / "file.txt" / "out"))))
    assert check.problem == f"sink.path {tmp_path}/file.txt/out: cannot be created: {tmp_path}/file.txt is a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_sink_in_a_read_only_directory_is_an_error(tmp_path: Path) -> None:
    """A sink to be created in a directory this user cannot write is refused."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    check = check_sink(load_config(write_job(tmp_path, GOOD, sink=str(locked / "out"))))
    assert check.problem is not None and "is not writable" in check.problem


def test_writable_local_sink_is_ok(tmp_path: Path) -> None:
    """A sink that does not exist yet, under a writable directory, is fine and is not created."""
    check = check_sink(load_config(write_job(tmp_path, GOOD, sink=str(tmp_path / "a" / "b"))))
    assert check.problem is None and check.line == f"sink: {tmp_path}/a/b (will be created in {tmp_path})"
    assert not (tmp_path / "a").exists()


def test_object_store_sink_is_looked_up_not_written(tmp_path: Path, memfs: fsspec.AbstractFileSystem) -> None:
    """An object-store sink is looked up, nothing is created, and write access is said to be unchecked."""
    check = check_sink(load_config(write_job(tmp_path, GOOD, sink="memory://bucket/ds")))
    assert check.problem is None
    assert check.line == "sink: memory://bucket/ds (will be created under memory:///; " \
                         "write access is not checked on an object store)"
    assert memfs.find("/") == []


class _Unreachable(AbstractFileSystem):
    """A store that answers nothing: every lookup fails as a missing endpoint would."""

    protocol = "unreachable-store"

    def info(self, path: str, **kwargs: object) -> dict:
        raise RuntimeError("Could not connect to the endpoint URL")


class _NoBucket(AbstractFileSystem):
    """A store where nothing exists, not even the bucket."""

    protocol = "no-bucket-store"

    def info(self, path: str, **kwargs: object) -> dict:
        raise FileNotFoundError(path)


def test_store_that_cannot_be_reached_is_said_unchecked(tmp_path: Path) -> None:
    """A store whose lookup fails says the sink could not be checked, without failing validate."""
    fsspec.register_implementation(_Unreachable.protocol, _Unreachable, clobber=True)
    check = check_sink(load_config(write_job(tmp_path, GOOD, sink="unreachable-store://bucket/ds")))
    assert check.problem is None
    assert check.line == "sink: unreachable-store://bucket/ds: could not be checked " \
                         "(Could not connect to the endpoint URL); nothing was written"


def test_store_without_the_bucket_is_an_error(tmp_path: Path) -> None:
    """A store where neither the prefix nor its bucket exists is an error naming the bucket."""
    fsspec.register_implementation(_NoBucket.protocol, _NoBucket, clobber=True)
    check = check_sink(load_config(write_job(tmp_path, GOOD, sink="no-bucket-store://bucket/a/ds")))
    assert check.problem == "sink.path no-bucket-store://bucket/a/ds: no-bucket-store://bucket does not exist"


def test_watch_says_the_run_will_not_exit(tmp_path: Path) -> None:
    """With run.watch: true, validate says that a run keeps going."""
    result = run_cli("validate", str(write_job(tmp_path, GOOD, extra="run: {watch: true, poll_interval_s: 30}\n")))
    assert result.returncode == 0, result.stderr
    assert "watch: run.watch is true: a run does not exit; it lists source.path again every 30s" in result.stdout


def test_files_skipped_for_their_extension_are_counted(tmp_path: Path) -> None:
    """Files format: auto does not read are counted by extension; hidden ones are not."""
    job = write_job(tmp_path, GOOD)
    for name in ("a.pdf", "b.pdf", "sub/c.html", "README", ".cache/d.pdf", "_tmp.pdf"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_text("x")
    report = validate(load_config(job), str(job))
    assert "skipped: 4 file(s) whose extension format: auto does not read ((no extension) 1, .html 1, .pdf 2); " \
           "set source.format to read them as one format" in report.lines
    as_text = validate(load_config(job, ["source.format=text"]), str(job))
    assert not any(line.startswith("skipped:") for line in as_text.lines)


def test_too_many_unusable_records_exit_1(tmp_path: Path) -> None:
    """Unusable records above run.max_failed_fraction make validate exit 1, as the run would."""
    job = write_job(tmp_path, GOOD + ["not json"] * 2, extra="run: {max_failed_fraction: 0.1}\n")
    result = run_cli("validate", str(job))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "unusable share: 16.67% of 12 rows (more than run.max_failed_fraction 0.1; a run would exit 1)" \
        in result.stdout
    assert result.stderr.strip() == "pipeline: error: 2 of 12 rows would fail, more than " \
                                    "run.max_failed_fraction=0.1: a run would exit 1"
    within = run_cli("validate", str(job), "--set", "run.max_failed_fraction=0.2")
    assert within.returncode == 0 and "(within run.max_failed_fraction 0.2)" in within.stdout


def test_sink_at_a_dangling_link_is_an_error(tmp_path: Path) -> None:
    """A sink path that is a link to nowhere is in the way, not a directory to create."""
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    check = check_sink(load_config(write_job(tmp_path, GOOD, sink=str(tmp_path / "link"))))
    assert check.problem == f"sink.path {tmp_path}/link: exists and is not a directory"


def test_validate_counts_the_changes_since_the_dataset(tmp_path: Path) -> None:
    """After a run, validate says how many files are new, changed, appended, deleted and unchanged."""
    job = write_job(tmp_path, GOOD)
    (tmp_path / "in" / "gone.jsonl").write_text(json.dumps({"id": "g", "text": "gone soon"}) + "\n")
    (tmp_path / "in" / "same.jsonl").write_text(json.dumps({"id": "s", "text": "stays"}) + "\n")
    assert run_cli("run", str(job)).returncode == 0
    with open(tmp_path / "in" / "docs.jsonl", "a") as f:
        f.write(json.dumps({"id": "r10", "text": "one more"}) + "\n")
    (tmp_path / "in" / "gone.jsonl").unlink()
    (tmp_path / "in" / "new.jsonl").write_text(json.dumps({"id": "n", "text": "new"}) + "\n")
    shown = run_cli("validate", str(job))
    assert shown.returncode == 0, shown.stderr
    assert "changes since the dataset: new 1, resumed 0, changed 0, appended 1, deleted 1, unchanged 1" in shown.stdout


def test_a_postgres_sink_is_checked_without_writing(postgres_url: str, tmp_path: Path) -> None:
    """validate connects to a Postgres sink (it used to refuse every one: "Protocol not known"), says
    whether the table is there, and after a run compares the listing with the table's state."""
    table = "validate_" + os.urandom(4).hex()
    sets = ["--set", f"sink.path={postgres_url}", "--set", f"sink.table={table}"]
    before = run_cli("validate", SAMPLE, *sets)
    assert before.returncode == 0, before.stdout + before.stderr
    assert f"(table {table} will be created)" in before.stdout
    assert "changes since the dataset" not in before.stdout
    assert run_cli("run", SAMPLE, *sets).returncode == 0
    after = run_cli("validate", SAMPLE, *sets)
    assert after.returncode == 0, after.stdout + after.stderr
    assert f"(table {table} is there: a run resumes it)" in after.stdout
    assert "changes since the dataset: new 0, resumed 0, changed 0, appended 0, deleted 0, unchanged 1" in after.stdout


def test_an_unreachable_postgres_sink_is_one_line_without_the_password() -> None:
    shown = run_cli("validate", SAMPLE, "--set", "sink.path=postgresql://u:hunter2@127.0.0.1:1/db")
    assert shown.returncode == 2
    assert "sink.path postgresql://***@127.0.0.1:1/db: cannot connect" in shown.stderr
    assert "hunter2" not in shown.stdout + shown.stderr and "Traceback" not in shown.stderr


def test_after_a_run_validate_counts_what_a_rerun_would_pay(tmp_path: Path) -> None:
    """Once a dataset is there, the tokens and requests are those of what changed: unchanged files are not
    opened, a grown JSONL file counts its new lines only, and an edited file's unchanged chunks keep their
    vectors (the sink itself is indexed, as a run does)."""
    records = [{"id": f"r{i}", "text": f"record number {i} " + "word " * 30} for i in range(200)]
    job = write_job(tmp_path, records)
    (tmp_path / "in" / "other.jsonl").write_text(json.dumps({"id": "o1", "text": "untouched"}) + "\n")
    (tmp_path / "in" / "grows.jsonl").write_text(json.dumps({"id": "g1", "text": "first line"}) + "\n")
    assert run_cli("run", str(job)).returncode == 0
    records[7]["text"] = "an edited record"
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with open(tmp_path / "in" / "grows.jsonl", "a") as f:
        f.write(json.dumps({"id": "g2", "text": "a second line"}) + "\n")
    for name in ("docs.jsonl", "grows.jsonl"):  # the mtime moves even on a coarse clock
        st = (tmp_path / "in" / name).stat()
        os.utime(tmp_path / "in" / name, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    shown = run_cli("validate", str(job))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    out = shown.stdout
    assert "changes since the dataset: new 0, resumed 0, changed 1, appended 1, deleted 0, unchanged 1" in out
    assert "a run reads 2 input(s) of them (1 unchanged, not opened): 201 chunks" in out  # 200 + g2
    assert "reusable from the sink itself (changed documents' unchanged chunks): 199 chunks" in out
    assert "requests: 1 (batch_size 96)" in out
    paid = int(out.split("estimated tokens: ")[1].split()[0].replace(",", ""))
    assert 0 < paid < 30  # the edited record and the appended line, not 200 records


def test_a_sink_inside_another_dataset_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """sink.path under a dataset's folder (out/ds/data) would put a second dataset's files among the first
    one's shards: validate and run refuse it in one line (exit 2), and nothing is written there."""
    first = tmp_path / "ds"
    assert run_cli("run", SAMPLE, "--set", f"sink.path={first}").returncode == 0
    before = sorted(p.relative_to(first) for p in first.rglob("*"))
    inner = first / "data" / "more"
    for command in ("validate", "run"):
        shown = run_cli(command, SAMPLE, "--set", f"sink.path={inner}")
        assert shown.returncode == 2, shown.stdout + shown.stderr
        assert f"is inside the dataset at {first}" in shown.stderr and "Traceback" not in shown.stderr
    assert sorted(p.relative_to(first) for p in first.rglob("*")) == before


def counting(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    """Count the calls of ``owner.name`` (which still runs); the list grows by one per call."""
    calls: list[int] = []
    real = getattr(owner, name)

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.mark.anyio
async def test_a_sink_inside_the_source_is_listed_and_warned_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a run into a sink inside the source, validate lists the source once and warns once."""
    import pipeline.jobs.inputs as inputs
    from test_jobs_changes import jsonl, rerun
    from test_jobs_run import make_config

    (tmp_path / "in").mkdir()
    jsonl(tmp_path / "in" / "a.jsonl", {"a0": "zero", "a1": "one"})
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []},
                      sink={"path": str(tmp_path / "in" / "embedded")})
    with capture_logs() as first:  # before the sink has a file there: said all the same
        assert validate(cfg, "job.yaml").exit_code == 0
        await rerun(cfg)
    assert [e["event"] for e in first].count("sink_inside_source") == 2
    listings = counting(monkeypatch, inputs, "open_source")
    with capture_logs() as logs:
        report = validate(cfg, "job.yaml")
    assert report.exit_code == 0, report.problems
    assert "changes since the dataset: new 0, resumed 0, changed 0, appended 0, deleted 0, unchanged 1" in report.lines
    assert [e["event"] for e in logs].count("sink_inside_source") == 1
    assert len(listings) == 1


@pytest.mark.anyio
async def test_a_postgres_sink_is_one_connection(
    postgres_url: str, table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate after a run into a table, with a changed and a deleted file (state, share of the deleted,
    own vectors all read): one connection to the database."""
    import psycopg

    from test_jobs_changes import jsonl, rerun, touch_later
    from test_jobs_changes_postgres import pg_config

    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "a.jsonl", {"a0": "zero", "a1": "one"})
    jsonl(src / "b.jsonl", {"b0": "two"})
    jsonl(src / "c.jsonl", {"c0": "three"})
    cfg = pg_config(tmp_path, postgres_url, table)
    await rerun(cfg)
    jsonl(src / "a.jsonl", {"a0": "zero", "a1": "one, edited"})
    touch_later(src / "a.jsonl")
    (src / "c.jsonl").unlink()
    connections = counting(monkeypatch, psycopg, "connect")
    report = validate(cfg, "job.yaml")
    assert "changes since the dataset: new 0, resumed 0, changed 1, appended 0, deleted 1, unchanged 1" in report.lines
    assert any(line.startswith("reusable from the sink itself") and ": 1 chunks" in line for line in report.lines), \
        report.lines
    assert len(connections) == 1


@pytest.mark.parametrize("changed", ["chunking.max_chars=1000", "embedding.embedding_type=int8"])
def test_a_dataset_made_with_other_settings_is_refused_as_the_run_refuses_it(tmp_path: Path, changed: str) -> None:
    """Other chunking settings, or another embedding type, than the dataset's: validate said "unchanged" and
    exit 0 while the run refused to mix them (exit 2); now validate says the run's own refusal."""
    out = tmp_path / "ds"
    assert run_cli("run", SAMPLE, "--set", f"sink.path={out}").returncode == 0
    sets = ["--set", f"sink.path={out}", "--set", changed]
    shown, ran = run_cli("validate", SAMPLE, *sets), run_cli("run", SAMPLE, *sets)
    assert shown.returncode == ran.returncode == 2, shown.stdout + shown.stderr
    assert "efusing to mix" in ran.stderr and shown.stderr == ran.stderr.splitlines()[-1] + "\n"
    assert "a run would stop before changing anything (exit 2)" in shown.stdout
    assert "unchanged" not in shown.stdout and "Traceback" not in shown.stderr


def test_a_postgres_table_made_with_other_settings_is_refused(postgres_url: str) -> None:
    """The same refusal for a Postgres sink, read from the table's meta without taking its lock."""
    sets = ["--set", f"sink.path={postgres_url}", "--set", "sink.table=validate_" + os.urandom(4).hex()]
    assert run_cli("run", SAMPLE, *sets).returncode == 0
    for changed in ("chunking.max_chars=1000", "embedding.embedding_type=int8"):
        shown = run_cli("validate", SAMPLE, *sets, "--set", changed)
        ran = run_cli("run", SAMPLE, *sets, "--set", changed)
        assert shown.returncode == ran.returncode == 2, shown.stdout + shown.stderr
        assert "efusing to mix" in ran.stderr and shown.stderr == ran.stderr.splitlines()[-1] + "\n"


def test_a_file_renamed_under_a_postgres_sink_is_estimated_free(postgres_url: str, tmp_path: Path) -> None:
    """The renamed file's rows are asked of the table by their old source, as the run asks them."""
    job = write_job(tmp_path, GOOD, sink=postgres_url)
    (tmp_path / "in" / "same.jsonl").write_text(json.dumps({"id": "s", "text": "stays"}) + "\n")
    sets = ["--set", "sink.table=validate_" + os.urandom(4).hex()]
    assert run_cli("run", str(job), *sets).returncode == 0
    (tmp_path / "in" / "docs.jsonl").rename(tmp_path / "in" / "moved.jsonl")
    shown = run_cli("validate", str(job), *sets)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "new 1, resumed 0, changed 0, appended 0, deleted 1, unchanged 1" in shown.stdout
    assert "estimated tokens: 0 (" in shown.stdout and "requests: 0 (" in shown.stdout


def test_a_rerun_into_a_table_is_estimated_without_the_records_whose_ids_it_holds(postgres_url: str,
                                                                                   tmp_path: Path) -> None:
    """The ids a rerun finds taken are read from the table (on the report's connection): a new file's record
    with one of them is not counted among the chunks a run sends."""
    from test_dataset_postgres import query

    job = write_job(tmp_path, GOOD, sink=postgres_url)
    table = "validate_" + os.urandom(4).hex()
    sets = ["--set", f"sink.table={table}", "--set", "run.max_failed_fraction=0.1"]
    assert run_cli("run", str(job), *sets).returncode == 0
    (tmp_path / "in" / "new.jsonl").write_text(json.dumps({"id": "r1", "text": "a clash"}) + "\n"
                                               + json.dumps({"id": "n1", "text": "a new record"}) + "\n")
    shown = run_cli("validate", str(job), *sets)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "a run reads 1 input(s) of them (1 unchanged, not opened): 1 chunks" in shown.stdout
    assert run_cli("run", str(job), *sets).returncode == 0
    assert query(postgres_url, f'SELECT id, error_type FROM "{table}_errors"') == [("r1", "duplicate_id")]


def test_the_state_validate_compares_with_is_looked_at_not_copied() -> None:
    """validate compares the listing with the dataset's resume state as it is loaded (compact columns),
    not with a dict copy of every input's signature: a million inputs would cost hundreds of MB more."""
    from pipeline.dataset.state import State
    from pipeline.jobs.validate import StateView

    state = State()
    state.set_signature("s3://b/a.md", "12:x")
    seen = StateView(state).signatures()
    assert seen is state.files and seen.get("s3://b/a.md") == "12:x" and len(seen) == 1


def test_requests_are_counted_at_most_shard_rows_inputs_each() -> None:
    """shard_rows below batch_size: the estimate counts the smaller requests a run sends, and says why."""
    est = estimate(load_config(SAMPLE, ["sink.shard_rows=40"]))
    assert est.chunks == 308 and est.requests == 8  # ceil(308 / 40), not ceil(308 / 96)
    lines = validate(load_config(SAMPLE, ["sink.shard_rows=40"]), SAMPLE).lines
    assert "requests: 8 (batch_size 40, capped at sink.shard_rows)" in lines


def tokens_line(stdout: str) -> int:
    """The tokens validate's ``estimated tokens:`` line counts."""
    return int(stdout.split("estimated tokens: ")[1].split()[0].replace(",", ""))


def test_duplicate_ids_are_counted_failed_and_unpaid_as_the_run_writes_them(tmp_path: Path) -> None:
    """Records whose id an earlier file's record holds are the duplicate_id error rows of the run: validate
    counts them failed, not paid (provider: local: its tokens are the run's), and says in one line that
    the run exits 1 on run.max_failed_fraction; the run does."""
    job = write_job(tmp_path, GOOD)
    (tmp_path / "in" / "other.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "text": f"the same id again, {i} " + "word " * 20}) + "\n"
                for i in range(3)))
    shown = run_cli("validate", str(job))
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "records: 13 (3 unusable: duplicate_id 3)" in shown.stdout
    assert shown.stderr.strip() == "pipeline: error: 3 of 13 rows would fail, more than " \
                                   "run.max_failed_fraction=0.01: a run would exit 1"
    ran = run_cli("run", str(job))
    assert ran.returncode == 1, ran.stdout + ran.stderr
    totals = json.loads((tmp_path / "out" / "_manifest.json").read_text())["totals"]
    assert totals["rows_failed"] == 3 and totals["prompt_tokens"] == tokens_line(shown.stdout)


def test_a_rerun_is_estimated_without_the_records_whose_ids_the_dataset_holds(tmp_path: Path) -> None:
    """After a run, a new file holding an id the dataset has (r1) and a new one: validate counts the clash
    as the run's duplicate_id row, paying only for the new record, as the run then does."""
    job = write_job(tmp_path, GOOD)
    assert run_cli("run", str(job)).returncode == 0
    before = json.loads((tmp_path / "out" / "_manifest.json").read_text())["totals"]["prompt_tokens"]
    (tmp_path / "in" / "new.jsonl").write_text(
        json.dumps({"id": "r1", "text": "a clash " + "word " * 30}) + "\n"
        + json.dumps({"id": "n1", "text": "a new record"}) + "\n")
    shown = run_cli("validate", str(job), "--set", "run.max_failed_fraction=0.1")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "a run reads 1 input(s) of them (1 unchanged, not opened): 1 chunks" in shown.stdout
    assert run_cli("run", str(job), "--set", "run.max_failed_fraction=0.1").returncode == 0
    totals = json.loads((tmp_path / "out" / "_manifest.json").read_text())["totals"]
    assert totals["rows_failed"] == 1 and totals["prompt_tokens"] - before == tokens_line(shown.stdout) > 0


def test_most_files_emptied_is_one_error_the_guards(tmp_path: Path) -> None:
    """Three of four files emptied: the run would stop at the mass-removal guard (exit 2) before their
    empty_text rows could fail it, so validate prints that one error line, not also max_failed_fraction's."""
    job = write_job(tmp_path, GOOD[:1])
    for i in range(3):
        (tmp_path / "in" / f"f{i}.md").write_text(f"document {i}\n")
    assert run_cli("run", str(job)).returncode == 0
    for i in range(3):
        (tmp_path / "in" / f"f{i}.md").write_text("")
    shown = run_cli("validate", str(job))
    assert shown.returncode == 2, shown.stdout + shown.stderr
    assert shown.stderr.count("\n") == 1 and "run.max_removed_fraction=0.5" in shown.stderr, shown.stderr
    assert "unusable share: 75.00% of 4 rows (more than run.max_failed_fraction 0.01)" in shown.stdout


def test_too_many_failed_is_said_of_every_row_a_run_writes_not_of_those_a_rerun_reads(tmp_path: Path) -> None:
    """After a run, two bad lines appended: the error line counts them among the dataset's 12 rows, as the
    unusable share does (it said "2 of 2 rows", those of the appended lines alone)."""
    job = write_job(tmp_path, GOOD)
    assert run_cli("run", str(job)).returncode == 0
    with open(tmp_path / "in" / "docs.jsonl", "a") as f:
        f.write("not json\n" * 2)
    shown = run_cli("validate", str(job))
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "unusable share: 16.67% of 12 rows (more than run.max_failed_fraction 0.01; a run would exit 1)" \
        in shown.stdout
    assert shown.stderr.strip() == "pipeline: error: 2 of 12 rows would fail, more than " \
                                   "run.max_failed_fraction=0.01: a run would exit 1"
