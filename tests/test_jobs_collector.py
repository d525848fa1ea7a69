"""pipeline.jobs.collector: the cycle collector looks less often, once a process, unless told otherwise."""

from __future__ import annotations

import subprocess
import sys


def _thresholds_after(setup: str) -> str:
    """What a fresh interpreter's collector says after ``setup`` and two calls of collect_less."""
    code = (f"import gc; {setup}; from pipeline.jobs.collector import collect_less; collect_less(); "
            "collect_less(); print(gc.get_threshold()[0], gc.isenabled(), gc.get_freeze_count() > 0)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120).stdout.split()


def test_the_young_generation_is_looked_at_less_often_and_the_start_frozen() -> None:
    assert _thresholds_after("pass") == ["2000", "True", "True"]


def test_a_collector_turned_off_or_already_slower_is_left_as_it_is() -> None:
    assert _thresholds_after("gc.disable()") == ["700", "False", "False"]
    assert _thresholds_after("gc.set_threshold(50000)") == ["50000", "True", "False"]
