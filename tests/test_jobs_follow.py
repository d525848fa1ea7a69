"""Real processes following a changing source: watch mode, and SIGKILL during a replacement (pipeline.jobs)."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import urllib.request
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from conftest import run_cli, serve_process
from state_helpers import read_state
from test_signals import RECORDS, finish, start, wait_for_commits, write_job


def expected_ids(tmp_path: Path) -> dict[str, str]:
    """id → text of every record in the source now."""
    out = {}
    for path in sorted((tmp_path / "in").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            out[record["id"]] = record["text"]
    return out


def check_follows(tmp_path: Path) -> None:
    """The dataset holds exactly the source's records, every id once, by the manifest and by a glob;
    the totals match, and no file lies about that the manifest does not list."""
    out = tmp_path / "out"
    manifest = json.loads((out / "_manifest.json").read_text())
    files = [str(out / s["path"]) for s in manifest["shards"] if s["kind"] == "data"]
    want = expected_ids(tmp_path)
    for table in (ds.dataset(files, format="parquet").to_table(columns=["id", "text"]),
                  ds.dataset(str(out / "data"), format="parquet").to_table(columns=["id", "text"])):
        ids = table["id"].to_pylist()
        assert len(ids) == len(set(ids))
        assert dict(zip(ids, table["text"].to_pylist())) == want
    assert manifest["totals"]["rows_embedded"] == len(want) == manifest["totals"]["records_read"]
    on_disk = {f"{p.parent.name}/{p.name}" for p in out.glob("*/part-*")}
    assert on_disk == {s["path"] for s in manifest["shards"]} | {f["path"] for f in manifest["state"]}


def edit(tmp_path: Path) -> None:
    """Edit every 7th record of part-1 (and drop its last 10), and delete part-2."""
    path = tmp_path / "in" / "part-1.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:-10]))
    edit_every_7th(path)
    (tmp_path / "in" / "part-2.jsonl").unlink()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_during_a_replacement_then_rerun_is_exact(tmp_path: Path, seed: int) -> None:
    """SIGKILL at some point of a rerun that replaces an edited file and removes a deleted one;
    the run after it leaves exactly the current records."""
    rng = random.Random(seed)
    with serve_process("--fake", "--dimensions", "8", "--latency-ms", "20") as url:
        job = write_job(tmp_path, url, max_removed_fraction=1)
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
    check_follows(tmp_path)


def test_watch_follows_changes_and_deletions(tmp_path: Path) -> None:
    """A watcher replaces an edited file's rows and removes a deleted file's, then stops on SIGTERM."""
    with serve_process("--fake", "--dimensions", "8") as url:
        job = write_job(tmp_path, url, watch="true", poll_interval_s=0.2, max_removed_fraction=1)
        proc = start(job)
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        assert proc.stderr is not None
        wait_for_commits(proc, 1)
        for line in proc.stderr:  # the files present at start are all committed
            manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
            if manifest["totals"]["rows_embedded"] == RECORDS:
                break
        edit(tmp_path)
        for line in proc.stderr:  # until the dataset holds the source as it is now
            if "event=shard_committed" in line:
                manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
                if manifest["totals"]["rows_embedded"] == len(expected_ids(tmp_path)) and \
                        str(tmp_path / "in" / "part-2.jsonl") not in read_state(tmp_path / "out").files:
                    break
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        watchdog.cancel()
    assert code == 143, err
    check_follows(tmp_path)


def edit_every_7th(path: Path) -> int:
    """Edit every 7th record of the JSONL file at ``path`` (its mtime moves on); how many were edited."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for i, record in enumerate(records):
        if i % 7 == 0:
            record["text"] += " (edited)"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    return len(range(0, len(records), 7))


def inputs_embedded(url: str, reset: bool = False) -> int:
    """What ``pipeline serve`` at ``url`` embedded so far (then zero its counters when ``reset``)."""
    stats = json.loads(urllib.request.urlopen(f"{url}/stats").read())
    if reset:
        urllib.request.urlopen(urllib.request.Request(f"{url}/stats/reset", method="POST")).read()
    return int(stats["inputs_embedded"])


def sigint_mid_replacement_then_rerun(tmp_path: Path, url: str, job: Path) -> None:
    """Run ``job``, edit every 7th record of part-1, Ctrl-C the rerun once its old rows left with the first
    new ones; the run after it sends only the edited records that are left (and ``pipeline validate``, in
    between, says as much)."""
    assert run_cli("run", str(job)).returncode == 0
    edited = edit_every_7th(tmp_path / "in" / "part-1.jsonl")
    inputs_embedded(url, reset=True)
    proc = start(job)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    assert proc.stderr is not None
    for line in proc.stderr:
        if "event=file_changed" in line:
            break
    wait_for_commits(proc, 2)  # the old rows left with the first new ones
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc)
    watchdog.cancel()
    assert code == 130, err
    first = inputs_embedded(url, reset=True)
    assert first < edited  # cut short: some of the file is left for the rerun
    shown = run_cli("validate", str(job)).stdout  # says what the rerun pays, as the rerun then does
    reads = int(shown.split("of them (2 unchanged, not opened): ")[1].split()[0].replace(",", ""))
    reusable = int(shown.split("reusable from the sink itself (changed documents' unchanged chunks): ")[1]
                   .split()[0].replace(",", ""))
    assert 0 < reads - reusable <= edited - first, shown
    again = run_cli("run", str(job))
    assert again.returncode == 0, again.stderr
    assert "resumed=1" in again.stderr
    assert inputs_embedded(url) <= edited - first


def test_sigint_during_a_replacement_then_rerun_pays_only_for_changed_chunks(tmp_path: Path) -> None:
    """Ctrl-C while an edited file's rows are being replaced; the rerun still sends only its edited records
    (the shards its old rows were retired from are kept until the file is whole again)."""
    with serve_process("--fake", "--dimensions", "8", "--latency-ms", "150") as url:
        sigint_mid_replacement_then_rerun(tmp_path, url, write_job(tmp_path, url))
    check_follows(tmp_path)
