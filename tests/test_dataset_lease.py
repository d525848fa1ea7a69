"""Tests for pipeline.dataset.lease: one writer per rank, taken atomically, fenced at every save."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from conftest import FakeClock
from pipeline.dataset.lease import Lease
from pipeline.errors import SinkError


def lease(root: Path, clock: FakeClock) -> Lease:
    return Lease(fsspec.filesystem("file"), str(root), 0, ttl_s=30, clock=clock, sleep=clock.sleep)


def test_second_writer_waits_then_refuses(tmp_path: Path, clock: FakeClock) -> None:
    """While the first holds a live lease, a second waits its time and then refuses in one line."""
    first, second = lease(tmp_path, clock), lease(tmp_path, clock)
    first.acquire(0)
    with pytest.raises(SinkError, match="another pipeline .* refusing"):
        second.acquire(5)
    assert clock.now >= 1005


def test_released_or_stale_lease_is_taken(tmp_path: Path, clock: FakeClock) -> None:
    """A released lease is free at once; one whose heartbeat is older than the TTL is taken over."""
    first, second = lease(tmp_path, clock), lease(tmp_path, clock)
    first.acquire(0)
    first.release()
    second.acquire(0)
    third = lease(tmp_path, clock)
    clock.advance(31)
    third.acquire(0)  # second stopped heartbeating 31 s ago
    with pytest.raises(SinkError, match="lost the write lease"):
        second.renew()  # fencing: second finds out at its next save


def test_create_is_atomic_when_two_see_it_free(tmp_path: Path, clock: FakeClock) -> None:
    """Two writers that both saw no lease cannot both take it: the second create fails and it looks again."""
    first, second = lease(tmp_path, clock), lease(tmp_path, clock)
    second._read = lambda: None  # type: ignore[method-assign]  # it read before the first wrote
    first.acquire(0)
    with pytest.raises(FileExistsError):
        second._create()
