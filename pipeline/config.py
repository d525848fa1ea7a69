"""The job's configuration: one YAML file, validated once, up front.

Loading goes: read the file (safe loader) → apply ``--set`` overrides →
replace ``${VAR}`` / ``${VAR:-default}`` from the environment → fill the
endpoint from ``EMBEDDING_*`` → validate with pydantic (unknown keys are
errors). Every problem is a :class:`~pipeline.errors.ConfigError` whose
message names the dotted key and, when the key is in the file, its line.
"""

from __future__ import annotations

import difflib
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

from pipeline.config_yaml import (
    YamlTooBig,
    apply_overrides,
    flag_of,
    interpolate,  # noqa: F401  (part of this module's interface)
    interpolate_tree,
    is_secret,
    line_map,
    load_yaml,
)
from pipeline.config_yaml_errors import explain as explain_yaml
from pipeline.errors import ConfigError
from pipeline.logs import redact_url

#: the model ``provider: local`` runs (it ships inside the wordllama wheel)
LOCAL_MODEL = "wordllama-l2-supercat-256"
DEFAULT_MODEL = "cohere-embed-multilingual"
MAX_CHARS = 2048
MAX_BATCH = 96


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Section):
    """Where records come from (``source:``)."""

    path: str = Field(min_length=1)  # "" would list the working directory
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
    max_attempts: int = Field(6, ge=1, le=100)  # per request, counting real failures (not 429s)
    max_wait_s: float = Field(600, gt=0)  # how long one request may keep waiting on 429s
    rate_limit_store: str | None = None  # redis:// or rediss:// URL: one budget shared by every worker
    usd_per_million_tokens: float | None = Field(None, ge=0)  # for cost estimates and the run summary

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/") if value else value

    @field_validator("rate_limit_store")
    @classmethod
    def _store_scheme(cls, value: str | None) -> str | None:
        if not value:  # ${REDIS_URL} unset: no store
            return None
        if not re.match(r"^rediss?://[^/\s]", value):
            # never echo the value: a store URL carries its password
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @model_validator(mode="before")
    @classmethod
    def _local_model(cls, data: Any) -> Any:
        """``provider: local`` names its packaged model unless told otherwise (not the endpoint's default)."""
        if isinstance(data, dict) and data.get("provider") == "local" and data.get("model") in (None, ""):
            return {**data, "model": LOCAL_MODEL}
        return data

    @model_validator(mode="after")
    def _http_needs_url(self) -> EmbeddingConfig:
        if self.provider == "http" and not self.url:
            raise ValueError(
                "url: is required with provider: http (set embedding.url or EMBEDDING_URL)"
            )
        return self


class SinkConfig(_Section):
    """Where and how the dataset is written (``sink:``)."""

    path: str = Field(min_length=1)  # "" would write the dataset into the working directory
    storage_options: dict[str, Any] = Field(default_factory=dict)
    format: Literal["parquet", "arrow"] = "parquet"
    shard_rows: int = Field(100_000, ge=1)
    compression: Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"] | None = "zstd"
    include_text: bool = True
    shard_seconds: float = Field(300, gt=0)
    # a postgresql:// path (Postgres + pgvector): the table, its vector index and distance
    table: str = "embeddings"
    index: Literal["hnsw", "ivfflat", "none"] = "hnsw"
    distance: Literal["cosine", "l2", "ip", "hamming", "jaccard"] = "cosine"
    index_options: dict[str, int] = Field(default_factory=dict)  # hnsw: m, ef_construction; ivfflat: lists

    @field_validator("table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,39}", value):
            raise ValueError(f"must be a plain table name (letters, digits and _, at most 40), got {value!r}")
        return value


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
    on_deleted: Literal["remove", "keep"] = "remove"  # rows of source documents that are gone
    max_removed_fraction: float = Field(0.5, ge=0, le=1)  # a run removing more of the documents stops
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
    def batch_size(self) -> int:
        """Inputs per request: ``embedding.batch_size``, but never more than ``sink.shard_rows``.

        A shard holds whole responses only (its token usage is the sum of
        theirs) and at most ``shard_rows`` rows, so no request may bring more.
        """
        return min(self.embedding.batch_size, self.sink.shard_rows)

    @property
    def api_key(self) -> str | None:
        """The API key in clear, for the Authorization header only."""
        key = self.embedding.api_key
        return key.get_secret_value() if key is not None else None


# --------------------------------------------------------------------------- loading


def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The section model that holds the key at ``loc`` (None below a free-form mapping)."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _unknown_key(loc: tuple) -> str:
    model = _model_at(loc)
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.75) if model else []
    if not close and model is not None:  # a key of another section (``on_deleted:`` at the top: run.on_deleted)
        close = _elsewhere(str(loc[-1]), model)
    return f"unknown key (did you mean {' or '.join(close)}?)" if close else "unknown key"


def _elsewhere(key: str, model: type[BaseModel]) -> list[str]:
    """The dotted names of the sections' keys (not ``model``'s) that ``key`` is, or is a near miss of."""
    names: dict[str, list[str]] = {}
    for section, field in Config.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation is not model:
            for name in annotation.model_fields:
                names.setdefault(name, []).append(f"{section}.{name}")
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.85)
    return names[key] if key in names else names[close[0]] if close else []


def _what(value: Any) -> str:
    """A value as a sentence names it: ``the string '/data'``, ``the number 5``, ``a list``, ``nothing``."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "a list"
    kind = "the string" if isinstance(value, str) else "the number" if isinstance(value, (int, float)) else "the value"
    return f"{kind} {value!r}"


def _not_a_section(loc: tuple, value: Any) -> str:
    model = _model_at(loc + ("",))
    assert model is not None
    required = [name for name, f in model.model_fields.items() if f.is_required()]
    example = "url" if model is EmbeddingConfig else (required or list(model.model_fields))[0]
    glued = re.match(r"([A-Za-z_]\w*):\S", value) if isinstance(value, str) else None
    if glued:  # ``path:x.jsonl`` is one string to YAML; its value is not shown (it may be api_key:...)
        key = glued.group(1)
        return f"must be a section, got the string '{key}:...': a ':' needs a space after it ({key}: ...)"
    return f"must be a section ({loc[-1]}: {{{example}: ...}}), got {_what(value)}"


def _describe(error: dict) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key(tuple(error["loc"]))
    if kind == "missing":
        return "required key is missing"
    if kind == "model_type":
        return _not_a_section(tuple(error["loc"]), error.get("input"))
    msg = error["msg"].removeprefix("Value error, ")
    inp = error.get("input")
    if inp is None and kind.endswith("_type"):  # ``path:`` with nothing after it is YAML's null
        return "has no value"
    if kind == "string_too_short" and inp == "":
        return "must not be empty"
    if kind == "list_type" and isinstance(inp, str) and not is_secret(error["loc"][-1]):
        return f"must be a list, got the string {inp!r} (a list of one: [{inp}])"
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        if not isinstance(inp, (dict, list)) and not is_secret(error["loc"][-1]):
            msg = f"{msg} (got {inp!r})"
    return msg


def _explain(
    exc: ValidationError, path: Path, lines: dict[tuple, int], unset: dict[tuple, str], applied: dict[tuple, str]
) -> ConfigError:
    """One line for a failed validation: where (``file:line`` or the ``--set`` flag), the key, what is wrong.

    Unknown keys come first: a misspelled section also makes its real
    section look empty, and the typo is what the user has to fix.
    """
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = tuple(err["loc"])
    # the flag that set this key or a section above it; or, for a value, one that set keys under it
    # (``--set embedding.api_key.x=1`` made it a mapping), but not any flag inside a section a rule blames
    is_value = _model_at(loc + ("",)) is None
    flags = [item for key, item in applied.items() if loc[: len(key)] == key or is_value and key[: len(loc)] == loc]
    if flags:
        where = flag_of(flags[-1])
    else:
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        where = f"{path}:{line}" if line else str(path)
    why = f" ({unset[loc]} is not set in the environment)" if loc in unset else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    # user:key@ in a URL (a key passed to a proxy) is masked wherever the URL shows
    return ConfigError(redact_url(f"{where}: {_format_loc(loc)}: {_describe(err)}{why}{more}"))


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
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file (give its YAML file)") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): save the file "
                          "as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        data, node = load_yaml(text)
    except YamlTooBig as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        if (problem := explain_yaml(exc, text)) is None:
            raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
        raise ConfigError(f"{path}:{problem.line}:{problem.column}: invalid YAML: {problem.message}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    empty = data is None  # nothing but comments, or nothing at all
    if empty:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (source:, embedding:, sink:, ...)")
    lines = line_map(node) if node is not None else {}

    applied: dict[tuple, str] = {}
    data = apply_overrides(data, list(overrides or ()), applied)
    env = _with_rank(env)
    unset: dict[tuple, str] = {}
    data = interpolate_tree(data, env, unset)
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
            if key == "model" and embedding.get("provider") == "local":
                continue  # the packaged model answers, whatever the endpoint's model id is
            if embedding.get(key) in (None, "") and env.get(var):
                embedding[key] = env[var]
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        if empty and not overrides:
            raise ConfigError(f"{path}: the file is empty: a config needs at least source.path and sink.path "
                              "(source: {path: ...} and sink: {path: ...})") from None
        raise _explain(exc, path, lines, unset, applied) from None
