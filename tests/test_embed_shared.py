"""pipeline.embed.shared: one rate budget for every worker in a real Redis, and pacing alone while it is away."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis
import structlog.testing

from pipeline.embed.shared import RECONNECT_S, SharedLimiter, store_keys
from conftest import ROOT, pipeline_cmd, redis_process, serve_process

ENDPOINT = "http://127.0.0.1:9/v1/embeddings"

pytestmark = pytest.mark.anyio


class Waits:
    """A sleep that records how long each request was told to wait, without waiting."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)


def limiters(url: str, n: int, model: str, rpm: float | None, tpm: float | None, sleep: Waits) -> list[SharedLimiter]:
    return [SharedLimiter(url, ENDPOINT, model, rpm, tpm, world_size=n, sleep=sleep) for _ in range(n)]


async def test_workers_share_one_pace(redis_url: str) -> None:
    """Three workers at 600 a minute together: the ninth request waits about 0.8 s, not 0.2 as each alone would."""
    waits = Waits()
    workers = limiters(redis_url, 3, "pace", 600, None, waits)
    with anyio.fail_after(10):
        for i in range(9):
            await workers[i % 3].reserve(10)
    assert len(waits.seen) == 8 and waits.seen == sorted(waits.seen)
    assert 0.6 < waits.seen[-1] <= 8 * 0.1 / 0.99
    for worker in workers:
        await worker.aclose()


async def test_usage_corrects_the_shared_token_cell(redis_url: str) -> None:
    """A request that cost three times its reservation delays every worker's next one by the difference."""
    waits = Waits()
    first, second = limiters(redis_url, 2, "usage", None, 60_000, waits)
    with anyio.fail_after(10):
        reservation = await first.reserve(1000)  # 1000 tokens at 1000 tokens/s (less the 1% margin)
        await first.settle(reservation, 3000)
        await second.reserve(1000)
    assert waits.seen and 2.5 < waits.seen[-1] <= 3.1
    for worker in (first, second):
        await worker.aclose()


async def test_a_429_pauses_every_worker(redis_url: str) -> None:
    """One worker told 429 with Retry-After 5 holds the others for those 5 seconds."""
    waits = Waits()
    refused, other = limiters(redis_url, 2, "pause", None, None, waits)
    with anyio.fail_after(10):
        await refused.backoff(5.0)
        await other.reserve(1)
    assert waits.seen and 4.5 < waits.seen[-1] <= 5.0
    for worker in (refused, other):
        await worker.aclose()


async def test_keys_hold_no_url_or_credentials(redis_url: str) -> None:
    """The store's keys are a hash of endpoint and model: no host, no key, and one per model."""
    endpoint = "https://proxyuser:SECRET-KEY-42@api.example.test/v1/embeddings"
    limiter = SharedLimiter(redis_url, endpoint, "keys-model", 600, 6000, sleep=Waits())
    with anyio.fail_after(10):
        await limiter.settle(await limiter.reserve(10), 12)
        client = aioredis.Redis.from_url(redis_url)
        keys = [key.decode() async for key in client.scan_iter("pipeline:rate:*")]
        await client.aclose()
    assert set(store_keys(endpoint, "keys-model")[:2]) <= set(keys)
    assert not any("SECRET" in k or "example" in k or "proxyuser" in k for k in keys)
    assert store_keys(endpoint, "keys-model") != store_keys(endpoint, "other-model")
    await limiter.aclose()


async def test_store_away_paces_alone_then_comes_back(clock) -> None:
    """Redis gone: the worker paces its 1/world_size share with one warning; back when Redis answers again."""
    with redis_process() as (url, proc):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        limiter = SharedLimiter(url, ENDPOINT, "away", 600, None, world_size=3, clock=clock, sleep=clock.asleep)
        with anyio.fail_after(20):
            await limiter.reserve(1)
            assert limiter.shared
            proc.kill()
            proc.wait()
            with structlog.testing.capture_logs() as logs:
                start = clock()
                for _ in range(21):
                    await limiter.reserve(1)
            assert not limiter.shared
            assert [e["event"] for e in logs] == ["rate_limit_store_unreachable"]
            assert 5.9 <= clock() - start <= 6.1  # 200 a minute alone: 20 intervals of 0.3 s
            assert "127.0.0.1" not in json.dumps(logs, default=str)
    with redis_process(port):
        with anyio.fail_after(20):
            clock.advance(RECONNECT_S)
            with structlog.testing.capture_logs() as logs:
                await limiter.reserve(1)
            assert limiter.shared and [e["event"] for e in logs] == ["rate_limit_store_back"]
        await limiter.aclose()


def write_job(tmp: Path, url: str, records: int, rank: int, world: int, **embedding: object) -> Path:
    """A corpus (written once) and the config of rank ``rank`` of ``world``."""
    corpus = tmp / "in.jsonl"
    if not corpus.exists():
        corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": f"record number {i}"}) + "\n" for i in range(records)))
    config = tmp / f"rank{rank}.yaml"
    emb = {"url": url, "model": "shared-test", "batch_size": 4, "concurrency": 4, **embedding}
    config.write_text(
        f"source:\n  path: {corpus}\n  split_bytes: 1024\n"  # ranks share the file
        "embedding:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in emb.items())
        + f"sink:\n  path: {tmp / 'out'}\n  shard_rows: 40\n"
        f"run:\n  rank: {rank}\n  world_size: {world}\n"
        "logging:\n  format: logfmt\n  level: info\n"
    )
    return config


def server_stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:  # loopback only
        return json.loads(response.read())


def manifest_rows(tmp: Path) -> tuple[int, int]:
    manifest = json.loads((tmp / "out" / "_manifest.json").read_text())
    totals = manifest["totals"]
    return totals["rows_embedded"], totals.get("rows_failed", 0)


def test_three_processes_share_one_budget(tmp_path: Path, redis_url: str) -> None:
    """Three `pipeline run` ranks, one budget of 20 requests a second through Redis: every row once, few 429s."""
    with serve_process("--fake", "--dimensions", "8", "--rpm", "20", "--limit-window-s", "1",
                       "--no-ratelimit-headers") as url:
        procs = [
            # 1140 a minute: 5% under the server's 20 a second, slack for three processes' jitter on a busy machine
            subprocess.Popen(pipeline_cmd("run", str(write_job(tmp_path, url, 240, rank, 3, requests_per_minute=1140,
                                                                rate_limit_store=redis_url))),
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for rank in range(3)
        ]
        errors = [proc.communicate(timeout=120)[1] for proc in procs]  # communicate closes the pipes
        assert [proc.returncode for proc in procs] == [0, 0, 0], errors
        stats = server_stats(url)
    assert manifest_rows(tmp_path) == (240, 0)
    # 60 requests or a few more (a rank's pieces may end in short batches); alone, each would pace 20 a second
    assert stats["admitted"] >= 60 and stats["rate_limited"] <= 3


def test_store_killed_mid_run_the_run_finishes_exact(tmp_path: Path) -> None:
    """Redis killed after the first commit: one warning, the run paces alone and ends with every row once."""
    with redis_process() as (store, redis_proc):
        with serve_process("--fake", "--dimensions", "8", "--rpm", "20", "--limit-window-s", "1") as url:
            config = write_job(tmp_path, url, 160, 0, 1, requests_per_minute=1200, rate_limit_store=store)
            proc = subprocess.Popen(pipeline_cmd("run", str(config)), cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            lines: list[str] = []
            assert proc.stderr is not None
            for line in proc.stderr:  # the first commit: the store is in use; then it goes
                lines.append(line)
                if "shard_committed" in line:
                    redis_proc.kill()
                    redis_proc.wait()
                    break
            lines += proc.stderr.readlines()
            proc.stderr.close()
            assert proc.wait(timeout=120) == 0, "".join(lines)
    assert manifest_rows(tmp_path) == (160, 0)
    assert sum("rate_limit_store_unreachable" in line for line in lines) == 1
    assert not any(store.split("//")[1].split("/")[0] in line for line in lines)
