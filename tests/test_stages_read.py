"""The read stage: records from where each file was committed, and bytes read inside a file for progress."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import anyio
import fsspec
import numpy as np
import pytest

from pipeline.config import SourceConfig
from pipeline.jobs.progress import Progress
from pipeline.sources.listing import open_source
from pipeline.stages.read import Checkpoints, file_items, read_stage
from pipeline.types import END_OF_FILE, EmbeddedBatch, Failure, FileEnd, Record, Usage

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("name", ["big.jsonl", "big.jsonl.gz"])
async def test_progress_moves_inside_one_big_file(tmp_path: Path, name: str) -> None:
    """With one big input file, progress counts the (compressed) bytes up to the last record handed to the
    sink: not 0% until the file ends, and not the bytes read ahead of what is written (a run cut short
    would say 100%)."""
    lines = "".join(json.dumps({"id": str(i), "text": f"record {i} " + "x" * 200}) + "\n" for i in range(20_000))
    data = lines.encode()
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    cfg = SourceConfig(path=str(tmp_path / name))
    fs, files = open_source(cfg)
    progress = Progress()
    for inp in files:
        progress.expect(inp)
    blocks: list[list] = []
    send, receive = anyio.create_memory_object_stream[list](1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: read_stage(files, send, cfg=cfg, fs=fs, done_upto=lambda _: 0,
                                         checkpoints=Checkpoints(), cpu=anyio.CapacityLimiter(1),
                                         on_bytes=progress.read_bytes, on_block=progress.read_items))
        with anyio.fail_after(60), receive:
            async for block in receive:
                blocks.append(block)
    records = [item for block in blocks for item in block if isinstance(item, Record)]
    assert len(records) == 20_000
    assert progress.reading[files[0].key] == files[0].size  # every byte of the file read, as listed
    assert progress.fraction == 0  # read, but nothing handed to the sink yet
    key = files[0].key
    fractions = []
    for half in (records[len(records) // 2 - 1], records[-1]):  # the sink is handed half of them, then all
        progress.add(EmbeddedBatch(0, (), np.zeros((0, 8), np.float32), Usage(), marks=((key, half.location),)))
        fractions.append(progress.fraction)
    assert fractions[0] == pytest.approx(0.5, abs=0.01) and fractions[1] == pytest.approx(1.0)
    progress.add(EmbeddedBatch(1, (), np.zeros((0, 8), np.float32), Usage(), marks=((key, END_OF_FILE),)))
    assert progress.fraction == 1.0 and progress.bytes_done == progress.bytes_total


class _Denying:
    """``fs`` whose GETs of ``denied`` are refused (an object the credentials may not read)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, denied: str) -> None:
        self._fs = fs
        self._denied = denied
        self.fetched: list[str] = []

    def cat_file(self, path: str, **kwargs: object) -> bytes:
        self.fetched.append(path)
        if path.endswith(self._denied):
            raise PermissionError(13, "Access Denied")
        return self._fs.cat_file(path, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._fs, name)


async def read_everything(files: list, fs: object, cfg: SourceConfig, done: dict[str, int] | None = None,
                          ) -> tuple[list[list], list]:
    blocks: list[list] = []
    started: list = []
    send, receive = anyio.create_memory_object_stream[list](1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: read_stage(files, send, cfg=cfg, fs=fs, done_upto=lambda key: (done or {}).get(key, 0),
                                         checkpoints=Checkpoints(), cpu=anyio.CapacityLimiter(1),
                                         on_file=started.append))
        with anyio.fail_after(60), receive:
            async for block in receive:
                blocks.append(block)
    return blocks, started


async def test_many_small_objects_come_in_listing_order_a_block_for_many(memfs: fsspec.AbstractFileSystem) -> None:
    """Small objects, fetched side by side, still come out in listing order, each record before its
    file's end; a block carries many files; files done earlier are neither fetched nor started."""
    for i in range(1500):
        memfs.pipe_file(f"/notes/n{i:04d}.md", f"note {i}".encode())
    cfg = SourceConfig(path="memory://notes")
    fs, files = open_source(cfg)
    wrapped = _Denying(fs, denied="(none)")
    done = {f.key: END_OF_FILE for f in files[:100]}
    blocks, started = await read_everything(files, wrapped, cfg, done)
    items = [item for block in blocks for item in block]
    expected = []
    for f in files[100:]:
        expected += [("record", f.rel_path), ("end", f.key)]
    assert [("record", i.doc_id) if isinstance(i, Record) else ("end", i.url) for i in items] == expected
    assert [i.text for i in items if isinstance(i, Record)][:2] == ["note 100", "note 101"]
    assert len(blocks) < 1400 / 100  # hundreds of files a block, not one
    assert started == files[100:]
    assert sorted(wrapped.fetched) == [f.path for f in files[100:]]


async def test_an_unreadable_object_among_many_fails_alone(memfs: fsspec.AbstractFileSystem) -> None:
    """An object that cannot be read ends in one failure row naming it; the objects around it are read."""
    for i in range(200):
        memfs.pipe_file(f"/notes/n{i:04d}.md", f"note {i}".encode())
    cfg = SourceConfig(path="memory://notes")
    fs, files = open_source(cfg)
    blocks, _ = await read_everything(files, _Denying(fs, denied="n0042.md"), cfg)
    items = [item for block in blocks for item in block]
    records = [i.doc_id for i in items if isinstance(i, Record)]
    assert records == [f"n{i:04d}.md" for i in range(200) if i != 42]
    failures = [i for i in items if isinstance(i, Failure)]
    assert len(failures) == 1 and failures[0].error_type == "unreadable_file"
    assert failures[0].message == f"cannot open {files[42].url}: permission denied"
    assert sum(isinstance(i, FileEnd) for i in items) == 200


async def test_small_local_text_files_read_in_hand_give_what_their_reader_gives(tmp_path: Path) -> None:
    """Small local text files (read whole, without the reader's generators) come out as the text reader
    would give them: records, a BOM dropped, failures for bad UTF-8, empty text and a file gone."""
    import gzip

    (tmp_path / "a.md").write_text("alpha")
    (tmp_path / "b.md").write_bytes(b"\xef\xbb\xbfbeta")
    (tmp_path / "c.md").write_bytes(b"bad \xff byte")
    (tmp_path / "d.txt").write_text("  \n ")
    (tmp_path / "e.md").write_text("")
    (tmp_path / "f.md").write_text("soon gone")
    (tmp_path / "g.md.gz").write_bytes(gzip.compress(b"gamma"))
    cfg = SourceConfig(path=str(tmp_path))
    fs, files = open_source(cfg)
    (tmp_path / "f.md").unlink()
    expected = [item for inp in files for item in file_items(cfg, fs, inp, 0)]
    blocks, started = await read_everything(files, fs, cfg)
    assert [item for block in blocks for item in block] == expected
    assert started == files
    assert [type(i).__name__ for i in expected if not isinstance(i, FileEnd)] == [
        "Record", "Record", "Failure", "Failure", "Failure", "Failure", "Record"]
    assert [i.error_type for i in expected if isinstance(i, Failure)] == [
        "invalid_utf8", "empty_text", "empty_text", "unreadable_file"]
