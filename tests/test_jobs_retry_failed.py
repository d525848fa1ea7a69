"""pipeline retry-failed: errors shards re-embedded, each replaced in one commit."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from conftest import run_cli
from pipeline.jobs.retry_failed import retry_failed
from pipeline.serve.app import ServerOptions, running_server

from test_jobs_run import make_config, read_dataset, run, write_corpus

pytestmark = pytest.mark.anyio


async def test_retry_failed_moves_successes_to_data(tmp_path: Path) -> None:
    """retry-failed re-embeds api errors: successes move to data/, the rest stay, totals still add up."""
    (tmp_path / "in").mkdir()
    lines = write_corpus(tmp_path / "in" / "a.jsonl", 300)  # two unusable lines among them
    cfg = make_config(tmp_path, "http://placeholder", embedding={"max_attempts": 1, "batch_size": 10})
    # every request fails with 503 and attempts run out: all usable rows land in errors/
    first, _ = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8, fail_503=1.0))
    assert first.exit_code == 1 and first.totals["rows_failed"] == 302
    async with running_server(ServerOptions(port=0, fake=True, dimensions=8)) as server:
        retry_cfg = cfg.model_copy(update={"embedding": cfg.embedding.model_copy(update={"url": server.url})})
        with anyio.fail_after(30):
            result = await retry_failed(retry_cfg)
        stats = server.stats.snapshot()
    assert result.exit_code == 0  # the two unusable lines still fail, within the 1% allowed
    data, errors = read_dataset(tmp_path), read_dataset(tmp_path, "errors")
    assert data.num_rows == 300 and errors.num_rows == 2
    assert sorted(errors["error_type"].to_pylist()) == ["empty_text", "invalid_json"]
    assert result.totals["records_read"] == lines
    assert result.totals["rows_embedded"] == 300 and result.totals["rows_failed"] == 2
    assert result.totals["prompt_tokens"] == stats["prompt_tokens"]
    assert result.totals["requests"] == first.totals["requests"] + stats["requests"]
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    listed = {s["path"] for s in manifest["shards"]} | {f["path"] for f in manifest["state"]}
    on_disk = {f"{p.parent.name}/{p.name}" for p in (tmp_path / "out").glob("*/part-*")}
    assert listed == on_disk  # the replaced errors shards are gone from disk too


def test_retry_failed_without_a_dataset_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    """A sink.path that holds no dataset (a typo) exits 2 with one line, and leaves no empty dataset behind
    (it made one and reported a completed retry of nothing)."""
    job = tmp_path / "job.yaml"
    job.write_text(f"source:\n  path: {tmp_path / 'in'}\nembedding:\n  provider: local\n"
                   f"sink:\n  path: {tmp_path / 'typo'}\n")
    result = run_cli("retry-failed", str(job))
    assert result.returncode == 2
    assert result.stderr.strip() == f"pipeline: error: no dataset at {tmp_path / 'typo'} yet: `pipeline run` writes it"
    assert not (tmp_path / "typo").exists()
