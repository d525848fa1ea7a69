"""Shared fixtures: the anyio backend, and a real `pipeline serve` on loopback."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio (the backend production uses)."""
    return "asyncio"
