"""What a job reads: this rank's inputs, and the earlier dataset ``run.reuse_from`` names."""

from __future__ import annotations

import os
import posixpath
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.dataset.postgres_schema import is_postgres
from pipeline.dataset.reuse_index import ReuseIndex
from pipeline.dataset.self_reuse import StoredVectors
from pipeline.errors import SinkError, SourceError
from pipeline.logs import get_logger
from pipeline.sources.listed import Inputs
from pipeline.sources.listing import assign, open_source
from pipeline.storage import Location


def list_inputs(cfg: Config) -> tuple[Any, Inputs]:
    """The source's filesystem and the inputs of this rank (``SourceError`` when nothing is there)."""
    fs, _, mine = list_source(cfg)
    return fs, mine


def list_source(cfg: Config, skipped: dict[str, int] | None = None,
                warned: set[str] | None = None) -> tuple[Any, Inputs, Inputs]:
    """The source's filesystem, every listed input (every rank's), and the inputs of this rank (files
    ``format: auto`` leaves out for their extension are counted in ``skipped``; a warning named in
    ``warned`` is not given again, and is added there once given: a watcher lists every round).

    A sink inside the source (``source.path: data/``, ``sink.path:
    data/embedded``) would have every run embed the dataset's own shards
    again: its files are left out of the listing.
    """
    fs, files = open_source(cfg.source, skipped)
    inside = _sink_prefix(cfg, fs)
    if inside is not None:
        kept = files.where(~files.starting_with(inside))
        # said before its files are there too (the first run, validate before it)
        under = len(kept) < len(files) or _under_source(cfg, fs, inside)
        if under and "sink_inside_source" not in (warned or ()):
            if warned is not None:
                warned.add("sink_inside_source")
            get_logger().warning("sink_inside_source", sink=cfg.sink.path, source=cfg.source.path,
                                 left_out=len(files) - len(kept))
        if not len(kept):
            raise SourceError(
                f"no input files in source.path {cfg.source.path} outside sink.path {cfg.sink.path}"
            )
        files = kept
    return fs, files, assign(fs, files, cfg.run.rank, cfg.run.world_size, cfg.source.split_bytes)


def _sink_prefix(cfg: Config, source_fs: Any) -> str | None:
    """``sink.path`` as the listing's urls spell it, with a trailing ``/``; None on another store."""
    return _prefix(cfg.sink.path, cfg.sink.storage_options, source_fs)


def _under_source(cfg: Config, source_fs: Any, sink_prefix: str) -> bool:
    """Whether the sink's folder lies inside ``source.path`` (a folder, not a glob), files there or not."""
    if any(c in cfg.source.path for c in "*?["):
        return False
    source = _prefix(cfg.source.path, cfg.source.storage_options, source_fs, role="source.path")
    return source is not None and sink_prefix.startswith(source)


def _prefix(path: str, storage_options: dict[str, Any], source_fs: Any, role: str = "sink.path") -> str | None:
    """``path`` as the listing's urls spell it, with a trailing ``/``; None on another store."""
    try:
        where = Location.open(path, storage_options, role=role)
    except (SinkError, SourceError):  # opening the sink reports its own errors
        return None
    if type(where.fs) is not type(source_fs):
        return None
    if where.local:
        return posixpath.normpath(os.path.abspath(where.root)) + "/"
    return where.url_of(where.root) + "/"


def open_reuse_index(cfg: Config) -> ReuseIndex:
    """The index of ``run.reuse_from`` (an earlier dataset, on the sink's storage options)."""
    assert cfg.run.reuse_from is not None
    return _index_of(cfg, cfg.run.reuse_from)


def open_own_index(cfg: Config) -> ReuseIndex:
    """The index of the dataset at ``sink.path`` itself, as it is now (before a rerun changes it)."""
    return _index_of(cfg, cfg.sink.path)


def open_own_vectors(cfg: Config, sources: set[str]) -> ReuseIndex | StoredVectors | None:
    """The sink's own vectors for the chunks of the documents of ``sources`` (changed, or renamed).

    A file dataset is indexed whole (a chunk's text may sit in another
    document); a Postgres table gives the rows of ``sources`` back. None when
    there are none; ``SinkError`` when they cannot be read.
    """
    if is_postgres(cfg.sink.path):
        from pipeline.dataset.postgres_reuse import stored_vectors  # psycopg only for this sink

        return stored_vectors(cfg.sink.path, cfg.sink.table, cfg.embedding.embedding_type, sources,
                              rank=cfg.run.rank)
    return open_own_index(cfg)


def _index_of(cfg: Config, path: str) -> ReuseIndex:
    emb = cfg.embedding
    return ReuseIndex.open(
        path,
        cfg.sink.storage_options,
        model=emb.model,
        input_type=emb.input_type,
        embedding_type=emb.embedding_type,
        dimensions=emb.dimensions,
    )
