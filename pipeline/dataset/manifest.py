"""The dataset's ledger: ``_manifest.json``.

The manifest names every committed shard with its accounting (rows, requests,
tokens, the records it completed), the runs that wrote them, and the files
of the resume state (``state``): how far each input is committed, the
signature it had, which shards hold its rows (see :mod:`state`). A shard
file exists before the manifest lists it, so a reader that goes by the
manifest never sees a half-written shard. ``totals`` are always recomputed
from the shard entries, so they match the files.

A manifest of format 1 kept that state in itself (``progress``, ``files``,
``offsets``, ``ends``, and ``sources`` and ``marks`` in its shard entries);
it opens, and the next save writes its state to files.

With ``world_size > 1`` each rank keeps its own part in
``_manifests/{rank:05d}.json``; :func:`merge` combines the parts.
"""

from __future__ import annotations

import os
import uuid
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import fsspec
import orjson
import pyarrow as pa

from pipeline.dataset.state import State, of_url  # noqa: F401 (of_url: for the modules that import it here)
from pipeline.errors import SinkError
from pipeline.storage import is_local, join
from pipeline.types import Counts, Mark

FORMAT_VERSION = 2
#: the previous format, whose state is taken in on open
LEGACY_VERSIONS = (1,)
MANIFEST = "_manifest.json"
RANK_MANIFESTS = "_manifests"

#: ``data/part-00000-000012.parquet`` → rank 0, seq 12
SHARD_NAME = re.compile(r"part-(\d{5})-(\d{6})\.(parquet|arrow)$")


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string (``2024-05-01T12:00:00.123Z``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")




def shard_rank_seq(path: str) -> tuple[int, int] | None:
    """The (rank, seq) in a shard path, or None when it is not a shard name."""
    m = SHARD_NAME.search(path)
    return (int(m.group(1)), int(m.group(2))) if m else None


def manifest_name(rank: int = 0, world_size: int = 1) -> str:
    """Where a rank keeps its manifest, relative to the dataset root."""
    return MANIFEST if world_size <= 1 else f"{RANK_MANIFESTS}/{rank:05d}.json"


def entry_counts(entry: dict[str, Any]) -> Counts:
    """The counts one shard entry stands for (its rows count as embedded or failed by kind)."""
    rows = int(entry.get("rows", 0))
    data = entry["kind"] == "data"
    return Counts(
        records_read=int(entry.get("records", 0)),
        rows_embedded=rows if data else 0,
        rows_reused=int(entry.get("rows_reused", 0)),
        rows_failed=0 if data else rows,
        requests=int(entry.get("requests", 0)),
        retries=int(entry.get("retries", 0)),
        prompt_tokens=int(entry.get("prompt_tokens", 0)),
        total_tokens=int(entry.get("total_tokens", 0)),
    )


@dataclass
class Manifest:
    """The contents of ``_manifest.json``; ``totals`` are derived from ``shards``."""

    model: str
    input_type: str | None
    embedding_type: str
    dimensions: int | None = None
    shards: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    #: columns of ``data/`` as ``{"name", "type"}``; every shard's schema casts to it
    schema: list[dict[str, str]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    #: the ``chunking`` section the dataset was cut with (a rerun with another is refused)
    chunking: dict[str, Any] | None = None
    #: the ``source.id_field`` the dataset's ids were taken from (a rerun with another is refused; None: made
    #: by a version that did not record it, taken as made with the config's)
    id_field: str | None = None
    #: the model the server says answered (``model`` of its answers), when it said
    reported_model: str | None = None
    #: the resume state's files, oldest first: ``{"path", "rows", "bytes"}`` (see :mod:`state_files`)
    state_files: list[dict[str, Any]] = field(default_factory=list)
    #: data shards that left ``shards`` when a changed input's old rows were replaced, kept until its new
    #: rows are whole (``{"path", "kind", "rows", "inputs": {url: [keys]}}``): a run cut short in between
    #: leaves the rest of the input's unchanged chunks to the next run, which takes their vectors from these
    retired: list[dict[str, Any]] = field(default_factory=list)
    #: keys this version does not know, kept so that saving does not drop them
    extra: dict[str, Any] = field(default_factory=dict)
    #: the resume state in memory; None until :func:`state_files.load` reads it
    state: State | None = field(default_factory=State, repr=False, compare=False)
    #: what the files after the first hold (input names, shard paths), for merging them
    state_held: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict, repr=False, compare=False)
    #: the ranks' manifests this one was merged from
    parts: list[Manifest] = field(default_factory=list, repr=False, compare=False)

    # ------------------------------------------------------------ construction

    @classmethod
    def new(cls, model: str, input_type: str | None, embedding_type: str) -> Manifest:
        """An empty manifest for a dataset made with this model and types."""
        return cls(model=model, input_type=input_type, embedding_type=embedding_type)

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> Manifest:
        """A manifest from its JSON form; ``SinkError`` naming ``where`` when malformed."""
        if not isinstance(data, dict):
            raise SinkError(f"{where}: not a pipeline manifest (expected a JSON object)")
        version = data.get("format_version")
        if version != FORMAT_VERSION and version not in LEGACY_VERSIONS:
            raise SinkError(
                f"{where}: format_version {version!r} is not supported (this pipeline writes {FORMAT_VERSION}); "
                "use another sink.path, or `pipeline run --fresh` to start the dataset over"
            )
        try:
            known = {
                "model": str(data["model"]),
                "input_type": data.get("input_type"),
                "embedding_type": str(data["embedding_type"]),
                "dimensions": data.get("dimensions"),
                "shards": [dict(s) for s in data.get("shards") or []],
                "runs": [dict(r) for r in data.get("runs") or []],
                "schema": [dict(c) for c in data.get("schema") or []],
                "chunking": dict(data["chunking"]) if data.get("chunking") is not None else None,
                "id_field": str(data["id_field"]) if data.get("id_field") is not None else None,
                "reported_model": str(data["reported_model"]) if data.get("reported_model") else None,
                "state_files": [{"path": str(f["path"]), "rows": int(f["rows"]), "bytes": int(f.get("bytes", 0))}
                                for f in data.get("state") or []],
                "retired": [dict(s) for s in data.get("retired") or []],
            }
            for entry in known["shards"]:
                if not isinstance(entry.get("path"), str) or entry.get("kind") not in ("data", "errors"):
                    raise SinkError(f"{where}: malformed shard entry {entry!r}")
            state = State.from_legacy(data, known["shards"]) if version in LEGACY_VERSIONS else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SinkError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from exc
        if state is None and not known["state_files"]:
            state = State()  # nothing to read
        skip = set(known) | {"format_version", "totals", "state", "progress", "files", "offsets", "ends"}
        extra = {k: v for k, v in data.items() if k not in skip}
        return cls(**known, extra=extra, state=state)

    @classmethod
    def load(cls, fs: fsspec.AbstractFileSystem, root: str, name: str = MANIFEST) -> Manifest | None:
        """The manifest at ``root/name``, or None when there is none."""
        path = join(root, name)
        try:
            raw = fs.cat_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SinkError(f"cannot read {path}: {exc}") from exc
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SinkError(f"{path} is not valid JSON ({exc}); restore it or move the dataset away") from exc
        return cls.from_dict(data, where=path)

    # ------------------------------------------------------------ derived values

    @property
    def counts(self) -> Counts:
        """Sums over the shard entries (``records_read`` is the sum of their ``records``)."""
        total = Counts()
        for s in self.shards:
            total += entry_counts(s)
        return total

    @property
    def totals(self) -> dict[str, int]:
        """:attr:`counts` by name, as ``_manifest.json`` shows them."""
        return self.counts.as_dict()

    @property
    def loaded(self) -> State:
        """The resume state; it must have been loaded (:func:`state_files.load`)."""
        if self.state is None:
            raise RuntimeError("the manifest's resume state was not loaded (state_files.load)")
        return self.state

    def done_upto(self, key: str) -> int:
        """How far input ``key`` (a file url, plus its piece) is committed: a location, 0 if not started."""
        return self.loaded.done_upto(key)

    def last_seq(self, rank: int, kind: str) -> int:
        """The highest shard seq of ``kind`` committed by ``rank``, or -1."""
        seqs = [
            rs[1]
            for s in self.shards
            if s["kind"] == kind and (rs := shard_rank_seq(s["path"])) is not None and rs[0] == rank
        ]
        return max(seqs, default=-1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (with ``totals``)."""
        optional = {"chunking": self.chunking, "id_field": self.id_field, "reported_model": self.reported_model, "retired": self.retired}
        return {
            **self.extra,
            **{k: v for k, v in optional.items() if v},
            "format_version": self.format_version,
            "model": self.model,
            "input_type": self.input_type,
            "embedding_type": self.embedding_type,
            "dimensions": self.dimensions,
            "schema": self.schema,
            "shards": self.shards,
            "totals": self.totals,
            "runs": self.runs,
            "state": self.state_files,
        }

    def to_json(self) -> bytes:
        """Sorted, indented JSON, for people as much as for programs."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"

    # ------------------------------------------------------------ changes

    def check_compatible(
        self, model: str, input_type: str | None, embedding_type: str, *, where: str = "the dataset"
    ) -> None:
        """Raise ``SinkError`` unless the dataset was made with the same model and types."""
        mine = (self.model, self.input_type, self.embedding_type)
        theirs = (model, input_type, embedding_type)
        if mine != theirs:
            raise SinkError(
                f"dataset at {where} was made with model={self.model!r}, input_type={self.input_type!r}, "
                f"embedding_type={self.embedding_type!r}; refusing to mix in model={model!r}, "
                f"input_type={input_type!r}, embedding_type={embedding_type!r} "
                "(use another sink.path, or `pipeline run --fresh` to start it over)"
            )

    def set_dimensions(self, dimensions: int, *, where: str = "the dataset") -> None:
        """Record the vector dimensions, or raise ``SinkError`` if they changed."""
        if self.dimensions is None:
            self.dimensions = dimensions
        elif self.dimensions != dimensions:
            raise SinkError(
                f"dataset at {where} holds {self.dimensions}-dimensional vectors; "
                f"the API now returns {dimensions} dimensions, refusing to mix them"
            )

    def add_commit(
        self,
        entries: Iterable[dict[str, Any]],
        marks: Iterable[Mark] | dict[str, int] = (),
        schema: pa.Schema | None = None,
        last: dict[str, int] | None = None,
    ) -> None:
        """Record the shards of one commit and how far each input file is now done.

        An input reaching ``END_OF_FILE`` keeps the location of its last
        record (``last`` holds this commit's, by key; see :meth:`State.advance`).
        """
        self.shards.extend(entries)
        items = marks.items() if isinstance(marks, dict) else marks
        self.loaded.advance(items, last)
        if schema is not None:
            self.schema = merge_schema(self.schema, describe_schema(schema))

    def start_run(self, started_at: str, *, rank: int = 0) -> dict[str, Any]:
        """Append a run in status ``running``; a run left ``running`` before it becomes ``unfinished``."""
        for run in self.runs:
            if run.get("status") == "running" and run.get("rank", 0) == rank:
                run["status"] = "unfinished"  # its process died without closing the dataset
        run = {"started_at": started_at, "finished_at": None, "status": "running", "rank": rank}
        self.runs.append(run)
        return run

    # ------------------------------------------------------------ saving

    def save(
        self, fs: fsspec.AbstractFileSystem, root: str, name: str = MANIFEST, condition: dict[str, Any] | None = None
    ) -> Any:
        """Write atomically: local → temp file, fsync, rename; object store → one PUT.

        ``condition`` goes with the PUT on an object store (``{"IfMatch":
        etag}``, or ``{"mode": "create"}``); the store's answer is returned
        (s3fs: the PutObject answer, with the new ETag). The store's errors
        are raised as they come: the writer retries the transient ones and
        translates what is left.
        """
        path = join(root, name)
        data = self.to_json()
        if not is_local(fs):
            return fs.pipe_file(path, data, **(condition or {}))
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        # unique: with several ranks, two processes may rebuild _manifest.json at once
        tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                try:
                    os.remove(tmp)
                except OSError:
                    pass


def load_rank(
    fs: fsspec.AbstractFileSystem, root: str, rank: int = 0, world_size: int = 1
) -> Manifest | None:
    """The manifest this rank writes to (None when it has none yet)."""
    return Manifest.load(fs, root, manifest_name(rank, world_size))


def save_rank(
    manifest: Manifest,
    fs: fsspec.AbstractFileSystem,
    root: str,
    rank: int = 0,
    world_size: int = 1,
    condition: dict[str, Any] | None = None,
) -> Any:
    """Save this rank's manifest: ``_manifest.json``, or its part in ``_manifests/``.

    With several ranks, ``_manifest.json`` is then rebuilt from every part,
    so it is the merged view whoever saves last. ``condition`` applies to the
    rank's own manifest (see :meth:`Manifest.save`), whose answer is returned.
    """
    answer = manifest.save(fs, root, manifest_name(rank, world_size), condition)
    if world_size > 1:
        rebuild(fs, root)
    return answer


def _parts(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, bytes]:
    try:
        names = sorted(fs.glob(join(root, RANK_MANIFESTS, "*.json")))
    except (OSError, ValueError):
        return {}
    out = {}
    for name in names:
        try:
            out[name] = fs.cat_file(name)
        except FileNotFoundError:
            continue
    return out


def _merge_parts(parts: dict[str, bytes], root: str) -> Manifest:
    loaded = []
    for name, raw in parts.items():
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SinkError(f"{name}: not valid JSON ({exc})") from exc
        loaded.append(Manifest.from_dict(data, where=name))
    return merge(loaded)


def rebuild(fs: fsspec.AbstractFileSystem, root: str) -> Manifest | None:
    """Write ``_manifest.json`` as the merge of ``_manifests/*.json``; None when there are no parts.

    Ranks finishing together may each rebuild; each re-reads the parts after
    writing and rebuilds again if one changed meanwhile, so the last writer's
    view includes every part it could see.
    """
    merged = None
    parts = _parts(fs, root)
    for _ in range(5):
        if not parts:
            return merged
        merged = _merge_parts(parts, root)
        merged.save(fs, root)
        again = _parts(fs, root)
        if again == parts:
            break
        parts = again
    return merged


def merge(manifests: Iterable[Manifest]) -> Manifest:
    """One manifest from the parts of several ranks (same model and types required)."""
    parts = list(manifests)
    if not parts:
        raise ValueError("merge() needs at least one manifest")
    first = parts[0]
    out = Manifest.new(first.model, first.input_type, first.embedding_type)
    out.state, out.parts = None, parts  # read from the parts' files when asked (state_files.load)
    for part in parts:
        out.check_compatible(part.model, part.input_type, part.embedding_type)
        if part.dimensions is not None:
            out.set_dimensions(part.dimensions)
        out.shards.extend(part.shards)
        out.schema = merge_schema(out.schema, part.schema)
        out.runs.extend(part.runs)
        out.chunking = out.chunking or part.chunking
        out.id_field = out.id_field or part.id_field
        out.reported_model = out.reported_model or part.reported_model
        out.state_files.extend(part.state_files)
        out.retired.extend(part.retired)
        for key, value in part.extra.items():
            out.extra.setdefault(key, value)
    out.shards.sort(key=lambda s: s["path"])
    out.runs.sort(key=lambda r: (r.get("started_at") or "", r.get("rank", 0)))
    return out


# --------------------------------------------------------------------------- schema


def describe_schema(schema: pa.Schema) -> list[dict[str, str]]:
    """An Arrow schema as ``[{"name", "type"}]`` (Arrow's type names)."""
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def merge_schema(old: list[dict[str, str]], new: list[dict[str, str]]) -> list[dict[str, str]]:
    """Columns of both, in order; for a column in both, the newer type wins."""
    types = {c["name"]: c["type"] for c in new}
    out = [{"name": c["name"], "type": types.pop(c["name"], c["type"])} for c in old]
    out.extend({"name": c["name"], "type": c["type"]} for c in new if c["name"] in types)
    return out


def load_dataset_manifest(fs: fsspec.AbstractFileSystem, root: str) -> Manifest | None:
    """The dataset as its files say: the merge of ``_manifests/*.json`` when there
    are per-rank parts (they are the truth; ``_manifest.json`` is their merged
    copy), else ``_manifest.json``."""
    parts = _parts(fs, root)
    if parts:
        return _merge_parts(parts, root)
    return Manifest.load(fs, root)
