"""pipeline validate's estimate: counts, and what run.reuse_from saves."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT, run_cli
from pipeline.config import load_config
from pipeline.jobs.validate import estimate

SAMPLE = str(ROOT / "configs" / "local.yaml")


def test_sample_counts() -> None:
    """The sample corpus: 300 records (2 unusable), 308 chunks, 4 requests of 96."""
    est = estimate(load_config(SAMPLE))
    assert (est.records, est.bad_records, est.chunks, est.requests) == (300, 2, 308, 4)
    assert est.by_error == {"empty_text": 1, "invalid_json": 1}
    assert est.tokens > 0 and est.reusable_chunks == 0


def test_reuse_from_counts_what_is_already_embedded(tmp_path: Path) -> None:
    """After a run, an estimate that reuses it has nothing left to spend."""
    out = tmp_path / "v1"
    assert run_cli("run", SAMPLE, "--set", f"sink.path={out}").returncode == 0
    est = estimate(load_config(SAMPLE, [f"run.reuse_from={out}"]))
    assert est.reusable_chunks == est.chunks == 308
    assert est.tokens == 0 and est.requests == 0
    shown = run_cli("validate", SAMPLE, "--set", f"run.reuse_from={out}")
    assert "reusable from" in shown.stdout and "estimated tokens: 0 (after reuse)" in shown.stdout
