"""The Executor seam: what runs a job's ranks.

``run.executor: local`` runs this process's one rank (``run.rank`` of
``run.world_size``), as a Heroku dyno does; other ranks are other processes.
``run.executor: ray`` (:mod:`pipeline.jobs.ray_executor`) runs every rank
itself, as tasks on a Ray cluster, and returns one result for the whole job.
"""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.config import Config
from pipeline.jobs.outcome import RunResult
from pipeline.jobs.run import Job


class Executor(Protocol):
    """Runs the ranks of a job and says how the job ended."""

    async def run(self, cfg: Config, **options: Any) -> RunResult:
        """Run ``cfg``; ``options`` go to each rank's :class:`~pipeline.jobs.run.Job`."""
        ...


class LocalExecutor:
    """One rank, in this process."""

    async def run(self, cfg: Config, **options: Any) -> RunResult:
        """Run this process's rank to its end."""
        return await Job(cfg, **options).run()


def make_executor(cfg: Config) -> Executor:
    """The executor ``run.executor`` names."""
    if cfg.run.executor == "ray":
        from pipeline.jobs.ray_executor import RayExecutor  # imports Ray only when it is asked for

        return RayExecutor()
    return LocalExecutor()
