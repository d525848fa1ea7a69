"""``pipeline validate``: what a run would do, counted without calling the API."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.config import Config
from pipeline.embed.tokens import estimate_tokens
from pipeline.jobs.inputs import list_inputs, open_reuse_index
from pipeline.stages.chunk import Chunker
from pipeline.stages.read import file_items
from pipeline.types import Failure, FileEnd, InputFile


@dataclass
class Estimate:
    """What ``pipeline validate`` found, without calling the API."""

    files: list[InputFile]
    records: int = 0
    bad_records: int = 0
    chunks: int = 0
    chars: int = 0
    tokens: int = 0
    reusable_chunks: int = 0  # chunks whose vector run.reuse_from already holds
    reusable_tokens: int = 0
    requests: int = 0
    minutes: float | None = None
    cost_usd: float | None = None
    by_error: dict[str, int] = field(default_factory=dict)


def estimate(cfg: Config) -> Estimate:
    """Read every input, count records and chunks, estimate tokens, requests, time, cost.

    With ``run.reuse_from``, chunks the earlier dataset already holds are
    counted apart: they cost no token and no request.
    """
    fs, files = list_inputs(cfg)
    emb = cfg.embedding
    chunker = Chunker(cfg.chunking, model=emb.model, input_type=emb.input_type, embedding_type=emb.embedding_type)
    est = Estimate(files=files)
    index = open_reuse_index(cfg) if cfg.run.reuse_from else None
    pending: list[tuple[str, int]] = []  # (content hash, tokens) waiting for a reuse lookup

    def settle() -> None:
        if index is not None and pending:
            found = index.contains([h for h, _ in pending])
            est.reusable_chunks += int(found.sum())
            est.reusable_tokens += sum(t for (_, t), hit in zip(pending, found) if hit)
        pending.clear()

    try:
        _count(cfg, fs, files, chunker, est, pending, settle)
    finally:
        if index is not None:
            index.close()
    est.tokens -= est.reusable_tokens
    est.requests = math.ceil((est.chunks - est.reusable_chunks) / emb.batch_size)
    limits = []
    if emb.requests_per_minute:
        limits.append(est.requests / emb.requests_per_minute)
    if emb.tokens_per_minute:
        limits.append(est.tokens / emb.tokens_per_minute)
    est.minutes = max(limits) if limits else None
    if emb.usd_per_million_tokens is not None:
        est.cost_usd = est.tokens * emb.usd_per_million_tokens / 1e6
    return est


def _count(cfg: Config, fs: Any, files: list[InputFile], chunker: Chunker, est: Estimate,
           pending: list[tuple[str, int]], settle: Callable[[], None]) -> None:
    """Read every file, counting records, failures, chunks and estimated tokens."""
    for inp in files:
        for item in file_items(cfg.source, fs, inp, 0):
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
                tokens = estimate_tokens(chunk.text)
                est.tokens += tokens
                pending.append((chunk.content_hash, tokens))
                if len(pending) >= 4096:
                    settle()
    settle()
