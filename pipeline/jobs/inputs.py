"""What a job reads: this rank's inputs, and the earlier dataset ``run.reuse_from`` names."""

from __future__ import annotations

import hashlib
from typing import Any

from pipeline.config import Config
from pipeline.dataset.reuse_index import ReuseIndex
from pipeline.sources.readers import open_source, split_for_workers
from pipeline.types import InputFile


def assign(cfg: Config, fs: Any, files: list[InputFile]) -> list[InputFile]:
    """The files (or pieces of large files) this worker owns.

    With several workers, files over ``source.split_bytes`` are first cut
    into pieces; each file or piece goes to the worker its key hashes to, a
    choice that is stable across reruns and listing order.
    """
    rank, world_size = cfg.run.rank, cfg.run.world_size
    if world_size == 1:
        return files
    files = split_for_workers(fs, files, cfg.source.split_bytes)
    return [
        f
        for f in files
        if int.from_bytes(hashlib.sha256(f.key.encode()).digest()[:8], "big") % world_size == rank
    ]


def list_inputs(cfg: Config) -> tuple[Any, list[InputFile]]:
    """The source's filesystem and the inputs of this rank (``SourceError`` when nothing is there)."""
    fs, files = open_source(cfg.source)
    return fs, assign(cfg, fs, files)


def open_reuse_index(cfg: Config) -> ReuseIndex:
    """The index of ``run.reuse_from`` (an earlier dataset, on the sink's storage options)."""
    assert cfg.run.reuse_from is not None
    emb = cfg.embedding
    return ReuseIndex.open(
        cfg.run.reuse_from,
        cfg.sink.storage_options,
        model=emb.model,
        input_type=emb.input_type,
        embedding_type=emb.embedding_type,
        dimensions=emb.dimensions,
    )
