"""The job's configuration: one YAML file, validated once, up front.

Loading goes: read the file (safe loader) → apply ``--set`` overrides →
replace ``${VAR}`` / ``${VAR:-default}`` from the environment → fill the
endpoint from ``EMBEDDING_*`` → validate with pydantic (unknown keys are
errors). Every problem is a :class:`~pipeline.errors.ConfigError` whose
message names the dotted key and, when the key is in the file, its line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError

DEFAULT_MODEL = "cohere-embed-multilingual"
MAX_CHARS = 2048
MAX_BATCH = 96


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Section):
    """Where records come from (``source:``)."""

    path: str
    format: Literal["auto", "jsonl", "text", "csv", "parquet", "arrow"] = "auto"
    id_field: str = "id"
    text_field: str = "text"
    metadata_fields: list[str] = Field(default_factory=list)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    # with world_size > 1, files larger than this are cut into pieces the workers share
    split_bytes: int = Field(256 * 1024 * 1024, ge=1)


class ChunkingConfig(_Section):
    """How records are cut to fit the API (``chunking:``)."""

    strategy: Literal["split", "truncate", "reject"] = "split"
    max_chars: int = Field(MAX_CHARS, ge=1, le=MAX_CHARS)
    overlap_chars: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _overlap_below_max(self) -> ChunkingConfig:
        if self.overlap_chars >= self.max_chars:
            raise ValueError("overlap_chars must be smaller than max_chars")
        return self


class EmbeddingConfig(_Section):
    """The embeddings endpoint and how hard to use it (``embedding:``)."""

    provider: Literal["http", "local"] = "http"
    url: str | None = None
    api_key: SecretStr | None = None
    model: str = DEFAULT_MODEL
    input_type: Literal["search_document", "search_query", "classification", "clustering"] | None = (
        "search_document"
    )
    embedding_type: Literal["float", "int8", "uint8", "binary", "ubinary"] = "float"
    encoding_format: Literal["raw", "base64"] = "base64"
    allow_ignored_params: bool = False
    dimensions: int | None = Field(None, ge=1)  # sent only when set (OpenAI's text-embedding-3)
    batch_size: int = Field(MAX_BATCH, ge=1, le=MAX_BATCH)
    concurrency: int = Field(8, ge=1, le=256)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    timeout_s: float = Field(60, gt=0)
    max_attempts: int = Field(6, ge=1, le=100)
    usd_per_million_tokens: float | None = Field(None, ge=0)  # for cost estimates and the run summary

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _http_needs_url(self) -> EmbeddingConfig:
        if self.provider == "http" and not self.url:
            raise ValueError(
                "url: is required with provider: http (set embedding.url or EMBEDDING_URL)"
            )
        return self


class SinkConfig(_Section):
    """Where and how the dataset is written (``sink:``)."""

    path: str
    storage_options: dict[str, Any] = Field(default_factory=dict)
    format: Literal["parquet", "arrow"] = "parquet"
    shard_rows: int = Field(100_000, ge=1)
    compression: Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"] | None = "zstd"
    include_text: bool = True
    shard_seconds: float = Field(300, gt=0)


class RunConfig(_Section):
    """How the run behaves as a whole (``run:``)."""

    max_failed_fraction: float = Field(0.01, ge=0, le=1)
    shutdown_grace_s: float = Field(25, ge=0)
    rank: int = Field(0, ge=0)
    world_size: int = Field(1, ge=1)
    watch: bool = False
    poll_interval_s: float = Field(60, gt=0)
    reuse_from: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    executor: Literal["local", "ray"] = "local"  # what runs the ranks (see pipeline.jobs.executor)
    ray_address: str | None = None  # executor ray: the cluster (None: RAY_ADDRESS, else a local one)

    @model_validator(mode="after")
    def _rank_in_world(self) -> RunConfig:
        if self.rank >= self.world_size:
            raise ValueError(f"rank ({self.rank}) must be below world_size ({self.world_size})")
        return self


class LoggingConfig(_Section):
    """Log level and format (``logging:``)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "logfmt", "json"] = "auto"


class Config(_Section):
    """The whole job."""

    source: SourceConfig
    chunking: ChunkingConfig = ChunkingConfig()
    embedding: EmbeddingConfig
    sink: SinkConfig
    run: RunConfig = RunConfig()
    logging: LoggingConfig = LoggingConfig()

    @property
    def api_key(self) -> str | None:
        """The API key in clear, for the Authorization header only."""
        key = self.embedding.api_key
        return key.get_secret_value() if key is not None else None


# --------------------------------------------------------------------------- loading

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_UNSET = object()


def interpolate(value: str, env: Mapping[str, str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in one string.

    A string that is only one unset ``${VAR}`` becomes ``_UNSET`` (the key is
    dropped, as if absent); defaults are parsed as YAML scalars when they make
    up the whole string, so ``${RANK:-0}`` gives the integer 0.
    """
    whole = _VAR.fullmatch(value)
    if whole:
        name, default = whole.group(1), whole.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is None:
            return _UNSET
        return _scalar(default)

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        return default or ""

    return _VAR.sub(sub, value)


def _scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def _interpolate_tree(
    node: Any, env: Mapping[str, str], unset: dict[tuple, str] | None = None, path: tuple = ()
) -> Any:
    """Interpolate every string; keys whose whole value is an unset ``${VAR}`` are
    dropped, and recorded in ``unset`` (path → the value as written)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            value = _interpolate_tree(v, env, unset, path + (k,))
            if value is not _UNSET:
                out[k] = value
            elif unset is not None:
                unset[path + (k,)] = v
        return out
    if isinstance(node, list):
        return [x for x in (_interpolate_tree(v, env, unset, path) for v in node) if x is not _UNSET]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def _line_map(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map each dotted key path of a composed YAML document to its 1-based line."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (str(key_node.value),)
            out[path] = key_node.start_mark.line + 1
            _line_map(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = item.start_mark.line + 1
            _line_map(item, prefix + (i,), out)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a", "b", "c"], value parsed as a YAML scalar)."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. embedding.concurrency=16")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each ``--set KEY=VALUE`` into ``data`` (a copy is not made)."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def _describe(error: dict) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = error["msg"]
    msg = msg.removeprefix("Value error, ")
    inp = error.get("input")
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        if not isinstance(inp, (dict, list)):
            msg = f"{msg} (got {inp!r})"
    return msg


_DYNO = re.compile(r"^[A-Za-z0-9_-]+\.(\d+)$")


def _with_rank(env: Mapping[str, str]) -> Mapping[str, str]:
    """``env`` with ``RANK`` taken from Heroku's ``DYNO`` (``worker.3`` → 2) when unset.

    Only for a scaled-out formation (``WORLD_SIZE`` set) and not for one-off
    dynos (``run.1234``) or Scheduler's (``scheduler.5678``), whose numbers
    are not ranks.
    """
    if env.get("RANK") or not env.get("WORLD_SIZE"):
        return env
    dyno = env.get("DYNO", "")
    m = _DYNO.match(dyno)
    if not m or int(m.group(1)) < 1 or dyno.startswith(("run.", "scheduler.")):
        return env
    return {**env, "RANK": str(int(m.group(1)) - 1)}


def load_config(
    path: str | os.PathLike[str],
    overrides: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read, interpolate, override and validate a config file.

    Raises :class:`ConfigError` with one line naming the file, line and key.
    """
    env = os.environ if env is None else env
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (source:, embedding:, sink:, ...)")
    lines = _line_map(node) if node is not None else {}

    data = apply_overrides(data, list(overrides or ()))
    env = _with_rank(env)
    unset: dict[tuple, str] = {}
    data = _interpolate_tree(data, env, unset)
    run = data.get("run")
    if run is None:
        run = data["run"] = {}
    if isinstance(run, dict):
        # absent keys default to ${RANK:-0} and ${WORLD_SIZE:-1}, as the spec's YAML shows
        for key, var in (("rank", "RANK"), ("world_size", "WORLD_SIZE")):
            if key not in run and env.get(var):
                run[key] = env[var]
    embedding = data.get("embedding")
    if embedding is None:
        embedding = data["embedding"] = {}
    if isinstance(embedding, dict):
        for key, var in (("url", "EMBEDDING_URL"), ("api_key", "EMBEDDING_KEY"), ("model", "EMBEDDING_MODEL_ID")):
            if embedding.get(key) in (None, "") and env.get(var):
                embedding[key] = env[var]
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        key = _format_loc(loc)
        line = None
        for n in range(len(loc), 0, -1):
            line = lines.get(tuple(loc[:n]))
            if line is not None:
                break
        where = f"{path}:{line}" if line else str(path)
        why = f" ({unset[loc]} is not set in the environment)" if loc in unset else ""
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{where}: {key}: {_describe(err)}{why}{more}") from None
