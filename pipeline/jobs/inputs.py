"""What a job reads: this rank's inputs, and the earlier dataset ``run.reuse_from`` names."""

from __future__ import annotations

import hashlib
import os
import posixpath
from typing import Any

import fsspec

from pipeline.config import Config
from pipeline.dataset.manifest import is_local
from pipeline.dataset.reuse_index import ReuseIndex
from pipeline.errors import SourceError
from pipeline.logs import get_logger
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
    """The source's filesystem and the inputs of this rank (``SourceError`` when nothing is there).

    A sink inside the source (``source.path: data/``, ``sink.path:
    data/embedded``) would have every run embed the dataset's own shards
    again: its files are left out of the listing.
    """
    fs, files = open_source(cfg.source)
    inside = _sink_prefix(cfg, fs)
    if inside is not None:
        kept = [f for f in files if not f.url.startswith(inside)]
        if len(kept) < len(files):
            get_logger().warning("sink_inside_source", sink=cfg.sink.path, source=cfg.source.path,
                                 left_out=len(files) - len(kept))
        if not kept:
            raise SourceError(
                f"no input files in source.path {cfg.source.path} outside sink.path {cfg.sink.path}"
            )
        files = kept
    return fs, assign(cfg, fs, files)


def _sink_prefix(cfg: Config, source_fs: Any) -> str | None:
    """``sink.path`` as the listing's urls spell it, with a trailing ``/``; None on another store."""
    try:
        fs, root = fsspec.core.url_to_fs(cfg.sink.path, **cfg.sink.storage_options)
    except Exception:  # opening the sink reports its own errors
        return None
    if type(fs) is not type(source_fs):
        return None
    if is_local(fs):
        return posixpath.normpath(os.path.abspath(root)) + "/"
    return fs.unstrip_protocol(root.rstrip("/")) + "/"


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
