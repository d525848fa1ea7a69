"""What the API need not see is sorted out before batching (pipeline.stages.triage), counted by our server."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.jobs.validate import validate

from test_jobs_changes import check_exact, jsonl, rerun, touch_later
from test_jobs_run import make_config, read_dataset

pytestmark = pytest.mark.anyio


def requests_shown(lines: list[str]) -> int:
    """The requests ``pipeline validate`` says a run would send."""
    (line,) = [line for line in lines if line.startswith("requests: ")]
    return int(line.split()[1].replace(",", ""))


async def test_an_edit_spread_over_many_documents_sends_full_requests(tmp_path: Path) -> None:
    """One paragraph edited in each of 40 six-chunk documents: the chunks that kept their vectors ride
    along, so requests carry batch_size inputs (4 or so, not one per batch of 10 chunks read: 24), and
    validate says as many."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {n: [f"Doc {n} paragraph {p}. " + " ".join(f"w{n}-{p}-{k}" for k in range(20)) for p in range(6)]
            for n in range(40)}
    for n, paragraphs in docs.items():
        (src / f"d{n:02d}.md").write_text("\n\n".join(paragraphs))
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []},
                      chunking={"max_chars": 300}, embedding={"batch_size": 10})
    _, _, first = await rerun(cfg)
    assert first["inputs_embedded"] == 240
    for n, paragraphs in docs.items():
        paragraphs[n % 6] = paragraphs[n % 6].replace(f"w{n}-{n % 6}-7 ", "EDITED ")
        (src / f"d{n:02d}.md").write_text("\n\n".join(paragraphs))
        touch_later(src / f"d{n:02d}.md")
    predicted = requests_shown(validate(cfg, "job.yaml").lines)
    job, result, stats = await rerun(cfg)
    paid = stats["inputs_embedded"]
    assert job.changes["changed"] == 40 and 40 <= paid <= 80
    assert predicted == math.ceil(paid / 10)
    # a batch may leave early when the reader pauses (the batcher's linger): one more at most
    assert predicted <= stats["requests"] <= predicted + 1, stats
    assert result.totals["rows_reused"] == 240 - paid
    shards = read_dataset(tmp_path)
    assert shards.num_rows == 240 and "EDITED" in " ".join(shards["text"].to_pylist())


async def test_fifty_edited_records_go_out_in_one_request(tmp_path: Path) -> None:
    """50 records edited among 1,000 of a JSONL (batch_size 96): one request of 50 inputs, not one per
    batch of 96 lines read. (Shards of up to 2,000 rows: a batch, stored rows and all, never holds more
    than sink.shard_rows rows, since it is never split across shards.)"""
    src = tmp_path / "in"
    src.mkdir()
    docs = {f"r{i}": f"record {i} " + " ".join(f"w{i}-{k}" for k in range(10)) for i in range(1000)}
    jsonl(src / "a.jsonl", docs)
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []}, sink={"shard_rows": 2000})
    await rerun(cfg)
    for i in range(0, 1000, 20):
        docs[f"r{i}"] += " (edited)"
    jsonl(src / "a.jsonl", docs)
    touch_later(src / "a.jsonl")
    assert requests_shown(validate(cfg, "job.yaml").lines) == 1
    job, result, stats = await rerun(cfg)
    assert stats["inputs_embedded"] == 50
    assert 1 <= stats["requests"] <= 2, stats  # (one more only if the reader paused past the linger)
    check_exact(tmp_path, docs)


async def test_a_duplicate_id_is_an_error_row_without_being_paid_for(tmp_path: Path) -> None:
    """Two files with the same ids: the second's records are duplicate_id errors, and the server never
    received their texts; a third file later is checked against the dataset's ids the same way."""
    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "a.jsonl", {"x": "first x", "y": "first y", "z": "first z"})
    jsonl(src / "b.jsonl", {"y": "second y", "x": "second x"})
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []}, run={"max_failed_fraction": 1})
    _, result, stats = await rerun(cfg)
    assert stats["inputs_embedded"] == 3 == stats["unique_inputs_embedded"]  # a's three, none of b's
    errors = read_dataset(tmp_path, "errors")
    assert sorted(errors["id"].to_pylist()) == ["x", "y"] and set(errors["error_type"].to_pylist()) == {"duplicate_id"}
    assert all("a.jsonl" in message for message in errors["message"].to_pylist())
    assert result.totals["records_read"] == 5 and result.totals["rows_failed"] == 2
    jsonl(src / "c.jsonl", {"z": "third z", "w": "new w"})
    _, result, stats = await rerun(cfg)
    assert stats["inputs_embedded"] == 1  # w only: z is taken by a row of the dataset
    data = read_dataset(tmp_path)
    assert sorted(data["id"].to_pylist()) == ["w", "x", "y", "z"]
    assert data.filter(pa.compute.equal(data["id"], "z"))["text"].to_pylist() == ["first z"]


async def test_a_changed_file_keeps_its_own_ids(tmp_path: Path) -> None:
    """A file read again after an edit frees its old ids first: its records are not its own duplicates,
    while another file's records with those ids still are."""
    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "a.jsonl", {"x": "first x", "y": "first y"})
    jsonl(src / "b.jsonl", {"x": "other x"})
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []}, run={"max_failed_fraction": 1})
    await rerun(cfg)
    jsonl(src / "a.jsonl", {"x": "first x, edited", "y": "first y"})
    touch_later(src / "a.jsonl")
    job, result, stats = await rerun(cfg)
    # b, whose x lost to a's, is read again with it (a's ids are freed) and loses again: a comes first
    assert job.changes["changed"] == 2 and stats["inputs_embedded"] == 1  # x edited; y keeps its vector
    check_exact(tmp_path, {"x": "first x, edited", "y": "first y"})
    assert read_dataset(tmp_path, "errors")["id"].to_pylist() == ["x"]  # b's
