"""How a job of many ranks ends: the worst rank's code, the whole dataset's failed fraction, one progress line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Config
from pipeline.jobs.outcome import RunResult
from pipeline.jobs.ray_outcome import RankOutcomes


def outcomes(tmp_path: Path, world_size: int = 4, max_failed_fraction: float = 0.01) -> RankOutcomes:
    cfg = Config.model_validate({
        "source": {"path": str(tmp_path / "in")},
        "embedding": {"url": "http://127.0.0.1:1"},
        "sink": {"path": str(tmp_path / "out")},  # no dataset there: totals are the ranks' own, summed
        "run": {"executor": "ray", "world_size": world_size, "max_failed_fraction": max_failed_fraction},
    })
    return RankOutcomes(cfg)


def ended(code: int, status: str = "completed", message: str | None = None, **totals: int) -> RunResult:
    return RunResult(status=status, exit_code=code, totals=dict(totals), message=message)


@pytest.mark.parametrize("codes,expected", [
    ([0, 0, 0, 0], 0),
    ([0, 4, 0, 3], 3),  # fatal over commit failed
    ([0, 2, 4, 0], 2),  # a config or sink error over commit failed
    ([0, 4, 143, 0], 4),  # commit failed over a signal
    ([143, 143, 0, 0], 143),  # interrupted ranks: the signal's code
])
def test_worst_rank_wins(tmp_path: Path, codes: list[int], expected: int) -> None:
    """The job ends with its worst rank's code: 3 > 2 > 4 > a signal's > 1 > 0."""
    job = outcomes(tmp_path)
    for rank, code in enumerate(codes):
        job.add(rank, ended(code, message=f"why {code}" if code else None))
    result = job.result(None)
    assert result.exit_code == expected
    assert (result.message is None) == (expected == 0)


def test_driver_signal_code_when_every_rank_ended_well(tmp_path: Path) -> None:
    """A signal to the driver makes the job interrupted with that signal's code, unless a rank did worse."""
    job = outcomes(tmp_path, world_size=2)
    job.add(0, ended(0))
    job.cancelled(1, 130)
    result = job.result(130)
    assert (result.status, result.exit_code) == ("interrupted", 130)
    job.add(1, ended(3, "failed", "key rejected"))
    assert job.result(130).exit_code == 3


def test_failed_fraction_is_judged_on_the_whole_dataset(tmp_path: Path) -> None:
    """One rank over ``max_failed_fraction`` does not fail a job whose dataset as a whole is under it."""
    job = outcomes(tmp_path, world_size=2, max_failed_fraction=0.05)
    job.add(0, ended(1, message="10 of 100 rows failed", rows_embedded=90, rows_failed=10))
    job.add(1, ended(0, rows_embedded=900, rows_failed=0))
    result = job.result(None)
    assert (result.exit_code, result.message) == (0, None)
    assert result.totals == {"rows_embedded": 990, "rows_failed": 10}
    job.add(1, ended(0, rows_embedded=90, rows_failed=0))
    assert job.result(None).exit_code == 1


def test_one_message_for_ranks_that_say_the_same(tmp_path: Path) -> None:
    """Ranks failing alike are named together in one line."""
    job = outcomes(tmp_path, world_size=3)
    for rank in range(3):
        job.add(rank, ended(3, "failed", "401: the key was rejected"))
    assert job.result(None).message == "ranks 0, 1, 2: 401: the key was rejected"


def test_a_task_ray_gave_up_on_is_exit_4(tmp_path: Path) -> None:
    """A rank whose worker died more often than Ray retries ends the job with 4 and says to run again."""
    job = outcomes(tmp_path, world_size=2)
    job.add(0, ended(0))
    job.crashed(1, "WorkerCrashedError: the worker died")
    result = job.result(None)
    assert (result.status, result.exit_code) == ("failed", 4)
    assert result.message is not None and result.message.startswith("rank 1: its Ray task failed")
    assert "run again" in result.message


def test_progress_adds_the_ranks_up(tmp_path: Path) -> None:
    """The driver's line sums the tasks' counters and shows done_pct once every rank has reported."""
    job = outcomes(tmp_path, world_size=2)
    board = {"attempts": {0: 1}, "done": [], "progress": {0: {"rows": 10, "bytes_done": 5, "bytes_total": 10}}}
    fields = job.progress(board, elapsed=10.0)
    assert (fields["ranks_running"], fields["ranks_waiting"], fields["rows"]) == (1, 1, 10)
    assert "done_pct" not in fields
    board["attempts"][1] = 1
    board["progress"][1] = {"rows": 30, "bytes_done": 10, "bytes_total": 10}
    fields = job.progress(board, elapsed=10.0)
    assert (fields["rows"], fields["rows_per_s"], fields["done_pct"]) == (40, 4.0, 75.0)


def test_a_rank_stopped_by_max_tokens_says_so(tmp_path: Path) -> None:
    """A rank stopped by ``run.max_tokens`` makes the job ``budget_exhausted`` (exit 0), with its line."""
    job = outcomes(tmp_path, world_size=2)
    job.add(0, ended(0))
    job.add(1, ended(0, "budget_exhausted", "stopped before spending more than run.max_tokens=100 tokens"))
    result = job.result(None)
    assert (result.status, result.exit_code) == ("budget_exhausted", 0)
    assert result.message == "rank 1: stopped before spending more than run.max_tokens=100 tokens"
