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
