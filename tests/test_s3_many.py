"""Many small objects on S3 (moto): fetched many at a time, every one read once, in listing order."""

from __future__ import annotations

import gzip

import anyio
import pytest
import s3fs

from conftest import run_cli, serve_process
from pipeline.config import SourceConfig
from pipeline.sources.listing import S3_CONNECTIONS, open_source
from pipeline.stages.read import Checkpoints, read_stage
from pipeline.types import FileEnd, Record
from test_s3 import endpoint, new_bucket, read_dataset, s3, write_job  # noqa: F401 (fixtures)

OBJECTS = 400


def upload_notes(s3: s3fs.S3FileSystem, bucket: str) -> None:  # noqa: F811
    s3.pipe({f"{bucket}/notes/n{i:04d}.md": f"note {i}: une petite note".encode() for i in range(OBJECTS)})
    s3.pipe_file(f"{bucket}/notes/packed.md.gz", gzip.compress(b"a gzip'd note"))
    s3.pipe_file(f"{bucket}/notes/zz-empty.md", b"")


def test_many_small_objects_run_into_a_dataset(s3: s3fs.S3FileSystem, tmp_path) -> None:  # noqa: F811
    """`pipeline run` over hundreds of small objects: every note once, a gzip'd one decoded, an empty one
    a failure row."""
    bucket = new_bucket(s3)
    upload_notes(s3, bucket)
    with serve_process("--fake", "--dimensions", "8") as url:
        job = write_job(tmp_path, url, f"s3://{bucket}/notes", f"s3://{bucket}/out")
        result = run_cli("run", str(job))
    assert result.returncode == 0, result.stderr
    manifest, tables = read_dataset(s3, f"{bucket}/out")
    data, errors = tables["data"], tables["errors"]
    texts = dict(zip(data["doc_id"].to_pylist(), data["text"].to_pylist()))
    assert len(data) == len(texts) == OBJECTS + 1
    assert texts["packed.md.gz"] == "a gzip'd note" and texts["n0123.md"] == "note 123: une petite note"
    assert errors["doc_id"].to_pylist() == ["zz-empty.md"] and errors["error_type"].to_pylist() == ["empty_text"]
    assert manifest["totals"]["records_read"] == OBJECTS + 2


@pytest.mark.anyio
async def test_objects_fetched_ahead_come_in_listing_order(s3: s3fs.S3FileSystem) -> None:  # noqa: F811
    """The read stage over S3 objects: records in listing order, each before its object's end, with room
    in the connection pool for the fetches under way."""
    bucket = new_bucket(s3)
    upload_notes(s3, bucket)
    cfg = SourceConfig(path=f"s3://{bucket}/notes")
    fs, files = open_source(cfg)
    assert fs.config_kwargs["max_pool_connections"] == S3_CONNECTIONS
    items: list = []
    send, receive = anyio.create_memory_object_stream[list](1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: read_stage(files, send, cfg=cfg, fs=fs, done_upto=lambda _: 0,
                                         checkpoints=Checkpoints(), cpu=anyio.CapacityLimiter(1)))
        with anyio.fail_after(120), receive:
            async for block in receive:
                items += block
    expected = []
    for f in files:
        expected += [("record" if f.size else "failure", f.rel_path), ("end", f.key)]
    assert [("end", i.url) if isinstance(i, FileEnd) else ("record" if isinstance(i, Record) else "failure", i.doc_id)
            for i in items] == expected
