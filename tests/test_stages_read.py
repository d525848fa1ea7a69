"""The read stage: records from where each file was committed, and bytes read inside a file for progress."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import anyio
import fsspec
import pytest

from pipeline.config import SourceConfig
from pipeline.jobs.progress import Progress
from pipeline.sources.listing import open_source
from pipeline.stages.read import Checkpoints, read_stage
from pipeline.types import FileEnd, Record

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("name", ["big.jsonl", "big.jsonl.gz"])
async def test_progress_moves_inside_one_big_file(tmp_path: Path, name: str) -> None:
    """With one big input file, progress counts the (compressed) bytes read, not 0% until the file ends."""
    lines = "".join(json.dumps({"id": str(i), "text": f"record {i} " + "x" * 200}) + "\n" for i in range(20_000))
    data = lines.encode()
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    cfg = SourceConfig(path=str(tmp_path / name))
    fs, files = open_source(cfg)
    progress = Progress()
    for inp in files:
        progress.expect(inp)
    fractions: list[float] = []
    send, receive = anyio.create_memory_object_stream[list](1)
    records = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: read_stage(files, send, cfg=cfg, fs=fs, done_upto=lambda _: 0,
                                         checkpoints=Checkpoints(), cpu=anyio.CapacityLimiter(1),
                                         on_bytes=progress.read_bytes))
        with anyio.fail_after(60), receive:
            async for block in receive:
                records += sum(isinstance(item, Record) for item in block)
                if not any(isinstance(item, FileEnd) for item in block):
                    fractions.append(progress.fraction or 0.0)
    assert records == 20_000
    assert any(0 < f < 1 for f in fractions)  # it moved while the file was being read
    assert progress.reading[files[0].key] == files[0].size  # every byte of the file, as listed
