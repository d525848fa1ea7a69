"""Following an S3 source (moto): ETags tell changed objects, a grown JSONL is appended, deleted objects leave."""

from __future__ import annotations

import json

import s3fs

from conftest import run_cli, serve_process
from test_s3 import endpoint, new_bucket, read_dataset, s3, write_job  # noqa: F401 (fixtures)


def test_rerun_on_s3_follows_edits_appends_and_deletions(s3: s3fs.S3FileSystem, tmp_path) -> None:  # noqa: F811
    """An object rewritten with the same size (another ETag) is replaced, a JSONL object that grew is
    appended (only its new line is sent), a deleted object's rows leave; every id once."""
    bucket = new_bucket(s3)
    lines = [json.dumps({"id": f"b-{i}", "text": f"b record {i}"}) + "\n" for i in range(20)]
    s3.pipe_file(f"{bucket}/docs/b.jsonl", "".join(lines).encode())
    for i in range(3):
        s3.pipe_file(f"{bucket}/docs/n{i}.md", f"note {i}".encode())
    with serve_process("--fake", "--dimensions", "8") as url:
        job = write_job(tmp_path, url, f"s3://{bucket}/docs", f"s3://{bucket}/out")
        first = run_cli("run", str(job))
        assert first.returncode == 0, first.stderr
        lines.append(json.dumps({"id": "b-20", "text": "b record 20"}) + "\n")
        s3.pipe_file(f"{bucket}/docs/b.jsonl", "".join(lines).encode())
        s3.pipe_file(f"{bucket}/docs/n0.md", b"NOTE 0")  # same size, another ETag
        s3.rm_file(f"{bucket}/docs/n1.md")
        again = run_cli("run", str(job))
        assert again.returncode == 0, again.stderr
    finished = [line for line in again.stderr.splitlines() if "event=run_finished" in line][0]
    for field in ("new=0", "changed=1", "appended=1", "deleted=1", "unchanged=1", "records=2"):
        assert field in finished, finished
    manifest, tables = read_dataset(s3, f"{bucket}/out")
    data = tables["data"]
    ids = data["id"].to_pylist()
    assert len(ids) == len(set(ids))
    texts = dict(zip(ids, data["text"].to_pylist()))
    assert texts == {**{f"b-{i}": f"b record {i}" for i in range(21)}, "n0.md": "NOTE 0", "n2.md": "note 2"}
    assert manifest["totals"]["rows_embedded"] == 23 == manifest["totals"]["records_read"]
    names = {p[len(f"{bucket}/out/"):] for p in s3.find(f"{bucket}/out")}
    assert names == {"_manifest.json", *(s["path"] for s in manifest["shards"]), *(f["path"] for f in manifest["state"])}
