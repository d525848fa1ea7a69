"""run.executor: ray on a local Ray cluster: every rank a task, one dataset, every record exactly once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pyarrow.dataset as ds
import pytest

from conftest import ROOT, pipeline_cmd, run_cli, serve_process
from pipeline.config import Config
from pipeline.errors import ConfigError, SinkError
from pipeline.jobs.executor import LocalExecutor, make_executor
from pipeline.serve.app import ServerOptions, running_server

FILES, PER_FILE = 4, 150


def write_corpus(root: Path, files: int = FILES, per_file: int = PER_FILE, bad: bool = True) -> tuple[set[str], int]:
    """``files`` JSON-lines files (two bad lines in each when ``bad``); (the good ids, lines written)."""
    (root / "in").mkdir(exist_ok=True)
    good: set[str] = set()
    lines_written = 0
    for f in range(files):
        lines = []
        for i in range(per_file):
            doc = f"f{f}-{i}"
            good.add(doc)
            lines.append(json.dumps({"id": doc, "text": f"file {f} record {i}: une phrase, ein Satz"}))
        if bad:
            lines.insert(per_file // 3, "{not json")
            lines.insert(per_file // 2, json.dumps({"id": f"empty-{f}", "text": ""}))
        (root / "in" / f"part-{f}.jsonl").write_text("\n".join(lines) + "\n")
        lines_written += len(lines)
    return good, lines_written


def job_data(root: Path, url: str, **run: Any) -> dict[str, Any]:
    """A four-rank job on the Ray executor; files are cut into small pieces so that every rank has work."""
    return {
        "source": {"path": str(root / "in"), "split_bytes": 2000},
        "embedding": {"url": url, "model": "m", "batch_size": 10, "concurrency": 2, "max_attempts": 10},
        "sink": {"path": str(root / "out"), "shard_rows": 50},
        "run": {"executor": "ray", "world_size": 4, "max_failed_fraction": 0.05, **run},
        "logging": {"format": "logfmt"},
    }


def write_job(root: Path, url: str, **run: Any) -> Path:
    path = root / "job.json"  # JSON is YAML
    path.write_text(json.dumps(job_data(root, url, **run)))
    return path


def dataset(root: Path, kind: str = "data") -> tuple[dict[str, Any], list[str]]:
    """The merged manifest and the ids of its ``kind`` shards."""
    out = root / "out"
    manifest = json.loads((out / "_manifest.json").read_text())
    files = [str(out / s["path"]) for s in manifest["shards"] if s["kind"] == kind]
    ids = ds.dataset(files, format="parquet").to_table(columns=["id"])["id"].to_pylist() if files else []
    return manifest, ids


def check_exact(root: Path, good: set[str]) -> dict[str, Any]:
    """Every good record once in data/, nothing else there; the manifest's shards are the files on disk."""
    manifest, ids = dataset(root)
    assert len(ids) == len(set(ids))
    assert set(ids) == good
    on_disk = {f"{p.parent.name}/{p.name}" for p in (root / "out").glob("*/part-*")}
    assert on_disk == {s["path"] for s in manifest["shards"]} | {f["path"] for f in manifest["state"]}
    return manifest


def start(job: Path, address: str) -> subprocess.Popen[str]:
    """``pipeline run`` as its own driver, on the session's cluster."""
    return subprocess.Popen(pipeline_cmd("run", str(job), "--set", f"run.ray_address={address}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def committed_ranks(proc: subprocess.Popen[str]) -> Any:
    """The rank of each data shard the run commits, as its log says, until the log ends."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if "event=shard_committed" in line and "path=data/" in line:
            yield int(line.rsplit("rank=", 1)[1].split()[0])


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


# ------------------------------------------------------------------ without a cluster


def test_make_executor_picks_ray() -> None:
    """``run.executor: ray`` selects the Ray executor; the default stays the one-rank local one."""
    data = job_data(Path("/tmp"), "http://127.0.0.1:1")
    assert type(make_executor(Config.model_validate(data))).__name__ == "RayExecutor"
    data["run"] = {}
    assert isinstance(make_executor(Config.model_validate(data)), LocalExecutor)


@pytest.mark.anyio
async def test_without_ray_installed_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where Ray is not installed, ``executor: ray`` is a ConfigError saying how to install it."""
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    cfg = Config.model_validate(job_data(tmp_path, "http://127.0.0.1:1"))
    with pytest.raises(ConfigError, match=r"pip install 'pipeline\[ray\]'"):
        await make_executor(cfg).run(cfg, handle_signals=False)


# ------------------------------------------------------------------ on the session's cluster


@pytest.mark.anyio
async def test_four_tasks_write_every_record_once(tmp_path: Path, ray_cluster: str) -> None:
    """Four ranks as Ray tasks against a flaky server: each good record once in data/, each bad one in errors/."""
    good, lines = write_corpus(tmp_path)
    options = ServerOptions(port=0, fake=True, dimensions=16, shuffle=True, fail_500=0.05, drop=0.02, seed=3)
    async with running_server(options) as server:
        cfg = Config.model_validate(job_data(tmp_path, server.url))
        with anyio.fail_after(300):
            result = await make_executor(cfg).run(cfg, handle_signals=False)
        stats = server.stats.snapshot()
    assert (result.status, result.exit_code) == ("completed", 0), result.message
    manifest = check_exact(tmp_path, good)
    _, errors = dataset(tmp_path, "errors")
    assert len(errors) == len(set(errors)) == 2 * FILES
    assert sorted(p.name for p in (tmp_path / "out" / "_manifests").iterdir()) == [f"{r:05d}.json" for r in range(4)]
    assert {s["path"].split("-")[1] for s in manifest["shards"]} == {f"{r:05d}" for r in range(4)}  # every rank wrote
    totals = result.totals
    assert totals == manifest["totals"]
    assert totals["records_read"] == lines and totals["rows_failed"] == 2 * FILES
    assert totals["rows_embedded"] == len(good)
    assert totals["prompt_tokens"] == stats["prompt_tokens"]
    assert stats["duplicate_inputs_embedded"] == 0


def test_worker_killed_mid_task_is_retried_and_exact(tmp_path: Path, ray_cluster: str) -> None:
    """SIGKILL to the Ray worker running a rank: Ray runs the task again, it takes the rank's lease over
    at once and resumes from its last commit; the run ends 0 with every record exactly once."""
    good, _ = write_corpus(tmp_path, bad=False)
    with serve_process("--fake", "--dimensions", "8", "--latency-ms", "30") as url:
        proc = start(write_job(tmp_path, url), ray_cluster)
        killed = None
        for rank in committed_ranks(proc):
            lease = tmp_path / "out" / "_locks" / f"{rank:05d}.json"
            try:
                pid = json.loads(lease.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ValueError, ProcessLookupError):
                continue  # that rank has just finished: wait for another one's commit
            killed = rank
            break
        code, err = finish(proc)
    assert killed is not None, "no rank was still running to be killed"
    assert code == 0, err[-3000:]
    check_exact(tmp_path, good)


def test_signals_drain_every_task_and_sigkill_loses_nothing(tmp_path: Path, ray_cluster: str) -> None:
    """SIGTERM to the driver: every task drains and commits, exit 143, no row twice; a SIGKILLed
    driver (its tasks die with it) leaves a dataset that a rerun completes exactly."""
    good, _ = write_corpus(tmp_path, bad=False)
    with serve_process("--fake", "--dimensions", "8", "--latency-ms", "30") as url:
        job = write_job(tmp_path, url)
        proc = start(job, ray_cluster)
        next(committed_ranks(proc))
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        assert code == 143, err[-3000:]
        assert "event=shutdown_requested signal=SIGTERM" in err
        _, ids = dataset(tmp_path)
        assert len(ids) == len(set(ids)) and set(ids) < good

        proc = start(job, ray_cluster)
        next(committed_ranks(proc))
        proc.kill()
        finish(proc)

        proc = start(job, ray_cluster)
        code, err = finish(proc)
    assert code == 0, err[-3000:]
    check_exact(tmp_path, good)


@pytest.mark.anyio
async def test_tasks_share_one_rate_budget(tmp_path: Path, ray_cluster: str) -> None:
    """Two tasks at a time, one requests_per_minute for them all: the server's limit is kept,
    at most 3% of the requests are answered 429 (each task alone at the full budget would double it)."""
    write_corpus(tmp_path, per_file=100, bad=False)
    # as scripts/bench.py's rate scenarios: 10 requests in any sliding second, no Retry-After
    options = ServerOptions(port=0, fake=True, dimensions=8, rpm=10, limit_window_s=1.0, retry_after=False)
    async with running_server(options) as server:
        data = job_data(tmp_path, server.url)
        data["embedding"].update(batch_size=4, requests_per_minute=600)
        cfg = Config.model_validate(data)
        with anyio.fail_after(300):
            result = await make_executor(cfg).run(cfg, handle_signals=False)
        stats = server.stats.snapshot()
    assert result.exit_code == 0, result.message
    assert stats["requests"] >= 100
    assert stats["responses"].get("429", 0) <= 0.03 * stats["requests"], stats


@pytest.mark.anyio
async def test_fresh_with_several_ranks_is_refused_before_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--fresh`` with world_size > 1 is the same one-line SinkError as with dynos, before Ray is touched."""
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray must not even be imported
    cfg = Config.model_validate(job_data(tmp_path, "http://127.0.0.1:1"))
    with pytest.raises(SinkError, match="world_size 1 only"):
        await make_executor(cfg).run(cfg, fresh=True, handle_signals=False)


@pytest.mark.parametrize("named_by", ["run.ray_address", "RAY_ADDRESS"])
def test_unreachable_cluster_is_one_line_exit_2(tmp_path: Path, named_by: str) -> None:
    """An address where no cluster answers ends at once with exit 2 and one line naming where it was set."""
    pytest.importorskip("ray", reason="run.executor: ray needs the ray extra: pip install '.[ray]'")
    with socket.socket() as unused:  # a loopback port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    job = write_job(tmp_path, "http://127.0.0.1:1")
    address = f"127.0.0.1:{port}"
    if named_by == "RAY_ADDRESS":
        done = run_cli("run", str(job), env={"RAY_ADDRESS": address}, timeout=60)
    else:
        done = run_cli("run", str(job), "--set", f"run.ray_address={address}", timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"pipeline: error: {named_by} {address}: no Ray cluster answers there (Connection refused)"
    )
    assert "Traceback" not in done.stderr


@pytest.mark.anyio
async def test_a_users_error_in_every_rank_is_one_line(tmp_path: Path, ray_cluster: str) -> None:
    """A source that is not there fails every rank alike: the job ends 2 with one line naming the ranks."""
    cfg = Config.model_validate(job_data(tmp_path, "http://127.0.0.1:1"))  # tmp_path/in does not exist
    with anyio.fail_after(300):
        result = await make_executor(cfg).run(cfg, handle_signals=False)
    assert (result.status, result.exit_code) == ("failed", 2)
    assert result.message is not None and result.message.startswith("ranks 0, 1, 2, 3: ")
    assert str(tmp_path / "in") in result.message and "\n" not in result.message
