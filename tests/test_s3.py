"""S3 in and out, against moto's S3 server on a loopback port: every record once, resumable, no half objects."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import signal
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from conftest import ROOT, pipeline_cmd, run_cli, serve_process
from state_helpers import read_state
from pipeline.config import SinkConfig, SourceConfig
from pipeline.errors import CommitFailed, SinkError
from pipeline.dataset.manifest import utc_now
from pipeline.dataset.lease import Lease
from pipeline.dataset.retrying import StoreRetry
from pipeline.dataset.writer import DatasetWriter
from pipeline.sources.listing import open_source
from pipeline.sources.readers import read_records
from pipeline.storage import Location
from pipeline.types import Chunk, EmbeddedBatch, Record, Usage

# The fake credentials and endpoint live in the environment the fixture sets,
# never in production code. IMDS is off so that botocore, should it ever lack
# credentials, fails at once instead of probing the metadata address.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
UNSET_AWS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION")

GOOD_A, GOOD_B, NOTES, PARQUET_ROWS = 250, 60, 5, 40


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 server on an ephemeral loopback port, with the AWS_* environment pointing at it."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)  # a line per request is noise in a failing test's report
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in UNSET_AWS:
                mp.delenv(name, raising=False)
            for name, value in {**FAKE_AWS, "AWS_ENDPOINT_URL": url}.items():
                mp.setenv(name, value)
            yield url
            # instances url_to_fs cached in this process point at this server
            s3fs.S3FileSystem.clear_instance_cache()
    finally:
        server.stop()
        werkzeug.setLevel(level)


@pytest.fixture
def s3(endpoint: str) -> s3fs.S3FileSystem:
    """The test's own view of the store (no listings cache: the CLI writes behind its back)."""
    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def new_bucket(s3: s3fs.S3FileSystem) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3.mkdir(name)
    return name


def jsonl(prefix: str, n: int) -> bytes:
    return "".join(json.dumps({"id": f"{prefix}-{i}", "text": f"{prefix} record {i}: une phrase."}) + "\n"
                   for i in range(n)).encode()


def upload_corpus(s3: s3fs.S3FileSystem, bucket: str) -> set[str]:
    """gzip'd and plain JSONL, a folder of Markdown and a Parquet table; returns the good doc ids."""
    a = jsonl("a", GOOD_A).split(b"\n")
    a.insert(100, b"{not json")  # one bad line: it must end in errors/, read from the .gz
    s3.pipe_file(f"{bucket}/docs/2024/a.jsonl.gz", gzip.compress(b"\n".join(a)))
    s3.pipe_file(f"{bucket}/docs/2025/b.jsonl", jsonl("b", GOOD_B))
    for i in range(NOTES):
        s3.pipe_file(f"{bucket}/docs/notes/n{i}.md", f"# Note {i}\n\nSome *markdown* text.\n".encode())
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [f"p-{i}" for i in range(PARQUET_ROWS)],
                             "text": [f"parquet row {i}" for i in range(PARQUET_ROWS)]}), buf)
    s3.pipe_file(f"{bucket}/docs/table.parquet", buf.getvalue())
    return ({f"a-{i}" for i in range(GOOD_A)} | {f"b-{i}" for i in range(GOOD_B)}
            | {f"notes/n{i}.md" for i in range(NOTES)} | {f"p-{i}" for i in range(PARQUET_ROWS)})


def write_job(tmp_path: Path, url: str, source: str, sink: str, *, extra: str = "", name: str = "job.yaml") -> Path:
    job = tmp_path / name
    job.write_text(
        f"source:\n  path: {source}\n{extra}"
        f"embedding:\n  url: {url}\n  api_key: test-key\n  model: test-model\n  concurrency: 4\n"
        f"sink:\n  path: {sink}\n  shard_rows: 100\n"
        "logging:\n  format: logfmt\n"
    )
    return job


def read_dataset(s3: s3fs.S3FileSystem, root: str) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """The manifest and each kind's rows, read shard by shard; checks each shard's own metadata."""
    manifest = json.loads(s3.cat_file(f"{root}/_manifest.json"))
    tables: dict[str, list[pa.Table]] = {"data": [], "errors": []}
    for entry in manifest["shards"]:
        with s3.open(f"{root}/{entry['path']}", "rb") as f:
            table = pq.read_table(f)
        assert json.loads(table.schema.metadata[b"pipeline"]) == {k: v for k, v in entry.items() if k != "bytes"}
        assert table.num_rows == entry["rows"] and s3.info(f"{root}/{entry['path']}")["size"] == entry["bytes"]
        tables[entry["kind"]].append(table)
    return manifest, {k: pa.concat_tables(v) if v else pa.table({}) for k, v in tables.items()}


def assert_exactly_once(s3: s3fs.S3FileSystem, bucket: str, expected: set[str], *, failed: int = 1) -> dict:
    manifest, tables = read_dataset(s3, f"{bucket}/out")
    data, errors = tables["data"], tables["errors"]
    ids = data["id"].to_pylist()
    assert len(ids) == len(set(ids))
    assert set(data["doc_id"].to_pylist()) == expected
    assert all(s.startswith(f"s3://{bucket}/docs/") for s in data["source"].to_pylist())
    assert errors.num_rows == failed
    totals = manifest["totals"]
    assert totals["rows_embedded"] == data.num_rows and totals["rows_failed"] == failed
    assert totals["records_read"] == len(expected) + failed
    return manifest


# --------------------------------------------------------------------------- listing and reading


def test_glob_lists_s3_urls_with_etags_and_reads_gzip(s3: s3fs.S3FileSystem) -> None:
    """A ** glob on S3 finds .jsonl.gz at every depth, keeps s3:// urls and ETags, and reads them decompressed."""
    bucket = new_bucket(s3)
    upload_corpus(s3, bucket)
    s3.pipe_file(f"{bucket}/docs/top.jsonl.gz", gzip.compress(jsonl("t", 3)))
    cfg = SourceConfig(path=f"s3://{bucket}/docs/**/*.jsonl.gz")
    fs, files = open_source(cfg)
    assert [f.url for f in files] == [f"s3://{bucket}/docs/2024/a.jsonl.gz", f"s3://{bucket}/docs/top.jsonl.gz"]
    assert [f.rel_path for f in files] == ["2024/a.jsonl.gz", "top.jsonl.gz"]
    assert all(f.compression == "gzip" and f.format == "jsonl" for f in files)
    assert files[1].mtime == s3.info(f"{bucket}/docs/top.jsonl.gz")["ETag"]
    records = [r for r in read_records(cfg, fs, files[1]) if isinstance(r, Record)]
    assert [(r.doc_id, r.source, r.location) for r in records] == [
        (f"t-{i}", f"s3://{bucket}/docs/top.jsonl.gz", i + 1) for i in range(3)
    ]


def test_each_listing_sees_new_and_changed_objects(s3: s3fs.S3FileSystem) -> None:
    """Listing again in the same process (watch mode) sees objects added and changed since, not s3fs's cache."""
    bucket = new_bucket(s3)
    s3.pipe_file(f"{bucket}/docs/a.jsonl", jsonl("a", 2))
    cfg = SourceConfig(path=f"s3://{bucket}/docs/*.jsonl")
    _, before = open_source(cfg)
    s3.pipe_file(f"{bucket}/docs/a.jsonl", jsonl("a", 5))  # behind the back of the listing's instance
    s3.pipe_file(f"{bucket}/docs/b.jsonl", jsonl("b", 1))
    _, after = open_source(cfg)
    assert [f.rel_path for f in after] == ["a.jsonl", "b.jsonl"]
    assert after[0].size == len(jsonl("a", 5)) != before[0].size
    assert after[0].mtime == s3.info(f"{bucket}/docs/a.jsonl")["ETag"] != before[0].mtime
    _, single = open_source(SourceConfig(path=f"s3://{bucket}/docs/a.jsonl"))
    s3.pipe_file(f"{bucket}/docs/a.jsonl", jsonl("a", 7))
    _, single = open_source(SourceConfig(path=f"s3://{bucket}/docs/a.jsonl"))
    assert single[0].size == len(jsonl("a", 7))


# --------------------------------------------------------------------------- the whole job, S3 to S3


@pytest.fixture(scope="module")
def first_run(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One real `pipeline run` from s3://.../docs to s3://.../out; its `pipeline serve --fake` stays up for reruns."""
    s3 = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    bucket = new_bucket(s3)
    expected = upload_corpus(s3, bucket)
    tmp_path = tmp_path_factory.mktemp("s3job")
    with serve_process("--fake", "--dimensions", "16") as url:
        job = write_job(tmp_path, url, f"s3://{bucket}/docs", f"s3://{bucket}/out")
        result = run_cli("run", str(job))
        yield {"s3": s3, "bucket": bucket, "expected": expected, "job": job, "result": result}


def test_run_s3_to_s3_every_record_once(first_run: dict[str, Any]) -> None:
    """gz and plain JSONL, Markdown and Parquet from S3 land in an S3 dataset once each, with matching totals."""
    result, s3, bucket = first_run["result"], first_run["s3"], first_run["bucket"]
    assert result.returncode == 0, result.stderr
    manifest = assert_exactly_once(s3, bucket, first_run["expected"])
    _, tables = read_dataset(s3, f"{bucket}/out")
    error = tables["errors"].to_pylist()[0]
    assert (error["error_type"], error["source"], error["location"]) == (
        "invalid_json", f"s3://{bucket}/docs/2024/a.jsonl.gz", 101)
    assert manifest["runs"][-1]["status"] == "completed"
    progress = read_state(f"{bucket}/out", s3).progress
    assert all(location > 0 for location in progress.values())
    assert set(progress) == {f"s3://{p}" for p in s3.find(f"{bucket}/docs")}
    # the lease is released, and nothing but the dataset was written
    assert s3.find(f"{bucket}/out/_locks") == []
    names = [p[len(f"{bucket}/out/"):] for p in s3.find(f"{bucket}/out")]
    assert sorted(names) == sorted(["_manifest.json", *(s["path"] for s in manifest["shards"]),
                                    *(f["path"] for f in manifest["state"])])


def test_inspect_reads_an_s3_dataset(first_run: dict[str, Any]) -> None:
    """`pipeline inspect s3://...` reads the manifest and shard footers from S3 and finds no problem."""
    bucket = first_run["bucket"]
    result = run_cli("inspect", f"s3://{bucket}/out")
    assert result.returncode == 0, result.stderr
    assert f"dataset: s3://{bucket}/out" in result.stdout
    assert "failures: invalid_json 1" in result.stdout
    assert "every listed shard is present" in result.stdout


def test_rerun_on_s3_is_a_no_op(first_run: dict[str, Any]) -> None:
    """Running the same S3 job again embeds nothing and duplicates nothing (progress is keyed by s3:// url)."""
    s3, bucket = first_run["s3"], first_run["bucket"]
    before = json.loads(s3.cat_file(f"{bucket}/out/_manifest.json"))
    result = run_cli("run", str(first_run["job"]))
    assert result.returncode == 0, result.stderr
    after = assert_exactly_once(s3, bucket, first_run["expected"])
    assert after["shards"] == before["shards"]
    assert [r["status"] for r in after["runs"]] == ["completed", "completed"]


def test_fresh_rebuilds_an_s3_dataset(first_run: dict[str, Any]) -> None:
    """`pipeline run --fresh` on S3 deletes the dataset's objects and writes it again from shard 0."""
    s3, bucket = first_run["s3"], first_run["bucket"]
    result = run_cli("run", str(first_run["job"]), "--fresh")
    assert result.returncode == 0, result.stderr
    manifest = assert_exactly_once(s3, bucket, first_run["expected"])
    assert len(manifest["runs"]) == 1
    assert manifest["shards"][0]["path"] == "data/part-00000-000000.parquet"


def test_resume_on_s3_after_sigkill(s3: s3fs.S3FileSystem, tmp_path: Path) -> None:
    """After a SIGKILL mid-run, a rerun takes the S3 lease, drops unlisted shards, resumes mid-file, duplicates nothing."""
    bucket = new_bucket(s3)
    n = 1500
    s3.pipe_file(f"{bucket}/docs/big.jsonl.gz", gzip.compress(jsonl("r", n)))
    expected = {f"r-{i}" for i in range(n)}
    with serve_process("--fake", "--dimensions", "16", "--latency-ms", "100") as url:
        job = write_job(tmp_path, url, f"s3://{bucket}/docs", f"s3://{bucket}/out")
        proc = subprocess.Popen(
            pipeline_cmd("run", str(job), "--set", "embedding.concurrency=1", "--set", "embedding.batch_size=50"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        watchdog = threading.Timer(30, proc.kill)  # a hung run ends the wait below, failing the test
        watchdog.start()
        try:
            assert proc.stderr is not None
            commits = 0
            for line in proc.stderr:  # two committed shards, then kill without warning
                commits += "event=shard_committed" in line
                if commits == 2:
                    break
            assert commits == 2, "the run ended before committing two shards"
        finally:
            watchdog.cancel()
            proc.send_signal(signal.SIGKILL)
            proc.wait()  # reaped: the lease's owner pid is gone, so the rerun may take it at once
            if proc.stderr:
                proc.stderr.close()
        killed = json.loads(s3.cat_file(f"{bucket}/out/_manifest.json"))
        assert 0 < killed["totals"]["rows_embedded"] < n
        assert s3.find(f"{bucket}/out/_locks")  # the dead run's lease is still there
        # a crash between a shard's PUT and the manifest save leaves an unlisted shard
        stray = f"{bucket}/out/data/part-00000-000999.parquet"
        s3.pipe_file(stray, b"not listed anywhere")
        result = run_cli("run", str(job), timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(rf"event=file_resumed file=s3://{bucket}/docs/big.jsonl.gz after=\d+", result.stderr)
    assert not s3.exists(stray)
    manifest = assert_exactly_once(s3, bucket, expected, failed=0)
    assert [r["status"] for r in manifest["runs"]] == ["unfinished", "completed"]


# --------------------------------------------------------------------------- configuration routes


def test_storage_options_route(s3: s3fs.S3FileSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               endpoint: str) -> None:
    """Credentials and endpoint given in source/sink storage_options (and --storage-option) work without AWS_* env."""
    bucket = new_bucket(s3)
    expected = upload_corpus(s3, bucket)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    # were storage_options ignored, the client would go to this dead loopback port
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    options = (f"  storage_options:\n    key: testing\n    secret: testing\n    endpoint_url: {endpoint}\n"
               "    client_kwargs:\n      region_name: us-east-1\n")
    with serve_process("--fake", "--dimensions", "16") as url:
        job = write_job(tmp_path, url, f"s3://{bucket}/docs", f"s3://{bucket}/out", extra=options)
        job.write_text(job.read_text().replace("  shard_rows: 100\n", "  shard_rows: 100\n" + options))
        result = run_cli("run", str(job))
    assert result.returncode == 0, result.stderr
    assert_exactly_once(s3, bucket, expected)
    result = run_cli("inspect", f"s3://{bucket}/out", "--storage-option", "key=testing",
                     "--storage-option", "secret=testing", "--storage-option", f"endpoint_url={endpoint}",
                     "--storage-option", "anon=false")
    assert result.returncode == 0, result.stderr
    assert "every listed shard is present" in result.stdout


def test_missing_sink_bucket_is_one_line_and_not_created(s3: s3fs.S3FileSystem, tmp_path: Path) -> None:
    """A sink bucket that does not exist stops the run with exit 2 and one line, and is not created."""
    bucket = new_bucket(s3)
    upload_corpus(s3, bucket)
    missing = f"t-missing-{uuid.uuid4().hex[:8]}"
    job = write_job(tmp_path, "http://127.0.0.1:9", f"s3://{bucket}/docs", f"s3://{missing}/out")
    result = run_cli("run", str(job), timeout=60)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("pipeline: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"s3://{missing}/out" in lines[0]
    assert not s3.exists(missing)


# --------------------------------------------------------------------------- no half objects


def big_batch(rows: int = 3000, dims: int = 1024) -> EmbeddedBatch:
    """~12 MiB of incompressible vectors: above two 5 MiB parts, so s3fs uploads it in parts."""
    vectors = np.random.default_rng(0).random((rows, dims), dtype=np.float32)
    chunks = tuple(
        Chunk(id=f"d{i}", doc_id=f"d{i}", chunk_index=0, text="x", source="s3://src/x.jsonl",
              location=i + 1, content_hash="0" * 64)
        for i in range(rows)
    )
    return EmbeddedBatch(seq=0, chunks=chunks, vectors=vectors, usage=Usage(requests=1), records=rows,
                         marks=(("s3://src/x.jsonl", rows),))


def open_writer(fs: s3fs.S3FileSystem, path: str) -> DatasetWriter:
    # no retries: each failed attempt is what these tests look at (a retried upload would pass after a minute)
    return DatasetWriter(SinkConfig(path=path, compression="none"), rank=0, model="m", input_type=None,
                         embedding_type="float", metadata_fields=[], run_started_at=utc_now(), fs=fs,
                         retry=StoreRetry(0))


def test_failed_multipart_upload_leaves_no_object(s3: s3fs.S3FileSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard whose multipart upload fails midway is not visible, not listed, and its upload is aborted."""
    bucket = new_bucket(s3)
    # 5 MiB parts (S3's minimum) instead of 50 MiB, so a 12 MiB shard goes up in three parts
    monkeypatch.setattr(s3fs.core, "calculate_chunksize", lambda size, chunksize=None, max_parts=10_000: 5 << 20)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    real_call = fs._call_s3
    calls: list[str] = []

    async def flaky(method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        if method == "upload_part" and kwargs.get("PartNumber") == 2:
            raise OSError("connection reset by peer (injected)")
        return await real_call(method, *args, **kwargs)

    monkeypatch.setattr(fs, "_call_s3", flaky)
    writer = open_writer(fs, f"s3://{bucket}/ds")
    writer.write(big_batch())
    with pytest.raises(CommitFailed):
        writer.commit()
    assert "create_multipart_upload" in calls and "abort_multipart_upload" in calls
    assert "complete_multipart_upload" not in calls
    assert s3.find(f"{bucket}/ds/data") == []
    assert s3.list_multipart_uploads(bucket) == []
    manifest = json.loads(s3.cat_file(f"{bucket}/ds/_manifest.json"))
    assert manifest["shards"] == [] and read_state(f"{bucket}/ds", s3).progress == {}


def test_multipart_shard_is_whole_once_listed(s3: s3fs.S3FileSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard uploaded in parts is complete and readable with its metadata when the manifest lists it."""
    bucket = new_bucket(s3)
    monkeypatch.setattr(s3fs.core, "calculate_chunksize", lambda size, chunksize=None, max_parts=10_000: 5 << 20)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    writer = open_writer(fs, f"s3://{bucket}/ds")
    writer.write(big_batch())
    writer.close("completed")
    manifest, tables = read_dataset(s3, f"{bucket}/ds")
    assert [s["rows"] for s in manifest["shards"]] == [3000]
    assert tables["data"]["embedding"].to_numpy(zero_copy_only=False)[2999].tolist() == \
        big_batch().vectors[2999].tolist()
    assert "-" in s3.info(f"{bucket}/ds/{manifest['shards'][0]['path']}")["ETag"]  # a multipart ETag


# --------------------------------------------------------------------------- two writers, one paused


def small_batch(seq: int, start: int, n: int = 5) -> EmbeddedBatch:
    chunks = tuple(Chunk(id=f"d{i}", doc_id=f"d{i}", chunk_index=0, text="x", source="s3://src/x.jsonl",
                         location=i + 1, content_hash="0" * 64) for i in range(start, start + n))
    return EmbeddedBatch(seq=seq, chunks=chunks, vectors=np.ones((n, 8), np.float32), usage=Usage(requests=1),
                         records=n, marks=(("s3://src/x.jsonl", start + n),))


def leased_writer(fs: s3fs.S3FileSystem, path: str, clock: Any) -> DatasetWriter:
    where = Location.open(path)
    lease = Lease(where.fs, where.root, 0, ttl_s=30, clock=clock, sleep=lambda s: None)
    lease.acquire(0)
    return DatasetWriter(SinkConfig(path=path, compression="none", shard_rows=5), rank=0, model="m",
                         input_type=None, embedding_type="float", metadata_fields=[], run_started_at=utc_now(),
                         fs=where.fs, lease=lease, retry=StoreRetry(0))


@pytest.mark.parametrize("renewal_got_through", [False, True])
def test_a_paused_writer_never_clobbers_its_successor(s3: s3fs.S3FileSystem, renewal_got_through: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer paused past its lease (a frozen dyno) wakes after another took over: it stops, and the
    successor's shards and manifest stay as the successor wrote them, whether or not the paused writer's
    last lease renewal landed."""
    bucket = new_bucket(s3)
    path = f"s3://{bucket}/ds"
    now = [1000.0]
    first = leased_writer(s3, path, lambda: now[0])
    first.write(small_batch(0, 0))  # full shard: committed at once
    now[0] += 120  # the first writer is frozen; its lease goes stale
    second = leased_writer(s3, path, lambda: now[0])
    second.write(small_batch(0, 5))
    committed = json.loads(s3.cat_file(f"{bucket}/ds/_manifest.json"))
    objects = {p: s3.info(p)["ETag"] for p in s3.find(f"{bucket}/ds/data")}
    assert len(committed["shards"]) == 2
    if renewal_got_through:  # its PUT was in flight when it froze, and landed: the renewal looks fine
        monkeypatch.setattr(first._ledger._lease, "renew", lambda: None)
    with pytest.raises(CommitFailed, match="another pipeline|lost the write lease"):
        first.write(small_batch(1, 10))
    assert json.loads(s3.cat_file(f"{bucket}/ds/_manifest.json")) == committed
    assert all(s3.info(p)["ETag"] == etag for p, etag in objects.items())  # nothing overwritten
    second.write(small_batch(1, 15))  # the successor goes on, around the stray the other left
    second.close("completed")
    final = json.loads(s3.cat_file(f"{bucket}/ds/_manifest.json"))
    assert final["totals"]["rows_embedded"] == 15 and len({s["path"] for s in final["shards"]}) == 3
