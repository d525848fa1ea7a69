"""The whole job against a real `pipeline serve` on loopback: every record lands once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from pipeline.config import Config
from pipeline.dataset.shards import open_shard
from state_helpers import read_state
from pipeline.jobs.run import run_job
from pipeline.serve.app import ServerOptions, running_server
from pipeline.serve.models import FakeModel

pytestmark = pytest.mark.anyio


def write_corpus(path: Path, n: int, *, bad: bool = True, long_every: int = 0, prefix: str = "doc") -> int:
    """n JSON lines (plus two bad ones); returns how many lines were written."""
    lines = []
    for i in range(n):
        text = f"Document {prefix} {i}: une phrase, ein Satz, 一つの文。"
        if long_every and i % long_every == 0:
            text = " ".join([f"Paragraph {i} sentence {k}." for k in range(300)])
        lines.append(json.dumps({"id": f"{prefix}-{i}", "text": text, "lang": "xx"}, ensure_ascii=False))
    if bad:
        lines.insert(n // 2, "{not json")
        lines.insert(n // 3, json.dumps({"id": "empty", "text": ""}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def make_config(tmp_path: Path, url: str, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "source": {"path": str(tmp_path / "in"), "metadata_fields": ["lang"]},
        "embedding": {"url": url, "model": "test-model", "concurrency": 4, "max_attempts": 10},
        "sink": {"path": str(tmp_path / "out"), "shard_rows": 200},
        "logging": {"format": "logfmt"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Config.model_validate(data)


def read_dataset(tmp_path: Path, kind: str = "data") -> pa.Table:
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    files = [str(tmp_path / "out" / s["path"]) for s in manifest["shards"] if s["kind"] == kind]
    return ds.dataset(files, format="parquet").to_table() if files else pa.table({})


async def run(cfg: Config, options: ServerOptions) -> tuple[Any, dict]:
    async with running_server(options) as server:
        with anyio.fail_after(60):
            result = await run_job(cfg.model_copy(update={"embedding": cfg.embedding.model_copy(
                update={"url": server.url})}), handle_signals=False)
        return result, server.stats.snapshot()


async def test_every_record_lands_exactly_once(tmp_path: Path) -> None:
    """Good records are in data/, bad ones in errors/, each exactly once, and totals add up."""
    (tmp_path / "in").mkdir()
    lines = write_corpus(tmp_path / "in" / "a.jsonl", 500, long_every=50)
    write_corpus(tmp_path / "in" / "b.jsonl", 120, bad=False, prefix="b")
    cfg = make_config(tmp_path, "http://placeholder")
    result, stats = await run(cfg, ServerOptions(port=0, fake=True, dimensions=32, shuffle=True))
    assert result.exit_code == 0 and result.status == "completed"
    data, errors = read_dataset(tmp_path), read_dataset(tmp_path, "errors")
    ids = data["id"].to_pylist()
    assert len(ids) == len(set(ids))
    doc_ids = set(data["doc_id"].to_pylist())
    assert len(doc_ids) == 620 - 0  # 500 + 120 good records
    assert errors.num_rows == 2
    assert sorted(errors["error_type"].to_pylist()) == ["empty_text", "invalid_json"]
    assert errors["location"].to_pylist() and all(x > 0 for x in errors["location"].to_pylist())
    split = [i for i in ids if i.startswith("doc-0#")]
    assert len(split) > 1  # the long document was cut into chunks
    assert all(len(t) <= 2048 for t in data["text"].to_pylist())
    totals = result.totals
    assert totals["records_read"] == lines + 120
    assert totals["rows_embedded"] == data.num_rows and totals["rows_failed"] == 2
    # token usage adds up to what the server reported
    assert totals["prompt_tokens"] == stats["prompt_tokens"] and totals["requests"] == stats["requests"]
    assert stats["duplicate_inputs_embedded"] == 0


async def test_vectors_belong_to_their_text(tmp_path: Path) -> None:
    """With the server shuffling data, each row's vector is the one its text gets alone."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 200, bad=False)
    cfg = make_config(tmp_path, "http://placeholder")
    await run(cfg, ServerOptions(port=0, fake=True, dimensions=16, shuffle=True, seed=7))
    from pipeline.serve.models import FakeModel

    data = read_dataset(tmp_path)
    texts = data["text"].to_pylist()
    expected = await FakeModel(16).embed(texts)
    got = data["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, 16)
    assert (got == expected).all()


@pytest.mark.parametrize("etype,arrow_type", [
    ("float", pa.list_(pa.float32(), 64)), ("int8", pa.list_(pa.int8(), 64)),
    ("uint8", pa.list_(pa.uint8(), 64)), ("binary", pa.list_(pa.int8(), 8)),
    ("ubinary", pa.list_(pa.uint8(), 8)),
])
@pytest.mark.parametrize("encoding", ["raw", "base64"])
async def test_embedding_types_reach_arrow(tmp_path: Path, etype: str, arrow_type: pa.DataType, encoding: str) -> None:
    """Every embedding type and encoding lands as the right fixed_size_list type."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 30, bad=False)
    cfg = make_config(tmp_path, "http://placeholder", embedding={"embedding_type": etype, "encoding_format": encoding})
    await run(cfg, ServerOptions(port=0, fake=True, dimensions=64))
    schema = pq.read_schema(next((tmp_path / "out" / "data").glob("*.parquet")))
    assert schema.field("embedding").type == arrow_type
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["dimensions"] == 64 and manifest["embedding_type"] == etype


async def test_the_model_that_answered_is_recorded(tmp_path: Path) -> None:
    """The manifest records the model the server reported in its answers."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 20, bad=False)
    result, _ = await run(make_config(tmp_path, "http://placeholder"), ServerOptions(port=0, fake=True, dimensions=8))
    assert result.exit_code == 0
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["reported_model"] == "test-model" and manifest["model"] == "test-model"


async def test_shard_usage_is_per_shard(tmp_path: Path) -> None:
    """Each shard's metadata carries the usage of the responses in it, and they sum to the totals."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 1000, bad=False)
    cfg = make_config(tmp_path, "http://placeholder", sink={"shard_rows": 300})
    result, stats = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    data_shards = [s for s in manifest["shards"] if s["kind"] == "data"]
    assert len(data_shards) == 4 and all(s["rows"] <= 300 for s in data_shards)
    for shard in data_shards:
        meta = json.loads(pq.read_schema(tmp_path / "out" / shard["path"]).metadata[b"pipeline"])
        assert meta["prompt_tokens"] == shard["prompt_tokens"] > 0
    assert sum(s["prompt_tokens"] for s in data_shards) == stats["prompt_tokens"]


def shard_rows_of(path: Path) -> int:
    """The rows a shard file holds, as its own footer says (Parquet or Arrow IPC)."""
    with open_shard(fsspec.filesystem("file"), str(path)) as shard:
        return shard.num_rows


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
@pytest.mark.parametrize("shard_rows", [40, 100])
async def test_no_shard_holds_more_than_shard_rows(tmp_path: Path, shard_rows: int, fmt: str) -> None:
    """With batch_size 96, no data or errors shard passes shard_rows (requests shrink to fit, a run of
    bad lines is cut too), each file holds the rows its entry says, each shard's tokens are exactly
    those of its own rows (whole responses), and every record lands once."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 1000, long_every=50)
    (tmp_path / "in" / "b.jsonl").write_text("{not json\n" * 130)
    cfg = make_config(tmp_path, "http://placeholder", embedding={"batch_size": 96},
                      sink={"shard_rows": shard_rows, "format": fmt}, run={"max_failed_fraction": 1})
    with capture_logs() as logs:
        result, stats = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    assert result.exit_code == 0
    capped = [e for e in logs if e["event"] == "batch_size_capped"]
    assert capped == ([{"event": "batch_size_capped", "log_level": "warning", "batch_size": 40, "configured": 96,
                        "shard_rows": 40, "reason": capped[0]["reason"]}] if shard_rows == 40 else [])
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    for entry in manifest["shards"]:
        assert 0 < entry["rows"] <= shard_rows
        assert shard_rows_of(tmp_path / "out" / entry["path"]) == entry["rows"]
    files = {kind: [str(tmp_path / "out" / s["path"]) for s in manifest["shards"] if s["kind"] == kind]
             for kind in ("data", "errors")}
    data = ds.dataset(files["data"], format=fmt.replace("arrow", "ipc")).to_table()
    ids = data["id"].to_pylist()
    assert len(ids) == len(set(ids)) and len({i.split("#")[0] for i in ids}) == 1000
    errors = ds.dataset(files["errors"], format=fmt.replace("arrow", "ipc")).to_table()
    assert errors.num_rows == 132 and len(set(errors["id"].to_pylist())) == 132
    count = FakeModel(8).count_tokens
    for path in files["data"]:
        shard = ds.dataset(path, format=fmt.replace("arrow", "ipc")).to_table()
        entry = next(s for s in manifest["shards"] if str(tmp_path / "out" / s["path"]) == path)
        assert entry["prompt_tokens"] == sum(count(shard["text"].to_pylist()))
    assert sum(s["requests"] for s in manifest["shards"]) == stats["requests"]
    assert stats["inputs_embedded"] == len(ids) and stats["duplicate_inputs_embedded"] == 0


async def test_rerun_resumes_without_duplicates(tmp_path: Path) -> None:
    """A second run of a finished config embeds nothing and duplicates nothing."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 300)
    cfg = make_config(tmp_path, "http://placeholder")
    await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    result, stats = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    assert stats["requests"] == 0
    assert read_dataset(tmp_path).num_rows == 300


async def test_too_many_failures_exit_1(tmp_path: Path) -> None:
    """More failed rows than run.max_failed_fraction allows gives exit code 1."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 20)  # 2 bad of 22
    cfg = make_config(tmp_path, "http://placeholder", run={"max_failed_fraction": 0.05})
    result, _ = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    assert result.exit_code == 1 and "max_failed_fraction" in result.message


async def test_fault_storm_loses_nothing(tmp_path: Path) -> None:
    """Under 429s, 5xx, resets, hangs, malformed and short bodies and poisoned inputs,
    every record ends exactly once in data/ or errors/, and only the poisoned ones fail."""
    from pipeline.embed.http import HttpEmbedder

    (tmp_path / "in").mkdir()
    lines = [json.dumps({"id": f"r{i}", "text": f"record {i} {'POISON' if i % 97 == 5 else 'fine'}"})
             for i in range(600)]
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(lines) + "\n")
    poisoned = {f"r{i}" for i in range(600) if i % 97 == 5}

    async def quick_sleep(seconds: float) -> None:
        await anyio.sleep(seconds / 50)

    options = ServerOptions(
        port=0, fake=True, dimensions=8, seed=11, shuffle=True, fail_429=0.1, fail_500=0.05,
        fail_503=0.05, drop=0.05, hang=0.03, hang_s=30, malformed=0.05, short=0.05,
        poison=("POISON",), fault_retry_after=0.01,
    )
    async with running_server(options) as server:
        # timeout_s bounds the whole request: a slow answer on a loaded machine that the client gives up
        # on was still counted by the server, so it must be well above a normal answer's time
        cfg = make_config(tmp_path, server.url, embedding={
            "batch_size": 16, "max_attempts": 25, "timeout_s": 3, "concurrency": 6})
        embedder = HttpEmbedder(cfg.embedding, api_key=None, sleep=quick_sleep)
        with anyio.fail_after(60):
            result = await run_job(cfg, embedder=embedder, handle_signals=False)
        stats = server.stats.snapshot()
    data, errors = read_dataset(tmp_path), read_dataset(tmp_path, "errors")
    assert sorted(data["id"].to_pylist() + errors["id"].to_pylist()) == sorted(f"r{i}" for i in range(600))
    assert set(errors["id"].to_pylist()) == poisoned
    assert set(errors["status"].to_pylist()) == {400}
    assert result.totals["retries"] > 0
    assert result.totals["requests"] == stats["requests"]  # every attempt is in the accounting
    assert result.totals["prompt_tokens"] == stats["prompt_tokens"]


async def test_world_size_3_covers_everything_once(tmp_path: Path) -> None:
    """Three workers (rank 0..2 of 3) together embed every record exactly once; _manifest.json merges them."""
    from pipeline.sources.listing import assign, open_source

    (tmp_path / "in").mkdir()
    total, n = 0, 0
    cfg = make_config(tmp_path, "http://placeholder")
    # which rank owns a file hashes its absolute path: add files until each rank has one
    while n < 10 or not all(assign(*open_source(cfg.source), r, 3, 1 << 30) for r in range(3)):
        total += write_corpus(tmp_path / "in" / f"f{n}.jsonl", 40, bad=False, prefix=f"f{n}")
        n += 1
    async with running_server(ServerOptions(port=0, fake=True, dimensions=8)) as server:
        async with anyio.create_task_group() as tg:
            for rank in range(3):
                cfg = make_config(tmp_path, server.url, run={"rank": rank, "world_size": 3})
                tg.start_soon(lambda c=cfg: run_job(c, handle_signals=False))
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert sorted(p.name for p in (tmp_path / "out" / "_manifests").iterdir()) == [
        "00000.json", "00001.json", "00002.json"]
    ids = read_dataset(tmp_path)["id"].to_pylist()
    assert len(ids) == len(set(ids)) == total == manifest["totals"]["rows_embedded"]
    assert {r["rank"] for r in manifest["runs"]} == {0, 1, 2}
    ranks = {s["path"][len("data/part-"):][:5] for s in manifest["shards"]}
    assert ranks == {"00000", "00001", "00002"}  # the files were spread over all three


async def test_max_tokens_stops_before_the_budget(tmp_path: Path) -> None:
    """run.max_tokens stops the run, committed, before spending more; a rerun with more budget finishes once."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 2000, bad=False)
    cfg = make_config(tmp_path, "http://placeholder", run={"max_tokens": 9000},
                      embedding={"batch_size": 50, "concurrency": 4})
    result, stats = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    assert result.status == "budget_exhausted" and result.exit_code == 0
    assert "max_tokens" in result.message
    assert 0 < stats["total_tokens"] <= 9000
    assert result.totals["total_tokens"] <= 9000
    partial = read_dataset(tmp_path).num_rows
    assert 0 < partial < 2000
    bigger = cfg.model_copy(update={"run": cfg.run.model_copy(update={"max_tokens": 10**9})})
    again, _ = await run(bigger, ServerOptions(port=0, fake=True, dimensions=8))
    assert again.status == "completed"
    ids = read_dataset(tmp_path)["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 2000


async def test_reindex_reuses_unchanged_chunks(tmp_path: Path) -> None:
    """Re-indexing after editing 10% of the records sends only the edited chunks, bills about 10%
    of the tokens, and gives the same dataset as embedding everything again."""
    (tmp_path / "in").mkdir()
    docs = {f"d{i}": f"document {i}: " + " ".join(f"w{i}-{k}" for k in range(20)) for i in range(1000)}
    source = tmp_path / "in" / "a.jsonl"
    source.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    first = make_config(tmp_path, "http://placeholder", sink={"path": str(tmp_path / "v1")})
    _, full = await run(first, ServerOptions(port=0, fake=True, dimensions=16))
    edited = {k: (v + " (edited)" if int(k[1:]) % 10 == 3 else v) for k, v in docs.items()}
    source.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in edited.items()))
    second = make_config(tmp_path, "http://placeholder", sink={"path": str(tmp_path / "v2")},
                         run={"reuse_from": str(tmp_path / "v1")})
    result, stats = await run(second, ServerOptions(port=0, fake=True, dimensions=16))
    assert stats["inputs_embedded"] == 100  # only the edited records went to the API
    assert result.totals["rows_reused"] == 900 and result.totals["rows_embedded"] == 1000
    assert 0.08 < stats["total_tokens"] / full["total_tokens"] < 0.13
    again = make_config(tmp_path, "http://placeholder", sink={"path": str(tmp_path / "v3")})
    await run(again, ServerOptions(port=0, fake=True, dimensions=16))

    def table(name: str) -> pa.Table:
        files = sorted((tmp_path / name / "data").glob("*.parquet"))
        return ds.dataset([str(f) for f in files], format="parquet").to_table().sort_by("id")

    reindexed, reembedded = table("v2"), table("v3")
    for column in ("id", "text", "content_hash", "embedding"):
        assert reindexed[column].equals(reembedded[column]), column


async def test_four_workers_share_one_big_file(tmp_path: Path) -> None:
    """With world_size 4, one large jsonl file (byte ranges) and one parquet file (row groups)
    are split, and the workers together embed every record exactly once; a rerun adds nothing."""
    (tmp_path / "in").mkdir()
    lines = [json.dumps({"id": f"j{i}", "text": f"jsonl record {i} " + "é" * (i % 13)}) for i in range(3000)]
    (tmp_path / "in" / "big.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    table = pa.table({"id": [f"p{i}" for i in range(2000)], "text": [f"parquet row {i}" for i in range(2000)]})
    pq.write_table(table, tmp_path / "in" / "big.parquet", row_group_size=100)
    async with running_server(ServerOptions(port=0, fake=True, dimensions=8)) as server:
        for _ in range(2):  # the second pass must find everything done
            async with anyio.create_task_group() as tg:
                for rank in range(4):
                    cfg = make_config(tmp_path, server.url, source={"split_bytes": 8192, "metadata_fields": []},
                                      run={"rank": rank, "world_size": 4})
                    tg.start_soon(lambda c=cfg: run_job(c, handle_signals=False))
        stats = server.stats.snapshot()
    ids = read_dataset(tmp_path)["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 5000
    assert stats["duplicate_inputs_embedded"] == 0
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    pieces = [k for k in read_state(tmp_path / "out").progress if "#" in k]
    assert len(pieces) > 8  # both files were cut into pieces
    ranks = {s["path"][len("data/part-"):][:5] for s in manifest["shards"]}
    assert ranks == {"00000", "00001", "00002", "00003"}


async def test_disk_full_mid_run_is_exit_4_with_earlier_commits_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit failing mid-run (disk full) stops with exit 4, not 2 (reserved for 'nothing started'); earlier shards stay."""
    from pipeline.dataset import shard_writer

    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 1000, bad=False)
    publish = shard_writer.ShardWriter.publish
    calls = 0

    def fill_up(self: Any, entry: dict, retry: Any) -> None:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError(28, "No space left on device")
        publish(self, entry, retry)

    monkeypatch.setattr(shard_writer.ShardWriter, "publish", fill_up)
    cfg = make_config(tmp_path, "http://placeholder", sink={"shard_rows": 100})
    result, _ = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    assert result.exit_code == 4 and result.status == "failed"
    assert "No space left on device" in (result.message or "")
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert len(manifest["shards"]) == 2 and manifest["runs"][-1]["status"] == "failed"
    assert read_dataset(tmp_path).num_rows == sum(s["rows"] for s in manifest["shards"]) == result.totals["rows_embedded"]


async def test_a_drain_sends_no_new_batch(tmp_path: Path) -> None:
    """After a stop is requested only requests already in flight finish: read-ahead is not embedded."""
    import signal

    from pipeline.jobs.run import Job

    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 3000, bad=False)
    cfg = make_config(tmp_path, "http://placeholder", embedding={"batch_size": 10, "concurrency": 2},
                      sink={"shard_rows": 20})
    async with running_server(ServerOptions(port=0, fake=True, dimensions=8, latency_ms=200)) as server:
        cfg = cfg.model_copy(update={"embedding": cfg.embedding.model_copy(update={"url": server.url})})
        job = Job(cfg, handle_signals=False)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                outcome: list[Any] = []

                async def run_it() -> None:
                    outcome.append(await job.run())

                tg.start_soon(run_it)
                while job.progress.shards < 1:  # wait for a condition: the first commit
                    await anyio.sleep(0.05)
                sent_before = server.stats.snapshot()["requests"]
                job.shutdown.request(signal.SIGTERM)
        sent_after = server.stats.snapshot()["requests"]
    result = outcome[0]
    assert result.exit_code == 143 and result.status == "interrupted"
    # the window holds up to 4 × concurrency batches read ahead; only the 2 in flight may still be sent
    assert sent_after - sent_before <= 2
    rows = read_dataset(tmp_path).num_rows
    assert rows == result.totals["rows_embedded"] and rows < 3000


async def test_a_sink_inside_the_source_is_not_read_back(tmp_path: Path) -> None:
    """With sink.path under source.path, reruns never embed the dataset's own shards."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 50, bad=False)
    cfg = make_config(tmp_path, "http://placeholder", source={"path": str(tmp_path / "in"), "format": "auto"},
                      sink={"path": str(tmp_path / "in" / "embedded")})
    for _ in range(2):
        result, _ = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
        assert result.exit_code == 0
    manifest = json.loads((tmp_path / "in" / "embedded" / "_manifest.json").read_text())
    assert manifest["totals"]["rows_embedded"] == 50 == manifest["totals"]["records_read"]


async def test_a_deleted_shard_is_rebuilt_by_the_next_run(tmp_path: Path) -> None:
    """Shards removed or cut short under the dataset (a lifecycle rule, rm, a partial copy) are noticed and their rows embedded again, once."""
    (tmp_path / "in").mkdir()
    lines = write_corpus(tmp_path / "in" / "a.jsonl", 1000)
    write_corpus(tmp_path / "in" / "b.jsonl", 500, prefix="other")
    cfg = make_config(tmp_path, "http://placeholder", embedding={"batch_size": 50}, sink={"shard_rows": 100})
    first, _ = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    assert first.exit_code == 0
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    victim, cut = [s["path"] for s in manifest["shards"] if s["kind"] == "data"][4:6]
    (tmp_path / "out" / victim).unlink()
    (tmp_path / "out" / cut).write_bytes((tmp_path / "out" / cut).read_bytes()[:100])  # a copy cut short
    second, _ = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    assert second.exit_code == 0
    data = read_dataset(tmp_path)
    ids = data["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 1500
    assert second.totals["rows_embedded"] == 1500 and second.totals["records_read"] == lines + 502
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    listed = {s["path"] for s in manifest["shards"]} | {f["path"] for f in manifest["state"]}
    on_disk = {f"{p.parent.name}/{p.name}" for p in (tmp_path / "out").glob("*/part-*")}
    assert listed == on_disk


async def test_duplicate_ids_across_files_never_give_two_rows(tmp_path: Path) -> None:
    """Two files holding id 7 (and a rerun after a third arrives): one row per id, the later ones in errors/."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"id": "7", "text": "first seven"}\n{"id": "8", "text": "eight"}\n')
    (tmp_path / "in" / "b.jsonl").write_text('{"id": "7", "text": "second seven"}\n')
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []}, run={"max_failed_fraction": 1})
    first, _ = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    assert first.exit_code == 0
    (tmp_path / "in" / "c.jsonl").write_text('{"id": "8", "text": "another eight"}\n{"id": "9", "text": "nine"}\n')
    second, _ = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    assert second.exit_code == 0
    data, errors = read_dataset(tmp_path), read_dataset(tmp_path, "errors")
    assert sorted(data["id"].to_pylist()) == ["7", "8", "9"]
    assert data.filter(pa.compute.equal(data["id"], "7"))["text"].to_pylist() == ["first seven"]
    assert sorted(errors["error_type"].to_pylist()) == ["duplicate_id", "duplicate_id"]
    assert second.totals["records_read"] == 5 == second.totals["rows_embedded"] + second.totals["rows_failed"]


async def test_deeply_nested_metadata_is_one_error_row(tmp_path: Path) -> None:
    """A metadata field nested hundreds of levels deep fails its record alone, instead of crashing every run."""
    (tmp_path / "in").mkdir()
    deep = "[" * 300 + "1" + "]" * 300
    lines = [json.dumps({"id": f"ok-{i}", "text": f"fine {i}", "lang": ["en"]}) for i in range(20)]
    lines.insert(7, '{"id": "deep", "text": "nested", "lang": ' + deep + "}")
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(lines) + "\n")
    cfg = make_config(tmp_path, "http://placeholder", run={"max_failed_fraction": 0.1})
    result, _ = await run(cfg, ServerOptions(port=0, fake=True, dimensions=8))
    assert result.exit_code == 0
    errors = read_dataset(tmp_path, "errors")
    assert errors["id"].to_pylist() == ["deep"] and errors["error_type"].to_pylist() == ["invalid_metadata"]
    assert read_dataset(tmp_path).num_rows == 20
