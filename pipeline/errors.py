"""The exceptions `pipeline` raises, as one documented tree.

Third-party errors (httpx, fsspec, pyarrow, pydantic, yaml) are translated into
these once, at the boundary where they happen, with the original kept as
``__cause__``. Callers decide what to do by class, never by message text.

    PipelineError
    ├── ConfigError           bad YAML, unknown key, wrong type, bad --set (exit 2)
    ├── SourceError           an input that cannot be listed or opened
    ├── SinkError             the dataset cannot be written or does not match the config
    ├── RecordError           one record cannot be used (becomes an error row)
    ├── BudgetExhausted       the next request would spend more than run.max_tokens
    └── ApiError              the embeddings API failed
        ├── RetryableApiError 408/409/429/5xx, timeouts, resets, malformed bodies
        ├── InputRejected     400/413/422: something in the batch is bad
        └── FatalApiError     401/403/404, unreachable endpoint: stop the run (exit 3)
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(PipelineError):
    """The configuration or the command line is wrong; nothing was started."""


class SourceError(PipelineError):
    """An input cannot be listed or opened."""


class SinkError(PipelineError):
    """The dataset cannot be written, or does not belong to this config."""


class RecordError(PipelineError):
    """One record cannot be used; it becomes a row in ``errors/``."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class BudgetExhausted(PipelineError):
    """The next request would take the run past ``run.max_tokens``."""


class ApiError(PipelineError):
    """The embeddings API did not give us vectors."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.attempts = 0  # requests made before giving up, set by the client


class RetryableApiError(ApiError):
    """A transient failure: the same request may succeed later."""


class InputRejected(ApiError):
    """The API refused the batch because of its content (400, 413, 422)."""


class FatalApiError(ApiError):
    """Retrying cannot help (bad key, unknown model, endpoint unreachable)."""
