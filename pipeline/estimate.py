"""``pipeline validate``: what a run would do, counted without calling the API."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .chunking import Chunker
from .client import estimate_tokens
from .config import Config
from .runner import file_items, assign
from .sources import open_source
from .types import Failure, FileEnd, InputFile

@dataclass
class Estimate:
    """What ``pipeline validate`` found, without calling the API."""

    files: list[InputFile]
    records: int = 0
    bad_records: int = 0
    chunks: int = 0
    chars: int = 0
    tokens: int = 0
    requests: int = 0
    minutes: float | None = None
    cost_usd: float | None = None
    by_error: dict[str, int] = field(default_factory=dict)


def estimate(cfg: Config) -> Estimate:
    """Read every input, count records and chunks, estimate tokens, requests, time, cost."""
    fs, files = open_source(cfg.source)
    files = assign(files, cfg.run.rank, cfg.run.world_size)
    emb = cfg.embedding
    chunker = Chunker(cfg.chunking, model=emb.model, input_type=emb.input_type, embedding_type=emb.embedding_type)
    est = Estimate(files=files)
    for inp in files:
        for item in file_items(cfg, fs, inp, 0):
            if isinstance(item, FileEnd):
                continue
            if isinstance(item, Failure):
                est.records += 1
                est.bad_records += 1
                est.by_error[item.error_type] = est.by_error.get(item.error_type, 0) + 1
                continue
            est.records += 1
            result = chunker(item)
            if isinstance(result, Failure):
                est.bad_records += 1
                est.by_error[result.error_type] = est.by_error.get(result.error_type, 0) + 1
                continue
            for chunk in result:
                est.chunks += 1
                est.chars += len(chunk.text)
                est.tokens += estimate_tokens(chunk.text)
    est.requests = math.ceil(est.chunks / emb.batch_size)
    limits = []
    if emb.requests_per_minute:
        limits.append(est.requests / emb.requests_per_minute)
    if emb.tokens_per_minute:
        limits.append(est.tokens / emb.tokens_per_minute)
    est.minutes = max(limits) if limits else None
    if emb.usd_per_million_tokens is not None:
        est.cost_usd = est.tokens * emb.usd_per_million_tokens / 1e6
    return est
