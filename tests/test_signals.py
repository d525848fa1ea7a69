"""Real signals to a real `pipeline run`: SIGTERM drains and commits, SIGKILL loses nothing."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from conftest import pipeline_cmd, run_cli, serve_process, ROOT
from pipeline.errors import SinkError
from state_helpers import read_state

RECORDS = 3000


def write_job(tmp_path: Path, url: str, **run: object) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    for part in range(3):
        lines = [json.dumps({"id": f"p{part}-{i}", "text": f"file {part} record {i} texte ünïcode"})
                 for i in range(RECORDS // 3)]
        (tmp_path / "in" / f"part-{part}.jsonl").write_text("\n".join(lines) + "\n")
    run_yaml = "".join(f"  {k}: {v}\n" for k, v in run.items())
    job = tmp_path / "job.yaml"
    job.write_text(
        f"source:\n  path: {tmp_path / 'in'}\n"
        f"embedding:\n  url: {url}\n  model: m\n  batch_size: 20\n  concurrency: 4\n"
        f"sink:\n  path: {tmp_path / 'out'}\n  shard_rows: 100\n"
        f"run:\n{run_yaml or '  max_failed_fraction: 0.01'}\n"
        "logging:\n  format: logfmt\n"
    )
    return job


def start(job: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(pipeline_cmd("run", str(job)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def wait_for_commits(proc: subprocess.Popen[str], count: int) -> list[str]:
    """Read the run's log until it has committed ``count`` shards (or ended)."""
    seen, lines = 0, []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if "event=shard_committed" in line:
            seen += 1
            if seen >= count:
                break
    return lines


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def check_dataset(tmp_path: Path) -> None:
    """Every record exactly once, and the manifest's totals match its files."""
    out = tmp_path / "out"
    manifest = json.loads((out / "_manifest.json").read_text())
    files = [str(out / s["path"]) for s in manifest["shards"] if s["kind"] == "data"]
    table = ds.dataset(files, format="parquet").to_table(columns=["id"])
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)) == RECORDS
    assert manifest["totals"]["rows_embedded"] == RECORDS == manifest["totals"]["records_read"]
    on_disk = {f"{p.parent.name}/{p.name}" for p in out.glob("*/part-*")}
    assert on_disk == {s["path"] for s in manifest["shards"]} | {f["path"] for f in manifest["state"]}
    assert not list(out.glob("_state/.*"))  # no temp file left either
    assert all(location >= 2**53 for location in read_state(out).progress.values())
    shown = run_cli("inspect", str(out))
    assert shown.returncode == 0, shown.stdout


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigterm_drains_commits_and_resumes(tmp_path: Path, seed: int) -> None:
    """SIGTERM at a random point exits 143 after committing what was read; a rerun completes exactly once."""
    rng = random.Random(seed)
    with serve_process("--fake", "--dimensions", "8", "--latency-ms", "20") as url:
        job = write_job(tmp_path, url)
        proc = start(job)
        wait_for_commits(proc, rng.randint(1, 8))
        time.sleep(rng.uniform(0, 0.2))  # a random kill point, not a wait for a condition
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        took = time.monotonic() - sent
        assert code == 143, err
        assert "event=shutdown_requested" in err and "status=interrupted" in err
        assert took < 25
        manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
        assert manifest["runs"][-1]["status"] == "interrupted"
        rerun = run_cli("run", str(job))
        assert rerun.returncode == 0, rerun.stderr
    check_dataset(tmp_path)


def test_sighup_commits_like_sigterm(tmp_path: Path) -> None:
    """SIGHUP (a closed terminal or SSH session) drains and commits like SIGTERM, and exits 129."""
    with serve_process("--fake", "--dimensions", "8", "--latency-ms", "20") as url:
        job = write_job(tmp_path, url)
        proc = start(job)
        wait_for_commits(proc, 2)
        proc.send_signal(signal.SIGHUP)
        code, err = finish(proc)
        assert code == 129, err
        assert "signal=SIGHUP" in err and "status=interrupted" in err
        assert "a second signal stops at once" in err
        manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
        assert manifest["runs"][-1]["status"] == "interrupted"
        assert run_cli("run", str(job)).returncode == 0
    check_dataset(tmp_path)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_then_rerun_loses_nothing(tmp_path: Path, seed: int) -> None:
    """SIGKILL at a random point, twice; the reruns finish with every record exactly once."""
    rng = random.Random(seed)
    with serve_process("--fake", "--dimensions", "8", "--latency-ms", "20", "--shuffle") as url:
        job = write_job(tmp_path, url)
        for _ in range(2):
            proc = start(job)
            wait_for_commits(proc, rng.randint(0, 6))
            time.sleep(rng.uniform(0, 0.3))
            proc.kill()
            finish(proc)
        rerun = run_cli("run", str(job))
        assert rerun.returncode == 0, rerun.stderr
    check_dataset(tmp_path)


def test_second_writer_waits_then_refuses(tmp_path: Path) -> None:
    """A second run on the same dataset while the first still writes is refused with one clear line."""
    # slow enough that the first run cannot finish (and let go) within the second's 10 s wait
    with serve_process("--fake", "--dimensions", "8", "--latency-ms", "2000") as url:
        job = write_job(tmp_path, url, shutdown_grace_s=0)
        first = start(job)
        wait_for_commits(first, 1)
        second = run_cli("run", str(job), timeout=60)
        first.send_signal(signal.SIGTERM)
        finish(first)
    assert second.returncode == 2
    lines = [line for line in second.stderr.splitlines() if line.startswith("pipeline: error")]
    assert len(lines) == 1 and "another pipeline" in lines[0] and "refusing" in lines[0]


def test_changed_chunking_is_refused_unless_fresh(tmp_path: Path) -> None:
    """Rerunning with other chunking against an existing dataset exits 2; --fresh starts over."""
    with serve_process("--fake", "--dimensions", "8") as url:
        job = write_job(tmp_path, url)
        assert run_cli("run", str(job)).returncode == 0
        changed = run_cli("run", str(job), "--set", "chunking.max_chars=500")
        assert changed.returncode == 2 and "chunking" in changed.stderr
        fresh = run_cli("run", str(job), "--set", "chunking.max_chars=500", "--fresh")
        assert fresh.returncode == 0, fresh.stderr
    check_dataset(tmp_path)


def test_watch_picks_up_new_files_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Watch mode embeds files that arrive after start, and SIGTERM ends it cleanly with 143."""
    with serve_process("--fake", "--dimensions", "8") as url:
        job = write_job(tmp_path, url, watch="true", poll_interval_s=0.3)
        proc = start(job)
        seen = wait_for_commits(proc, 1)  # the files present at start
        late = tmp_path / "in" / "late.jsonl"
        tmp = tmp_path / "in" / ".late.jsonl.partial"  # hidden while being written
        tmp.write_text("\n".join(json.dumps({"id": f"late-{i}", "text": f"late {i}"}) for i in range(50)) + "\n")
        tmp.rename(late)
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until the late file is committed
            seen.append(line)
            if "event=shard_committed" in line and "event=watch_found" in "".join(seen[-50:]):
                try:
                    done = read_state(tmp_path / "out").progress.get(str(late), 0)
                except SinkError:  # a state file merged away between reading the manifest and it
                    continue
                if done >= 2**53:
                    break
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
    assert code == 143, err
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["totals"]["rows_embedded"] == RECORDS + 50
    assert manifest["runs"][-1]["status"] == "interrupted"


def test_watch_starts_on_an_empty_source(tmp_path: Path) -> None:
    """A watcher whose source does not exist yet keeps waiting instead of failing, and stops on SIGTERM."""
    with serve_process("--fake", "--dimensions", "8") as url:
        job = write_job(tmp_path, url, watch="true", poll_interval_s=0.2)
        job.write_text(job.read_text().replace(f"path: {tmp_path / 'in'}", f"path: {tmp_path / 'later'}/*.jsonl"))
        proc = start(job)
        assert proc.stderr is not None
        for line in proc.stderr:  # it is running: the lease is taken and the watch loop lists
            if "event=run_started" in line:
                break
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
    assert code == 143, err


@pytest.mark.parametrize("seed", [1, 2])
def test_many_small_files_sigkill_then_rerun_loses_nothing(tmp_path: Path, seed: int) -> None:
    """Small files read many at a time: SIGKILL at a random point, twice; the rerun finishes with every
    file's record exactly once (resume marks follow the listing order, whatever was fetched ahead)."""
    rng = random.Random(seed)
    files = 900
    with serve_process("--fake", "--dimensions", "8", "--latency-ms", "20", "--shuffle") as url:
        job = write_job(tmp_path, url)
        for part in (tmp_path / "in").glob("*.jsonl"):
            part.unlink()
        for i in range(files):
            (tmp_path / "in" / f"note-{i:04d}.md").write_text(f"note {i}: une petite note")
        for _ in range(2):
            proc = start(job)
            wait_for_commits(proc, rng.randint(1, 4))
            time.sleep(rng.uniform(0, 0.3))
            proc.kill()
            finish(proc)
        rerun = run_cli("run", str(job))
        assert rerun.returncode == 0, rerun.stderr
    out = tmp_path / "out"
    manifest = json.loads((out / "_manifest.json").read_text())
    shards = [str(out / s["path"]) for s in manifest["shards"] if s["kind"] == "data"]
    ids = ds.dataset(shards, format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert len(ids) == len(set(ids)) == files
    assert set(ids) == {f"note-{i:04d}.md" for i in range(files)}
    assert manifest["totals"]["rows_embedded"] == files == manifest["totals"]["records_read"]


def test_a_commit_inside_a_record_then_sigkill_leaves_no_error_rows(tmp_path: Path) -> None:
    """The interrupted run commits the first chunks of a record (batches of 2 chunks, a shard each), not its
    mark; the rerun reads that record again and leaves its stored chunks out: each chunk once in data/,
    no duplicate_id error row, nothing failed. validate says the same before the rerun."""
    (tmp_path / "in").mkdir()
    sentence = "a sentence of words that fills forty. "
    lines = [json.dumps({"id": f"r{i}", "text": sentence * 5}) for i in range(3)]
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(lines) + "\n")
    with serve_process("--fake", "--dimensions", "8", "--latency-ms", "1500") as url:
        job = tmp_path / "job.yaml"
        job.write_text(
            f"source:\n  path: {tmp_path / 'in'}\n"
            f"embedding:\n  url: {url}\n  model: m\n  batch_size: 2\n  concurrency: 1\n"
            f"chunking:\n  max_chars: 50\n"
            f"sink:\n  path: {tmp_path / 'out'}\n  shard_rows: 2\n"
            "logging:\n  format: logfmt\n"
        )
        proc = start(job)
        wait_for_commits(proc, 1)
        proc.kill()  # the next batch is 1.5 s away: the first record is cut after its first 2 chunks
        proc.communicate(timeout=60)
        out = tmp_path / "out"
        manifest = json.loads((out / "_manifest.json").read_text())
        stored = ds.dataset([str(out / s["path"]) for s in manifest["shards"] if s["kind"] == "data"],
                            format="parquet").to_table(columns=["id"])["id"].to_pylist()
        assert stored == ["r0#0", "r0#1"]  # the commit fell inside record r0
        checked = run_cli("validate", str(job))
        assert checked.returncode == 0 and "duplicate_id" not in checked.stdout, checked.stdout
        rerun = run_cli("run", str(job))
        assert rerun.returncode == 0, rerun.stderr
        assert "failed=0" in rerun.stderr and "dataset_failed=0" in rerun.stderr, rerun.stderr
    manifest = json.loads((out / "_manifest.json").read_text())
    data = [str(out / s["path"]) for s in manifest["shards"] if s["kind"] == "data"]
    ids = ds.dataset(data, format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert sorted(ids) == sorted(f"r{i}#{c}" for i in range(3) for c in range(5))
    assert not [s for s in manifest["shards"] if s["kind"] == "errors"]
