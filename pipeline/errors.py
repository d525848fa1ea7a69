"""The exceptions `pipeline` raises, as one documented tree, and the exit codes.

Third-party errors (httpx, fsspec, botocore, pyarrow, pydantic, yaml) are
translated into these once, at the boundary where they happen, with the
original kept as ``__cause__``. Callers decide what to do by class, never by
message text. Each class carries the exit code the command line ends with.

    PipelineError
    ├── ConfigError           bad YAML, unknown key, wrong type, bad --set (exit 2)
    ├── SourceError           an input that cannot be listed or opened (exit 2)
    ├── SinkError             the dataset cannot be opened or does not match the config (exit 2)
    ├── CommitFailed          a commit or the write lease failed mid-run; earlier commits intact (exit 4)
    ├── BudgetExhausted       the next request would spend more than run.max_tokens
    └── ApiError              the embeddings API failed
        ├── RetryableApiError 408/409/429/5xx, timeouts, resets, malformed bodies
        ├── InputRejected     400/413/422: something in the batch is bad
        └── FatalApiError     401/403/404, wrong vectors: stop the run (exit 3)
            └── EndpointUnreachable  no connection after every attempt
"""

from __future__ import annotations

#: exit codes of every command (SPEC.md), the one place they are defined
EXIT_OK = 0
EXIT_TOO_MANY_FAILED = 1
EXIT_CONFIG = 2
EXIT_FATAL = 3
EXIT_COMMIT_FAILED = 4
EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM = 129, 130, 143
EXIT_SIGPIPE = 141  # stdout closed by its reader (`pipeline validate ... | head`)


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = EXIT_TOO_MANY_FAILED


class ConfigError(PipelineError):
    """The configuration or the command line is wrong; nothing was started."""

    exit_code = EXIT_CONFIG


class SourceError(PipelineError):
    """An input cannot be listed or opened."""

    exit_code = EXIT_CONFIG


class SinkError(PipelineError):
    """The dataset cannot be opened, or does not belong to this config; nothing was started."""

    exit_code = EXIT_CONFIG


class CommitFailed(PipelineError):
    """Writing the dataset failed mid-run (I/O error, lost lease); earlier commits are intact."""

    exit_code = EXIT_COMMIT_FAILED


class BudgetExhausted(PipelineError):
    """The next request would take the run past ``run.max_tokens``."""


class ApiError(PipelineError):
    """The embeddings API did not give us vectors."""

    exit_code = EXIT_FATAL

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
    """Retrying cannot help (bad key, unknown model, vectors that do not fit)."""


class EndpointUnreachable(FatalApiError):
    """No connection to the endpoint could be made, attempt after attempt."""
