"""What the tests of pipeline.sources share: JSONL bytes, and every record of a source read in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from pipeline.config import SourceConfig
from pipeline.sources.listing import open_source
from pipeline.sources.readers import read_records
from pipeline.types import Failure, Record


def jsonl(*objs: Any) -> bytes:
    """Objects (or raw byte lines) as JSONL, one per line."""
    return b"".join((o if isinstance(o, bytes) else orjson.dumps(o)) + b"\n" for o in objs)


def read_all(path: str | Path, **cfg: Any) -> list[Record | Failure]:
    """Every record (or failure) of the source at ``path`` with ``cfg``, file by file."""
    source = SourceConfig(path=str(path), **cfg)
    fs, files = open_source(source)
    out: list[Record | Failure] = []
    for inp in files:
        out.extend(read_records(source, fs, inp))
    return out
