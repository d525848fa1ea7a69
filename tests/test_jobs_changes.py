"""Reruns follow the source: new, changed, appended, deleted and unchanged inputs (pipeline.jobs.changes)."""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from pipeline.config import Config
from state_helpers import as_format_1
from pipeline.errors import PipelineError, SinkError
from pipeline.jobs.inputs import list_source
from pipeline.jobs.run import Job
from pipeline.jobs.validate import validate
from pipeline.serve.app import ServerOptions, running_server

from test_jobs_run import make_config, write_corpus

pytestmark = pytest.mark.anyio


async def rerun(cfg: Config) -> tuple[Job, Any, dict[str, Any]]:
    """One run of ``cfg`` against a fresh fake server: the job, its result and the server's counters."""
    error: PipelineError | None = None
    async with running_server(ServerOptions(port=0, fake=True, dimensions=8)) as server:
        emb = cfg.embedding.model_copy(update={"url": server.url})
        job = Job(cfg.model_copy(update={"embedding": emb}), handle_signals=False)
        with anyio.fail_after(60):
            try:
                result = await job.run()
            except PipelineError as exc:  # raised outside the server's task group
                error = exc
        stats = server.stats.snapshot()
    if error is not None:
        raise error
    return job, result, stats


def current(tmp_path: Path) -> pa.Table:
    """The rows a reader globbing ``data/*.parquet`` sees, by id."""
    files = sorted((tmp_path / "out" / "data").glob("*.parquet"))
    return ds.dataset([str(f) for f in files], format="parquet").to_table().sort_by("id")


def listed(tmp_path: Path) -> pa.Table:
    """The rows of the shards ``_manifest.json`` lists, by id."""
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    files = [str(tmp_path / "out" / s["path"]) for s in manifest["shards"] if s["kind"] == "data"]
    return ds.dataset(files, format="parquet").to_table().sort_by("id")


def check_exact(tmp_path: Path, expected: dict[str, str], records: int | None = None) -> None:
    """The dataset holds exactly ``expected`` (id → text), every id once, by the manifest and by a glob;
    the totals count ``records`` records (a row each by default)."""
    for table in (listed(tmp_path), current(tmp_path)):
        assert dict(zip(table["id"].to_pylist(), table["text"].to_pylist())) == expected
        assert table.num_rows == len(expected)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    totals = manifest["totals"]
    assert totals["rows_embedded"] == len(expected)
    assert totals["records_read"] == (len(expected) if records is None else records) + totals["rows_failed"]


def jsonl(path: Path, docs: dict[str, str]) -> None:
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))


def touch_later(path: Path) -> None:
    """Make sure the mtime moves even on a coarse clock."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


async def test_jsonl_edits_deletions_additions_and_appends(tmp_path: Path) -> None:
    """A rerun replaces an edited file's rows, removes a deleted file's, adds a new one's, reads only
    the appended lines of a grown file, skips an unchanged one, and counts each kind."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {name: {f"{name}{i}": f"{name} text {i}" for i in range(5)} for name in "abcd"}
    for name, d in docs.items():
        jsonl(src / f"{name}.jsonl", d)
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []})
    await rerun(cfg)
    docs["a"] = {"a0": "a text 0", "a1": "a edited 1", "a9": "a new 9"}  # edited: a2..a4 gone, a9 new
    jsonl(src / "a.jsonl", docs["a"])
    touch_later(src / "a.jsonl")
    (src / "b.jsonl").unlink()
    del docs["b"]
    with open(src / "c.jsonl", "a") as f:  # appended
        f.write(json.dumps({"id": "c5", "text": "c text 5"}) + "\n")
    docs["c"]["c5"] = "c text 5"
    touch_later(src / "c.jsonl")
    docs["e"] = {"e0": "e text 0"}
    jsonl(src / "e.jsonl", docs["e"])
    job, result, stats = await rerun(cfg)
    assert result.exit_code == 0
    assert job.changes == {"new": 1, "resumed": 0, "changed": 1, "appended": 1, "deleted": 1, "unchanged": 1}
    assert stats["inputs_embedded"] == 2 + 1 + 1  # a1 and a9 (a0 kept its vector), c5, e0
    check_exact(tmp_path, {k: v for d in docs.values() for k, v in d.items()})
    job, result, stats = await rerun(cfg)
    assert stats["inputs_embedded"] == 0 and job.changes["unchanged"] == 4


async def test_a_rewritten_jsonl_is_not_taken_for_an_append(tmp_path: Path) -> None:
    """A file that grew but whose old bytes changed is read again whole, not appended."""
    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "a.jsonl", {"a0": "zero", "a1": "one"})
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []})
    await rerun(cfg)
    jsonl(src / "a.jsonl", {"a0": "ZERO", "a1": "one", "a2": "two"})
    touch_later(src / "a.jsonl")
    job, _, _ = await rerun(cfg)
    assert job.changes["changed"] == 1 and job.changes["appended"] == 0
    check_exact(tmp_path, {"a0": "ZERO", "a1": "one", "a2": "two"})


@pytest.mark.parametrize("fmt", ["md", "csv", "parquet"])
async def test_other_formats_follow_edits_and_deletions(tmp_path: Path, fmt: str) -> None:
    """Text, CSV and Parquet sources: an edited file's rows are replaced, a deleted file's removed."""
    src = tmp_path / "in"
    src.mkdir()

    def put(name: str, texts: list[str]) -> dict[str, str]:
        path = src / f"{name}.{fmt}"
        if fmt == "md":
            path.write_text(texts[0])
            return {f"{name}.md": texts[0]}
        ids = [f"{name}{i}" for i in range(len(texts))]
        if fmt == "csv":
            path.write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in zip(ids, texts)))
        else:
            pq.write_table(pa.table({"id": ids, "text": texts}), path)
        touch_later(path)
        return dict(zip(ids, texts))

    expected = {**put("a", ["alpha one", "alpha two"]), **put("b", ["beta one"]), **put("c", ["gamma"])}
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []})
    await rerun(cfg)
    check_exact(tmp_path, expected)
    expected = {k: v for k, v in expected.items() if not k.startswith(("a", "b"))}
    expected.update(put("a", ["alpha ONE"]))
    (src / f"b.{fmt}").unlink()
    job, result, stats = await rerun(cfg)
    assert result.exit_code == 0
    assert job.changes["changed"] == 1 and job.changes["deleted"] == 1 and job.changes["unchanged"] == 1
    assert stats["inputs_embedded"] == 1
    check_exact(tmp_path, expected)


def a_and_b(tmp_path: Path, **run: Any) -> Config:
    """A source of two one-record files, a.jsonl and b.jsonl, and a config with ``run`` settings."""
    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "a.jsonl", {"a0": "zero"})
    jsonl(src / "b.jsonl", {"b0": "one"})
    return make_config(tmp_path, "http://placeholder", source={"metadata_fields": []}, run=run)


async def test_on_deleted_keep_leaves_the_rows(tmp_path: Path) -> None:
    """With run.on_deleted: keep, a deleted file's rows stay in the dataset."""
    cfg = a_and_b(tmp_path, on_deleted="keep")
    await rerun(cfg)
    (tmp_path / "in" / "b.jsonl").unlink()
    await rerun(cfg)
    check_exact(tmp_path, {"a0": "zero", "b0": "one"})


async def test_a_rerun_seeds_the_ids_when_it_reads_and_without_those_of_the_changed_inputs(tmp_path: Path) -> None:
    """A rerun with nothing to read reads no shard's ids; one that reads a changed file keeps the other files'
    ids taken (a clash with them is a duplicate_id) and the changed file's own ids free for its new version."""
    cfg = a_and_b(tmp_path, max_failed_fraction=1)
    await rerun(cfg)
    job, _, _ = await rerun(cfg)
    assert len(job.ids) == 0
    jsonl(tmp_path / "in" / "b.jsonl", {"b0": "edited", "a0": "a clash"})
    touch_later(tmp_path / "in" / "b.jsonl")
    job, result, _ = await rerun(cfg)
    check_exact(tmp_path, {"a0": "zero", "b0": "edited"})
    assert len(job.ids) == 2 and result.totals["rows_failed"] == 1


async def test_on_deleted_keep_counts_the_deleted_file_as_validate_does(tmp_path: Path) -> None:
    """With run.on_deleted: keep, run_finished counts a deleted file (deleted=1 kept=1) as validate does."""
    cfg = a_and_b(tmp_path, on_deleted="keep")
    await rerun(cfg)
    (tmp_path / "in" / "b.jsonl").unlink()
    shown = validate(cfg, "job.yaml")
    assert any("deleted 1, kept 1, unchanged 1" in line for line in shown.lines), shown.lines
    with capture_logs() as logs:
        job, _, _ = await rerun(cfg)
    finished = next(e for e in logs if e["event"] == "run_finished")
    started = next(e for e in logs if e["event"] == "run_started")
    assert finished["deleted"] == started["deleted"] == 1 and finished["kept"] == started["kept"] == 1
    assert job.changes["deleted"] == 1 and job.changes["kept"] == 1
    check_exact(tmp_path, {"a0": "zero", "b0": "one"})


async def test_a_shard_copied_without_a_deleted_file_is_logged_as_rewritten(tmp_path: Path) -> None:
    """The copy of a shard without a deleted file's rows is ``shard_rewritten`` (naming the shard it
    replaces), not ``shard_committed`` with the old shard's requests and tokens, as if paid again."""
    cfg = a_and_b(tmp_path, max_removed_fraction=1)
    await rerun(cfg)
    (tmp_path / "in" / "b.jsonl").unlink()
    with capture_logs() as logs:
        await rerun(cfg)
    events = [e for e in logs if e["event"] in ("shard_committed", "shard_rewritten")]
    assert [e["event"] for e in events] == ["shard_rewritten"]
    assert events[0]["rewritten_from"] == "data/part-00000-000000.parquet" and events[0]["rows"] == 1
    check_exact(tmp_path, {"a0": "zero"})


async def one_record_files(tmp_path: Path, names: str) -> tuple[Path, Any, list[str]]:
    """A JSONL file of one record per letter of ``names`` under ``in/``, embedded: the source folder, the
    config and the dataset's data files."""
    src = tmp_path / "in"
    src.mkdir()
    for name in names:
        jsonl(src / f"{name}.jsonl", {f"{name}0": name})
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []})
    await rerun(cfg)
    return src, cfg, sorted(p.name for p in (tmp_path / "out" / "data").iterdir())


async def test_mass_deletion_is_refused_before_anything_changes(tmp_path: Path) -> None:
    """A run that would remove more than run.max_removed_fraction of the files stops (exit 2, one line
    naming the fraction and the key) and leaves the dataset as it was; raising the key lets it through."""
    src, cfg, before = await one_record_files(tmp_path, "abc")
    (src / "a.jsonl").unlink()
    (src / "b.jsonl").unlink()
    with pytest.raises(SinkError) as caught:
        await rerun(cfg)
    message = str(caught.value)
    assert caught.value.exit_code == 2 and "\n" not in message
    assert "2 of the dataset's 3 source files (67% of the files" in message and "run.max_removed_fraction=0.5" in message
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == before
    check_exact(tmp_path, {"a0": "a", "b0": "b", "c0": "c"})
    lenient = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []},
                          run={"max_removed_fraction": 1})
    await rerun(lenient)
    check_exact(tmp_path, {"c0": "c"})


async def test_a_typo_that_drops_the_few_big_files_is_refused_by_records(tmp_path: Path) -> None:
    """Most source files still listed, but the ones gone hold most records (a glob typo, `*.md` for
    the whole folder): refused by the share of records, and `pipeline validate` exits 2 saying so."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {f"r{i}": f"record {i}" for i in range(60)}
    jsonl(src / "big.jsonl", docs)
    for i in range(4):
        (src / f"note{i}.md").write_text(f"note {i}")
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []})
    await rerun(cfg)
    typo = cfg.model_copy(update={"source": cfg.source.model_copy(update={"path": str(src / "*.md")})})
    report = validate(typo, "job.yaml")
    assert report.exit_code == 2 and any("a run would stop" in line for line in report.lines)
    with pytest.raises(SinkError) as caught:
        await rerun(typo)
    message = str(caught.value)
    assert "1 of the dataset's 5 source files (20% of the files, 94% of the records)" in message
    assert current(tmp_path).num_rows == 64


async def test_emptying_most_files_is_refused_as_a_mass_removal(tmp_path: Path) -> None:
    """Files truncated to 0 bytes lose their rows as surely as deleted ones: emptying 3 of 4 files is
    refused by validate and the run (exit 2, one line), under run.on_deleted: keep too; one of 4 is not."""
    src, cfg, before = await one_record_files(tmp_path, "abcd")
    for name in "abc":
        (src / f"{name}.jsonl").write_text("")
        touch_later(src / f"{name}.jsonl")
    keep = cfg.model_copy(update={"run": cfg.run.model_copy(update={"on_deleted": "keep"})})
    for each in (cfg, keep):
        report = validate(each, "job.yaml")
        assert report.exit_code == 2 and any("a run would stop" in line for line in report.lines), report.lines
        with pytest.raises(SinkError) as caught:
            await rerun(each)
        message = str(caught.value)
        assert caught.value.exit_code == 2 and "\n" not in message
        assert "3 of the dataset's 4 source files, 3 of them listed with 0 bytes (75% of the files" in message
        assert "run.max_removed_fraction=0.5" in message
        assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == before
        check_exact(tmp_path, {"a0": "a", "b0": "b", "c0": "c", "d0": "d"})
    jsonl(src / "b.jsonl", {"b0": "b"})
    jsonl(src / "c.jsonl", {"c0": "c"})
    job, result, _ = await rerun(cfg)  # one of four emptied: within the guard
    assert result.exit_code == 0 and job.changes["changed"] == 3
    check_exact(tmp_path, {"b0": "b", "c0": "c", "d0": "d"})


async def test_a_run_cut_short_says_how_much_is_done_and_validate_says_resumed_as_the_rerun(tmp_path: Path) -> None:
    """A run stopped part-way (here by run.max_tokens) reports done_pct as the share of the input written,
    not the share read ahead (100%); validate then counts the input resumed, as the rerun does."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 2000, bad=False)
    cfg = make_config(tmp_path, "http://placeholder", run={"max_tokens": 9000},
                      embedding={"batch_size": 50, "concurrency": 4})
    with capture_logs() as logs:
        _, result, _ = await rerun(cfg)
    assert result.status == "budget_exhausted"
    finished = next(e for e in logs if e["event"] == "run_finished")
    written = result.totals["records_read"] / 2000
    assert 0 < written < 1 and finished["done_pct"] == pytest.approx(written * 100, abs=2), (finished, written)
    report = validate(cfg, "job.yaml")
    line = "changes since the dataset: new 0, resumed 1, changed 0, appended 0, deleted 0, unchanged 0"
    assert line in report.lines, report.lines
    bigger = cfg.model_copy(update={"run": cfg.run.model_copy(update={"max_tokens": None})})
    job, result, _ = await rerun(bigger)
    assert result.status == "completed" and job.changes["new"] == 0 and job.changes["resumed"] == 1


def test_the_new_run_keys_have_their_defaults() -> None:
    """run.on_deleted defaults to remove and run.max_removed_fraction to 0.5; other values are refused."""
    cfg = make_config(Path("/tmp"), "http://x")
    assert cfg.run.on_deleted == "remove" and cfg.run.max_removed_fraction == 0.5
    with pytest.raises(ValueError):
        make_config(Path("/tmp"), "http://x", run={"on_deleted": "archive"})


async def test_an_edited_paragraph_pays_for_its_own_chunks_only(tmp_path: Path) -> None:
    """Editing one paragraph of a six-chunk markdown document sends one or two inputs; the others keep
    their vectors."""
    src = tmp_path / "in"
    src.mkdir()
    paragraphs = [f"Paragraph {p}. " + " ".join(f"word{p}-{k}" for k in range(20)) for p in range(6)]
    (src / "doc.md").write_text("\n\n".join(paragraphs))
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []},
                      chunking={"max_chars": 300})
    _, _, first = await rerun(cfg)
    assert first["inputs_embedded"] == 6
    paragraphs[3] = paragraphs[3].replace("word3-7 ", "WORD ")
    (src / "doc.md").write_text("\n\n".join(paragraphs))
    touch_later(src / "doc.md")
    job, result, stats = await rerun(cfg)
    assert job.changes["changed"] == 1
    assert 1 <= stats["inputs_embedded"] <= 2
    assert job.progress.fields()["reused"] == 6 - stats["inputs_embedded"]  # run_finished says so
    table = current(tmp_path)
    assert table.num_rows == 6 and "WORD" in "".join(table["text"].to_pylist())


async def test_fifty_edited_records_of_a_thousand_cost_about_fifty(tmp_path: Path) -> None:
    """Editing 50 records of a 1,000-record JSONL sends about 50 inputs, and the dataset equals the source."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {f"r{i}": f"record {i} " + " ".join(f"w{i}-{k}" for k in range(10)) for i in range(1000)}
    jsonl(src / "a.jsonl", docs)
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []})
    await rerun(cfg)
    for i in range(0, 1000, 20):
        docs[f"r{i}"] += " (edited)"
    jsonl(src / "a.jsonl", docs)
    touch_later(src / "a.jsonl")
    job, result, stats = await rerun(cfg)
    assert job.changes["changed"] == 1
    assert stats["inputs_embedded"] == 50
    assert result.totals["rows_embedded"] == 1000
    check_exact(tmp_path, docs)


async def test_a_dataset_of_the_previous_version_follows_too(tmp_path: Path) -> None:
    """A dataset written before entries listed their sources (no ``sources``, ``ends`` or tail hashes)
    opens, and a rerun after an edit, an append and a deletion leaves exactly the current records."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {name: {f"{name}{i}": f"{name} text {i}" for i in range(3)} for name in "abcd"}
    for name, d in docs.items():
        jsonl(src / f"{name}.jsonl", d)
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []})
    await rerun(cfg)
    path = tmp_path / "out" / "_manifest.json"
    manifest = as_format_1(tmp_path / "out")
    manifest.pop("ends")
    for entry in manifest["shards"]:
        entry.pop("sources")
    manifest["files"] = {url: sig.split("|")[0] for url, sig in manifest["files"].items()}
    path.write_text(json.dumps(manifest))
    docs["a"]["a1"] = "a edited"
    jsonl(src / "a.jsonl", docs["a"])
    touch_later(src / "a.jsonl")
    with open(src / "c.jsonl", "a") as f:
        f.write(json.dumps({"id": "c3", "text": "c text 3"}) + "\n")
    docs["c"]["c3"] = "c text 3"
    touch_later(src / "c.jsonl")
    (src / "b.jsonl").unlink()
    del docs["b"]
    job, result, _ = await rerun(cfg)
    assert result.exit_code == 0
    assert job.changes["changed"] == 2 and job.changes["deleted"] == 1  # c cannot be told appended: read again
    check_exact(tmp_path, {k: v for d in docs.values() for k, v in d.items()})


async def test_a_renamed_file_keeps_its_ids_and_vectors(tmp_path: Path) -> None:
    """A file renamed (deleted under one name, new under another) frees its ids for the new name, costs
    no input (its vectors are the dataset's own) and leaves no duplicate_id error. validate estimates it
    free as well (it counted the renamed file's tokens, as if new)."""
    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "a.jsonl", {"x": "ex", "y": "why"})
    jsonl(src / "keep.jsonl", {"k": "kept"})
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []})
    await rerun(cfg)
    (src / "a.jsonl").rename(src / "b.jsonl")
    shown = validate(cfg, "job.yaml")
    assert shown.exit_code == 0 and any(line.startswith("requests: 0 (") for line in shown.lines), shown.lines
    assert any(line.startswith("estimated tokens: 0 (") for line in shown.lines), shown.lines
    job, result, stats = await rerun(cfg)
    assert job.changes["new"] == 1 and job.changes["deleted"] == 1
    assert stats["inputs_embedded"] == 0 and result.totals["rows_failed"] == 0
    check_exact(tmp_path, {"x": "ex", "y": "why", "k": "kept"})
    assert set(current(tmp_path)["source"].to_pylist()) == {str(src / "b.jsonl"), str(src / "keep.jsonl")}


async def test_a_file_renamed_under_keep_moves_its_documents(tmp_path: Path) -> None:
    """Under run.on_deleted: keep, records of a new file whose ids a kept (deleted) file's rows hold take
    them over: each new document replaces its kept rows (all its chunks) in the same commit, at no token
    (the vectors are the dataset's own) and with no duplicate_id error; what no live file took over
    stays, and goes once on_deleted is remove."""
    src = tmp_path / "in"
    cfg = await renamed_under_keep(tmp_path, make_config(tmp_path, "http://placeholder", **RENAMED_UNDER_KEEP))
    first = current(tmp_path)
    texts = dict(zip(first["id"].to_pylist(), first["text"].to_pylist()))
    assert {"m#0", "m#1", "m#2"} <= set(texts)
    shown = validate(cfg, "job.yaml")
    assert any(line.startswith("estimated tokens: 0 (") for line in shown.lines), shown.lines
    job, result, stats = await rerun(cfg)
    assert job.changes["new"] == 2 and job.changes["kept"] == 2
    assert stats["inputs_embedded"] == 0 and result.totals["rows_failed"] == 0
    expected = {i: t for i, t in texts.items() if i != "m#2"}  # m lost its last paragraph on the way
    check_exact(tmp_path, expected, records=6)  # x, y, m (two chunks), z, w, k
    table = current(tmp_path)
    assert dict(zip(table["id"].to_pylist(), table["source"].to_pylist())) == moved_sources(src)
    job, result, stats = await rerun(cfg)  # nothing more to do
    assert stats["inputs_embedded"] == 0 and job.changes["unchanged"] == 3
    removing = cfg.model_copy(update={"run": cfg.run.model_copy(update={"on_deleted": "remove"})})
    await rerun(removing)
    check_exact(tmp_path, {i: t for i, t in expected.items() if i != "w"}, records=5)


async def test_a_rename_under_keep_among_many_unchanged_files_costs_nothing(tmp_path: Path) -> None:
    """When most files are unchanged the run lets go of them after comparing (a listing of the others);
    the kept inputs must stay known then, so the dataset's own vectors serve the renamed file: 0 paid."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        jsonl(src / f"same{i}.jsonl", {f"s{i}": f"same {i}"})
    jsonl(src / "a.jsonl", {"x": "ex", "m": "\n\n".join(PARAGRAPHS)})
    cfg = make_config(tmp_path, "http://placeholder", **RENAMED_UNDER_KEEP)
    await rerun(cfg)
    (src / "a.jsonl").rename(src / "b.jsonl")
    job, result, stats = await rerun(cfg)
    assert job.changes["new"] == 1 and job.changes["kept"] == 1 and job.changes["unchanged"] == 6
    assert stats["inputs_embedded"] == 0 and result.totals["rows_failed"] == 0
    table = current(tmp_path)
    assert sorted(table["id"].to_pylist()) == ["m#0", "m#1", "m#2", *(f"s{i}" for i in range(6)), "x"]
    assert set(table.filter(pa.compute.is_in(table["id"], pa.array(["x", "m#0"])))["source"].to_pylist()) == {
        str(src / "b.jsonl")}


async def test_a_file_renamed_under_keep_and_back_keeps_its_documents(tmp_path: Path) -> None:
    """Renamed under run.on_deleted: keep, a file's documents move to the new name; renamed back, they
    move back (the old name is marked moved, so the same bytes there are read again, at no token), and
    switching to remove then leaves every current record in place."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("f1", "f2", "f3"):
        jsonl(src / f"{name}.jsonl", {f"{name}-{i}": f"{name} record {i}" for i in range(4)})
    docs = {f"{name}-{i}": f"{name} record {i}" for name in ("f1", "f2", "f3") for i in range(4)}
    cfg = make_config(tmp_path, "http://placeholder", **RENAMED_UNDER_KEEP)
    await rerun(cfg)
    (src / "f1.jsonl").rename(src / "g1.jsonl")
    await rerun(cfg)
    (src / "g1.jsonl").rename(src / "f1.jsonl")
    job, result, stats = await rerun(cfg)
    assert stats["inputs_embedded"] == 0 and result.totals["rows_failed"] == 0
    table = current(tmp_path)
    assert {s for i, s in zip(table["id"].to_pylist(), table["source"].to_pylist()) if i.startswith("f1-")} == {
        str(src / "f1.jsonl")}
    removing = cfg.model_copy(update={"run": cfg.run.model_copy(update={"on_deleted": "remove"})})
    await rerun(removing)
    check_exact(tmp_path, docs, records=12)


#: the config sections of :func:`renamed_under_keep`
RENAMED_UNDER_KEEP: dict[str, Any] = {"source": {"metadata_fields": []}, "chunking": {"max_chars": 300},
                                      "run": {"on_deleted": "keep", "max_removed_fraction": 1}}
PARAGRAPHS = [f"Paragraph {p}. " + " ".join(f"word{p}-{k}" for k in range(20)) for p in range(3)]


async def renamed_under_keep(tmp_path: Path, cfg: Config) -> Config:
    """Run ``cfg`` over a.jsonl (x, y and m, a document of three chunks), c.jsonl (z, w) and keep.jsonl
    (k); then rename a.jsonl to b.jsonl (m losing its last paragraph), delete c.jsonl and write d.jsonl
    with z only. ``cfg``, for the rerun."""
    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "a.jsonl", {"x": "ex", "y": "why", "m": "\n\n".join(PARAGRAPHS)})
    jsonl(src / "c.jsonl", {"z": "zed", "w": "double"})
    jsonl(src / "keep.jsonl", {"k": "kept"})
    await rerun(cfg)
    (src / "a.jsonl").unlink()
    jsonl(src / "b.jsonl", {"x": "ex", "y": "why", "m": "\n\n".join(PARAGRAPHS[:2])})
    (src / "c.jsonl").unlink()
    jsonl(src / "d.jsonl", {"z": "zed"})  # w is not taken over: its row stays, kept
    return cfg


def moved_sources(src: Path) -> dict[str, str]:
    """id → source after :func:`renamed_under_keep`'s rerun."""
    b, d = str(src / "b.jsonl"), str(src / "d.jsonl")
    return {"x": b, "y": b, "m#0": b, "m#1": b, "z": d, "w": str(src / "c.jsonl"), "k": str(src / "keep.jsonl")}


async def test_most_files_renamed_are_moved_not_refused_as_a_mass_removal(tmp_path: Path) -> None:
    """Renaming 8 of 10 files (same bytes) is not a mass removal: validate and the run go on, the run
    paying nothing (a listing that lost files would be refused; these reappear under new names)."""
    src = tmp_path / "in"
    src.mkdir()
    docs = {f"d{i}": f"document number {i}" for i in range(10)}
    for i in range(10):
        jsonl(src / f"f{i}.jsonl", {f"d{i}": docs[f"d{i}"]})
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []})
    await rerun(cfg)
    for i in range(8):
        (src / f"f{i}.jsonl").rename(src / f"moved-{i}.jsonl")
    shown = validate(cfg, "job.yaml")
    assert not any("would stop" in line for line in shown.lines), shown.lines
    job, result, stats = await rerun(cfg)
    assert result.exit_code == 0 and job.changes["new"] == 8 and job.changes["deleted"] == 8
    assert stats["inputs_embedded"] == 0
    check_exact(tmp_path, docs)


async def until(done: Any) -> None:
    """Wait (polling: the job has no event for it) until ``done()`` holds."""
    while not done():
        await anyio.sleep(0.02)


@asynccontextmanager
async def watching(cfg: Config) -> AsyncIterator[tuple[Job, Any]]:
    """A watcher of ``cfg`` running against a fresh fake server, with 60 s for the block; when the block
    ends it is asked to stop (as by SIGTERM) and waited for. Yields the job and the server."""
    async with running_server(ServerOptions(port=0, fake=True, dimensions=8)) as server:
        emb = cfg.embedding.model_copy(update={"url": server.url})
        job = Job(cfg.model_copy(update={"embedding": emb}), handle_signals=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(job.run)
            with anyio.fail_after(60):
                yield job, server
            job.shutdown.request(15)


async def test_a_watch_round_pays_for_the_edited_paragraph_only(tmp_path: Path) -> None:
    """A watcher's round replacing an edited document takes the unchanged chunks' vectors from the
    dataset itself (the shard files it retires stay readable until the round ends)."""
    src = tmp_path / "in"
    src.mkdir()
    paragraphs = [f"Paragraph {p}. " + " ".join(f"word{p}-{k}" for k in range(20)) for p in range(6)]
    (src / "doc.md").write_text("\n\n".join(paragraphs))
    (src / "other.md").write_text("Another document, never edited.")
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []},
                      chunking={"max_chars": 300}, run={"watch": True, "poll_interval_s": 0.05})
    async with watching(cfg) as (job, server):
        await until(lambda: job.changes.get("new") == 2 and job.commit.sink.counts.rows_embedded == 7
                    and job.progress.shards >= 1)  # the commit is counted once its callback ran
        shards = job.progress.shards
        paragraphs[3] = paragraphs[3].replace("word3-7 ", "WORD ")
        (src / "doc.md").write_text("\n\n".join(paragraphs))
        touch_later(src / "doc.md")
        await until(lambda: job.changes.get("changed") == 1 and job.progress.shards > shards)
    stats = server.stats.snapshot()
    assert 8 <= stats["inputs_embedded"] <= 9  # 7 at first, then the edited paragraph's one or two
    table = current(tmp_path)
    assert table.num_rows == 7 and "WORD" in "".join(table["text"].to_pylist())
    assert len(list((tmp_path / "out" / "data").glob("*.parquet"))) == len(
        [s for s in json.loads((tmp_path / "out" / "_manifest.json").read_text())["shards"] if s["kind"] == "data"])


async def test_a_watcher_counts_a_bad_line_of_a_file_read_again_once(tmp_path: Path) -> None:
    """A watcher reads an edited file again whole: its bad line, still there, is one failure in the
    progress and run_finished counts, as in the dataset, not one more each round; a file never edited
    is one unchanged input, not one a round."""
    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "b.jsonl", {"b0": "never edited"})
    good = json.dumps({"id": "a0", "text": "zero"}) + "\n"
    (src / "a.jsonl").write_text(good + "{not json\n")
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []},
                      run={"watch": True, "poll_interval_s": 0.05})
    async with watching(cfg) as (job, _):
        await until(lambda: job.changes.get("new") == 2)  # the sink is open
        for edit in range(1, 3):
            shards = job.progress.shards
            await until(lambda: job.commit.sink.counts.records_read == 3 and job.progress.shards > shards)
            (src / "a.jsonl").write_text(good.replace("zero", f"edit {edit}") + "{not json\n")
            touch_later(src / "a.jsonl")
            await until(lambda: job.changes.get("changed") == edit)
        shards = job.progress.shards
        await until(lambda: job.progress.shards > shards)
    assert job.commit.sink.counts.rows_failed == 1
    assert job.progress.counts.rows_failed == 1 == job.progress.fields()["failed"]
    assert job.changes["changed"] == 2 and job.changes["unchanged"] == 1


async def test_a_half_written_last_line_is_read_again_once_completed(tmp_path: Path) -> None:
    """A JSONL file read while its writer was mid-line: once the line is completed (and more appended),
    the file is read again whole, not read on after its last location, so the record is not lost and
    its invalid_json error row goes."""
    src = tmp_path / "in"
    src.mkdir()
    path = src / "p.jsonl"
    path.write_text('{"id": "x1", "text": "first"}\n{"id": "x2", "te')
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []})
    _, first, _ = await rerun(cfg)
    assert first.totals["rows_failed"] == 1
    with open(path, "a") as f:
        f.write('xt": "second, now complete"}\n{"id": "x3", "text": "third"}\n')
    touch_later(path)
    job, result, stats = await rerun(cfg)
    assert job.changes["changed"] == 1 and job.changes["appended"] == 0
    assert result.exit_code == 0 and result.totals["rows_failed"] == 0
    check_exact(tmp_path, {"x1": "first", "x2": "second, now complete", "x3": "third"})
    assert stats["inputs_embedded"] == 2  # x1 keeps its vector


async def test_a_line_glued_to_a_last_line_without_newline_is_not_lost_silently(tmp_path: Path) -> None:
    """Appending to a file whose last line had no newline glues two records into one invalid line: the
    file is read again and that line is an error row, not skipped as if it were already read."""
    src = tmp_path / "in"
    src.mkdir()
    path = src / "n.jsonl"
    path.write_text('{"id": "x1", "text": "first"}\n{"id": "x2", "text": "second"}')
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []})
    await rerun(cfg)
    with open(path, "a") as f:
        f.write('{"id": "x3", "text": "glued"}\n')
    touch_later(path)
    job, result, _ = await rerun(cfg)
    assert job.changes["changed"] == 1
    assert result.totals["rows_failed"] == 1 and result.totals["rows_embedded"] == 1


def counted_listings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one at each listing a watcher makes."""
    from pipeline.jobs import watch

    listings: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        listings.append(1)
        return list_source(*args, **kwargs)

    monkeypatch.setattr(watch, "list_source", counted)
    return listings


async def test_a_watcher_warns_of_a_sink_inside_its_source_once(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A sink inside the source is left out of every listing, and said once, not once a poll."""
    listings = counted_listings(monkeypatch)
    src = tmp_path / "in"
    src.mkdir()
    jsonl(src / "a.jsonl", {"a0": "zero"})
    cfg = make_config(tmp_path, "http://placeholder", source={"metadata_fields": []},
                      sink={"path": str(src / "embedded")}, run={"watch": True, "poll_interval_s": 0.05})
    with capture_logs() as logs:
        async with watching(cfg) as (job, _):
            await until(lambda: job.progress.shards >= 1)  # the dataset's files are in the source now
            after = len(listings)
            await until(lambda: len(listings) >= after + 3)
    assert [e["event"] for e in logs].count("sink_inside_source") == 1


async def test_a_watcher_says_a_file_deleted_under_keep_once(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With run.on_deleted: keep, the round that finds a file gone logs watch_found deleted=1 kept=1 (as a
    run's summary counts it), once, not on every later round that still misses it."""
    listings = counted_listings(monkeypatch)
    cfg = a_and_b(tmp_path, on_deleted="keep", watch=True, poll_interval_s=0.05)
    with capture_logs() as logs:
        async with watching(cfg) as (job, _):
            await until(lambda: job.changes.get("new") == 2 and job.progress.shards >= 1)
            (tmp_path / "in" / "b.jsonl").unlink()
            await until(lambda: job.changes.get("kept") == 1)
            after = len(listings)
            await until(lambda: len(listings) >= after + 3)
    found = [(e["new"], e["deleted"], e.get("kept")) for e in logs if e["event"] == "watch_found"]
    assert found == [(2, 0, None), (0, 1, 1)], found
    check_exact(tmp_path, {"a0": "zero", "b0": "one"})
