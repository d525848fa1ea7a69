"""How a command ended: its status, exit code, totals and the one line that says why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import Config
from pipeline.errors import EXIT_OK, EXIT_TOO_MANY_FAILED, CommitFailed
from pipeline.jobs.progress import Progress
from pipeline.logs import get_logger, redact_url


@dataclass
class RunResult:
    """How the run ended."""

    status: str  # completed | interrupted | failed | budget_exhausted
    exit_code: int
    totals: dict[str, int]
    message: str | None = None


def too_many_failed(cfg: Config, totals: dict[str, int]) -> str | None:
    """Why the dataset fails ``run.max_failed_fraction`` (exit 1), or None when it does not."""
    failed = totals.get("rows_failed", 0)
    done = totals.get("rows_embedded", 0) + failed
    if not done or failed / done <= cfg.run.max_failed_fraction:
        return None
    where = (f"table {cfg.sink.table}_errors" if cfg.sink.path.startswith(("postgresql://", "postgres://"))
             else f"{redact_url(cfg.sink.path)}/errors/")
    return (
        f"{failed} of {done} rows failed, more than "
        f"run.max_failed_fraction={cfg.run.max_failed_fraction:g}; see {where}"
    )


def warn_if_batch_capped(cfg: Config, log: Any) -> None:
    """Say, once at the start, that requests carry fewer inputs than ``embedding.batch_size`` asks
    (``sink.shard_rows`` is smaller, and a shard holds whole responses: see :attr:`Config.batch_size`)."""
    if cfg.batch_size < cfg.embedding.batch_size:
        log.warning("batch_size_capped", batch_size=cfg.batch_size, configured=cfg.embedding.batch_size,
                    shard_rows=cfg.sink.shard_rows, reason="a shard holds whole responses, at most shard_rows rows")


def log_commits(log: Any, entries: list[dict[str, Any]]) -> None:
    """One ``shard_committed`` line per committed shard (``shard_rewritten`` for a copy without removed rows)."""
    for entry in entries:
        if entry.get("rewritten_from"):  # its accounting is the old shard's: nothing was paid again
            log.info("shard_rewritten", path=entry.get("path"), rewritten_from=entry["rewritten_from"],
                     rows=entry.get("rows"))
            continue
        log.info(
            "shard_committed",
            path=entry.get("path"),
            rows=entry.get("rows"),
            requests=entry.get("requests"),
            tokens=entry.get("total_tokens"),
        )


def finish(cfg: Config, totals: dict[str, int], progress: Progress, changes: dict[str, int], status: str,
           code: int, message: str | None) -> RunResult:
    """Check ``max_failed_fraction`` against the dataset's ``totals``, log ``run_finished``, and say how
    the run ended."""
    if code == EXIT_OK and (too_many := too_many_failed(cfg, totals)):
        code, message = EXIT_TOO_MANY_FAILED, too_many
    price = cfg.embedding.usd_per_million_tokens
    c = progress.counts
    get_logger().info(
        "run_finished",
        status=status,
        exit_code=code,
        **progress.fields(),
        prompt_tokens=c.prompt_tokens,
        shards=progress.shards,
        cost_usd=round(c.total_tokens * price / 1e6, 6) if price is not None else None,
        **changes,
        dataset_rows=totals.get("rows_embedded"),
        dataset_failed=totals.get("rows_failed"),
        **({"error": message} if message else {}),
    )
    return RunResult(status=status, exit_code=code, totals=totals, message=message)


def close_quietly(sink: Any) -> None:
    """Close ``sink`` as failed after a bug, letting go of its lease; a no-op after a clean close."""
    try:
        sink.close("failed")
    except CommitFailed:
        pass


def first_leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
