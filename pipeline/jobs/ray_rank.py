"""One rank of a Ray job, as a Ray task, and the actor it reports to.

:func:`run_rank` is what a Ray worker runs: the :class:`~pipeline.jobs.run.Job`
a dyno runs for ``run.rank``, with its own lease, its own manifest part and
its resume state, so a task that Ray starts again after its worker died
takes over the rank's lease (at once on the same host, where the holder's
pid is gone; after the lease's 30 s on another) and resumes from the rank's
last commit: no row is written twice.

:class:`Board` is the actor between the driver and its tasks: the driver
posts the signals it receives, each task hands them to its job's
:class:`~pipeline.jobs.shutdown.Shutdown` (so a task drains and commits as
a dyno does on SIGTERM), and each task posts its counters for the driver's
progress line.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import anyio
import ray
import structlog

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.embed.limits import Limiter
from pipeline.jobs import run as job_module
from pipeline.jobs.outcome import RunResult, first_leaf
from pipeline.jobs.progress import Progress
from pipeline.jobs.shutdown import EXIT_CODES, Shutdown
from pipeline.logs import configure, get_logger

REPORT_EVERY_S = 2.0  # how often a task posts its counters (the driver shows them every 10 s)


class Board:
    """What the driver and the tasks of one job tell each other (a Ray actor: ``ray.remote(Board)``).

    Its methods are async, so Ray runs it as an async actor on its own
    asyncio loop: a task waiting for a signal parks a coroutine here.
    """

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.attempts: dict[int, int] = {}  # rank → tasks started for it (more than 1: Ray retried it)
        self.pids: dict[int, int] = {}
        self.progress: dict[int, dict[str, Any]] = {}
        self.done: set[int] = set()
        self._changed: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def begin(self, rank: int, pid: int) -> int | None:
        """A task starts ``rank``; the signal that stops the job when it is already stopping, else None."""
        self.attempts[rank] = self.attempts.get(rank, 0) + 1
        self.pids[rank] = pid
        return self.signals[0] if self.signals else None

    async def stop(self, signum: int) -> list[int]:
        """The driver received ``signum``: tell every task; the ranks that have begun."""
        self.signals.append(signum)
        event = self._event()
        self._changed = None
        event.set()
        return sorted(self.attempts)

    async def next_signal(self, seen: int) -> int:
        """Wait for the signal after the first ``seen`` ones, and return it."""
        while len(self.signals) <= seen:
            await self._event().wait()
        return self.signals[seen]

    async def report(self, rank: int, fields: dict[str, Any], done: bool = False) -> None:
        """A task's counters (``done``: its last report)."""
        self.progress[rank] = fields
        if done:
            self.done.add(rank)

    async def snapshot(self) -> dict[str, Any]:
        """Attempts, pids, counters and finished ranks, for the driver."""
        return {"attempts": dict(self.attempts), "pids": dict(self.pids),
                "progress": dict(self.progress), "done": sorted(self.done)}


def run_rank(cfg: Config, board: Any, limiter: Any, fresh: bool) -> RunResult:
    """Run ``cfg.run.rank`` to its end in this Ray worker; how it ended (a user's error included)."""
    rank = cfg.run.rank
    fmt = "json" if cfg.logging.format == "json" else "logfmt"  # a worker's output is never a terminal
    configure(cfg.logging.level, fmt, secrets=[cfg.api_key or ""])
    structlog.contextvars.bind_contextvars(rank=rank)
    try:
        return anyio.run(_run_rank, cfg, board, limiter, fresh)
    except (PipelineError, BaseExceptionGroup) as exc:  # a group: raised through the task's task group
        error = first_leaf(exc)
        if not isinstance(error, PipelineError):
            raise  # a bug: Ray carries it to the driver as the task's failure
        # the one line the CLI would print, carried back to the driver
        get_logger().error("rank_failed", error=str(error), exit_code=error.exit_code)
        return RunResult(status="failed", exit_code=error.exit_code, totals={}, message=str(error))


async def _run_rank(cfg: Config, board: Any, limiter: Any, fresh: bool) -> RunResult:
    stopping = await board.begin.remote(cfg.run.rank, os.getpid())
    if stopping is not None:  # the driver was told to stop before this task started
        return RunResult(status="interrupted", exit_code=EXIT_CODES[signal.Signals(stopping)], totals={})
    job = job_module.Job(cfg, handle_signals=False, fresh=fresh, limiter=_shared(cfg, limiter))
    async with anyio.create_task_group() as tg:
        tg.start_soon(_relay_signals, board, job.shutdown)
        tg.start_soon(_report, board, cfg.run.rank, job.progress)
        result = await job.run()
        tg.cancel_scope.cancel()
    try:
        await board.report.remote(cfg.run.rank, progress_fields(job.progress), True)
    except ray.exceptions.RayError:
        pass  # the board only feeds the progress line
    return result


def _shared(cfg: Config, actor: Any) -> Limiter | None:
    """This task's limiter on the job-wide ``actor``'s budget (None: no actor, the embedder paces alone)."""
    if actor is None:
        return None
    from pipeline.embed.ray_limiter import shared_limiter

    emb = cfg.embedding
    return shared_limiter(actor, emb.requests_per_minute, emb.tokens_per_minute, cfg.run.world_size)


async def _relay_signals(board: Any, shutdown: Shutdown) -> None:
    """Hand each signal the driver posts to this task's job: the first drains, a second cancels."""
    seen = 0
    while True:
        try:
            signum = await board.next_signal.remote(seen)
        except ray.exceptions.RayError as exc:
            get_logger().warning("board_lost", error=type(exc).__name__,
                                 hint="this task no longer hears the driver's signals; it runs to its end")
            return
        seen += 1
        shutdown.request(signum)


async def _report(board: Any, rank: int, progress: Progress) -> None:
    """Post this task's counters to the board until cancelled."""
    while True:
        await anyio.sleep(REPORT_EVERY_S)
        try:
            await board.report.remote(rank, progress_fields(progress))
        except ray.exceptions.RayError:
            return  # the board only feeds the progress line


def progress_fields(progress: Progress) -> dict[str, Any]:
    """The counters of one task that add up across tasks."""
    c = progress.counts
    return {
        "records": c.records_read, "rows": c.rows_embedded, "failed": c.rows_failed,
        "requests": c.requests, "retries": c.retries, "throttled": progress.throttled,
        "tokens": c.total_tokens, "shards": progress.shards,
        "bytes_done": round(progress.done_bytes()), "bytes_total": progress.bytes_total,
    }
