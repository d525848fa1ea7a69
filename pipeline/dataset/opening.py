"""Opening a dataset for a rank: its manifest, and what a crash or a lifecycle rule left behind."""

from __future__ import annotations

import os
import posixpath
from typing import Any

import fsspec

from pipeline.dataset import state_files
from pipeline.dataset.manifest import Manifest, load_rank, shard_rank_seq
from pipeline.errors import SinkError
from pipeline.logs import get_logger
from pipeline.storage import join

KINDS = ("data", "errors")


def _glob(fs: fsspec.AbstractFileSystem, root: str, pattern: str) -> list[str]:
    return sorted(fs.glob(join(root, pattern)))


def enclosing_dataset(fs: fsspec.AbstractFileSystem, root: str, levels: int = 3) -> str | None:
    """The dataset (a folder with ``_manifest.json``) that holds ``root`` within ``levels`` folders up, if any.

    A sink at ``out/ds/data`` would put a second dataset's files among the
    first one's shards: every reader of ``out/ds/data`` then sees both.
    """
    parent = posixpath.dirname(root.rstrip("/"))
    for _ in range(levels):
        if not parent or parent in ("/", "."):
            return None
        if fs.exists(join(parent, "_manifest.json")):
            return parent
        up = posixpath.dirname(parent)
        if up == parent:
            return None
        parent = up
    return None


#: pseudo-filesystems of the kernel: writable-looking to root, never a place for a dataset
_VIRTUAL = ("/proc", "/sys")


def nearest_existing(path: str) -> str:
    """``path`` if something is there (a dangling link is, and is in the way), else its nearest parent that is."""
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def local_problem(path: str) -> str | None:
    """Why a local ``path`` (absolute) could not hold a dataset, found without writing anything; None if it can.

    It, or its nearest existing parent, must be a writable directory outside
    /proc and /sys. ``pipeline validate`` says so in its report; a run
    refuses with the same words before taking its lease (else the first
    error is the lease's ``Not a directory: '/etc/passwd/_locks'``).
    """
    real = os.path.realpath(path)
    for top in _VIRTUAL:
        if real == top or real.startswith(top + "/"):
            return f"inside {top}, a virtual filesystem of the kernel, not a place for files"
    existing = nearest_existing(path)
    if not os.path.isdir(existing):
        return "exists and is not a directory" if existing == path else f"cannot be created: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
    return None


def load_or_create(
    fs: fsspec.AbstractFileSystem, root: str, where: str, rank: int, world_size: int,
    model: str, input_type: str | None, embedding_type: str,
) -> Manifest:
    """This rank's manifest (with its resume state), checked against the config, or a new one for an empty place."""
    manifest = load_rank(fs, root, rank, world_size)
    if manifest is not None:
        manifest.check_compatible(model, input_type, embedding_type, where=where)
        state_files.load(fs, root, manifest)
        return manifest
    leftovers = [p for k in KINDS for p in _glob(fs, root, f"{k}/part-{rank:05d}-*")]
    if leftovers:
        raise SinkError(
            f"{where} holds shard files of rank {rank} ({leftovers[0]}, ...) "
            "but no manifest; refusing to write into it (use another sink.path)"
        )
    return Manifest.new(model, input_type, embedding_type)


def forget_missing(fs: fsspec.AbstractFileSystem, root: str, where: str, rank: int, manifest: Manifest) -> None:
    """Shards of this rank deleted from under the dataset (a lifecycle rule, a hand ``rm``): rebuild them.

    Commits are a prefix of each rank's input in read order, so the first
    missing shard and every later one of this rank leave the manifest (their
    files are then strays), and how far each input is done is recomputed
    from the shards that remain: the next read embeds their rows again.
    Shards written by ``retry-failed`` carry no read position; with one of
    them among the later shards the dataset is refused instead.
    """
    mine = [s for s in manifest.shards if (rs := shard_rank_seq(s["path"])) is not None and rs[0] == rank]
    present: dict[str, int | None] = {}
    for kind in KINDS:
        found = fs.glob(join(root, f"{kind}/part-{rank:05d}-*"), detail=True)
        present.update({path: info.get("size") for path, info in found.items()})

    def gone(entry: dict[str, Any]) -> bool:  # missing, or not the size it was published with (cut short)
        path = join(root, entry["path"])
        return path not in present or entry.get("bytes") not in (None, present[path])

    missing = [s for s in mine if gone(s)]
    if not missing:
        return
    first = mine.index(missing[0])
    dropped = mine[first:]
    names = ", ".join(s["path"] for s in missing[:3]) + (", ..." if len(missing) > 3 else "")
    state = manifest.loaded
    if any(s["rows"] and not state.marks.get(s["path"]) and s["kind"] == "data" for s in dropped):
        raise SinkError(
            f"{where}: {len(missing)} listed shard(s) are missing ({names}) and pipeline retry-failed "
            "moved rows after them; restore the files, or `pipeline run --fresh` to start the dataset over"
        )
    kept = [s for s in manifest.shards if s not in dropped]
    manifest.shards[:] = kept
    state.rebuild_progress([s["path"] for s in kept])
    for entry in dropped:
        state.drop_shard(entry["path"])
    get_logger().warning(
        "shards_missing", missing=names, count=len(missing), rebuilding_rows=sum(s["rows"] for s in dropped),
        hint="these shards and the later ones of this rank leave the manifest; their rows are embedded again",
    )


def clean_up(fs: fsspec.AbstractFileSystem, root: str, rank: int, manifest: Manifest) -> None:
    """Delete this rank's temp files and the shard and state files the manifest does not list.

    Those are left by a crash between publishing a shard (or writing a state
    file) and saving the manifest, or between retiring one and deleting it.
    Retired shards the manifest keeps for an unfinished replacement stay.
    """
    state_files.clean_up(fs, root, rank, manifest)
    listed = {join(root, s["path"]) for s in [*manifest.shards, *manifest.retired]}
    for kind in KINDS:
        stray = _glob(fs, root, f"{kind}/.part-{rank:05d}-*.tmp")
        for path in _glob(fs, root, f"{kind}/part-{rank:05d}-*"):
            if shard_rank_seq(path) is not None and path not in listed:
                stray.append(path)
        for path in stray:
            fs.rm_file(path)
