"""Reading a file dataset's resume state in tests, as the pipeline does (``_state/`` files the manifest lists)."""

from __future__ import annotations

from typing import Any

import fsspec

from pipeline.dataset import state_files
from pipeline.dataset.manifest import Manifest, load_dataset_manifest
from pipeline.dataset.state import State


def read_state(root: Any, fs: fsspec.AbstractFileSystem | None = None) -> State:
    """The resume state of the dataset at ``root`` (a local path, or a path on ``fs``)."""
    fs = fs or fsspec.filesystem("file")
    manifest = load_dataset_manifest(fs, str(root))
    assert manifest is not None, f"no dataset at {root}"
    return state_files.load(fs, str(root), manifest)


def state_of(manifest: Manifest) -> State:
    """The state of a manifest an open writer holds."""
    assert manifest.state is not None
    return manifest.state


def as_format_1(root: Any) -> dict[str, Any]:
    """Rewrite the local dataset at ``root`` as the previous pipeline version wrote it; its manifest.

    Format 1 kept the resume state in ``_manifest.json`` (``progress``, ``files``,
    ``offsets``, ``ends``, and ``sources`` and ``marks`` in each shard entry)
    and had no ``_state/`` directory.
    """
    import json
    import shutil
    from pathlib import Path

    root = Path(root)
    state = read_state(root)
    manifest = json.loads((root / "_manifest.json").read_text())
    manifest["format_version"] = 1
    manifest.pop("state", None)
    manifest.update(progress=dict(state.progress), files=dict(state.files), offsets=state.offsets,
                    ends=dict(state.ends))  # dict-like columns (pipeline.dataset.state_base), as JSON objects
    for entry in manifest["shards"]:
        entry["marks"] = state.marks.get(entry["path"], {})
        if entry["path"] in state.sources:
            entry["sources"] = state.sources[entry["path"]]
    (root / "_manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(root / "_state", ignore_errors=True)
    return manifest
