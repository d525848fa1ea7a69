"""How a job of many ranks ended: the worst rank's code, the merged dataset's totals, one progress line.

A rank ends as a dyno's run does (:class:`~pipeline.jobs.outcome.RunResult`);
the job ends with the worst of them: a fatal API error (3) over a config or
sink error (2) over a failed commit or a task Ray gave up on (4) over a
signal's code (the driver was interrupted) over too many failed rows (1,
judged on the whole dataset, not one rank's part) over success (0).
"""

from __future__ import annotations

from typing import Any

import fsspec

from pipeline.config import Config
from pipeline.dataset.manifest import load_dataset_manifest, rebuild
from pipeline.errors import (
    EXIT_COMMIT_FAILED,
    EXIT_CONFIG,
    EXIT_FATAL,
    EXIT_OK,
    EXIT_TOO_MANY_FAILED,
)
from pipeline.jobs.outcome import RunResult, too_many_failed
from pipeline.logs import format_duration

#: exit codes from worst to best; a signal's code sits between 4 and 1
SEVERITY = [EXIT_FATAL, EXIT_CONFIG, EXIT_COMMIT_FAILED, "signal", EXIT_TOO_MANY_FAILED, EXIT_OK]
SUMMED = ("records", "rows", "failed", "requests", "retries", "throttled", "tokens", "shards")


def _severity(code: int) -> int:
    return SEVERITY.index(code) if code in SEVERITY else SEVERITY.index("signal")


class RankOutcomes:
    """How each rank of one job ended, and what that makes of the job."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.results: dict[int, RunResult] = {}

    def has(self, rank: int) -> bool:
        """Whether ``rank`` has ended."""
        return rank in self.results

    def add(self, rank: int, result: RunResult) -> None:
        """``rank``'s task returned ``result``."""
        self.results[rank] = result

    def cancelled(self, rank: int, code: int | None) -> None:
        """``rank``'s task was cancelled before it started (the job was stopping)."""
        self.results[rank] = RunResult(status="interrupted", exit_code=code or EXIT_OK, totals={})

    def crashed(self, rank: int, reason: str) -> None:
        """Ray gave up on ``rank``'s task (its worker died every time, or a bug raised in it)."""
        self.results[rank] = RunResult(
            status="failed", exit_code=EXIT_COMMIT_FAILED, totals={},
            message=f"its Ray task failed ({reason}); what it committed is kept: run again to resume",
        )

    def result(self, signal_code: int | None) -> RunResult:
        """Merge the ranks' manifests and say how the job ended (blocking: reads and writes the sink)."""
        totals = self._merged_totals()
        worst = min(self.results.values(), key=lambda r: _severity(r.exit_code), default=None)
        code = worst.exit_code if worst is not None else EXIT_OK
        if signal_code is not None and _severity(signal_code) < _severity(code):
            code = signal_code
        if code in (EXIT_OK, EXIT_TOO_MANY_FAILED):  # judged on the whole dataset, not on one rank's part
            too_many = too_many_failed(self.cfg, totals)
            code = EXIT_TOO_MANY_FAILED if too_many else EXIT_OK
            message = too_many or self._message(EXIT_OK)  # a rank stopped by run.max_tokens says so
        else:
            message = self._message(code)
        return RunResult(status=self._status(code), exit_code=code, totals=totals, message=message)

    def _status(self, code: int) -> str:
        if code in (EXIT_FATAL, EXIT_CONFIG, EXIT_COMMIT_FAILED):
            return "failed"
        if code not in (EXIT_OK, EXIT_TOO_MANY_FAILED):
            return "interrupted"
        if any(r.status == "budget_exhausted" for r in self.results.values()):
            return "budget_exhausted"
        return "completed"

    def _message(self, code: int) -> str | None:
        """The message of the ranks that ended with ``code``, once for ranks that say the same."""
        by_message: dict[str, list[int]] = {}
        for rank, result in sorted(self.results.items()):
            if result.exit_code == code and result.message:
                by_message.setdefault(result.message, []).append(rank)
        if not by_message:
            return None
        message, ranks = next(iter(by_message.items()))
        more = f" (and {len(by_message) - 1} other rank error(s), see the log)" if len(by_message) > 1 else ""
        return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {message}{more}"

    def _merged_totals(self) -> dict[str, int]:
        """``_manifest.json`` rebuilt from every rank's part; the dataset's totals."""
        path = self.cfg.sink.path
        if path.startswith(("postgresql://", "postgres://")):  # a table has no manifest to merge
            return _summed(self.results.values())
        fs, root = fsspec.core.url_to_fs(path, **self.cfg.sink.storage_options)
        root = root.rstrip("/")
        manifest = rebuild(fs, root) or load_dataset_manifest(fs, root)
        return manifest.totals if manifest is not None else _summed(self.results.values())

    def progress(self, board: dict[str, Any], elapsed: float) -> dict[str, Any]:
        """The fields of the driver's progress line, from the board's snapshot."""
        reports: dict[int, dict[str, Any]] = board["progress"]
        fields: dict[str, Any] = {
            "ranks_running": len(set(board["attempts"]) - set(board["done"]) - set(self.results)),
            "ranks_done": len(self.results),
            "ranks_waiting": self.cfg.run.world_size - len(set(board["attempts"]) | set(self.results)),
        }
        for key in SUMMED:
            fields[key] = sum(int(r.get(key, 0)) for r in reports.values())
        fields["rows_per_s"] = round(fields["rows"] / max(elapsed, 1e-9), 1)
        fields["tokens_per_min"] = round(fields["tokens"] / max(elapsed, 1e-9) * 60)
        fields["elapsed"] = format_duration(elapsed)
        done = sum(int(r.get("bytes_done", 0)) for r in reports.values())
        total = sum(int(r.get("bytes_total", 0)) for r in reports.values())
        if total and len(reports) == self.cfg.run.world_size:  # every rank has said how much it has to read
            fields["done_pct"] = round(done / total * 100, 1)
        return fields


def _summed(results: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for result in results:
        for key, value in result.totals.items():
            out[key] = out.get(key, 0) + int(value)
    return out
