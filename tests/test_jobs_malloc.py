"""pipeline.jobs.malloc: glibc's mapping threshold fixed once, unless the user set it."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from pipeline.jobs import malloc


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

        def mallopt(param: int, value: int) -> int:
            self.calls.append((param, value))
            return 1

        self.mallopt: Any = mallopt


def test_the_threshold_is_fixed_once_and_a_users_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(malloc, "_set", False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    malloc.give_back_big_blocks()
    malloc.give_back_big_blocks()
    assert libc.calls == [(malloc.M_MMAP_THRESHOLD, malloc.THRESHOLD)]
    monkeypatch.setattr(malloc, "_set", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    malloc.give_back_big_blocks()
    assert len(libc.calls) == 1


def test_without_mallopt_nothing_is_tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    """An allocator other than glibc's (no mallopt) is left as it is, without an error."""
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())
    monkeypatch.setattr(malloc, "_set", False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    malloc.give_back_big_blocks()
