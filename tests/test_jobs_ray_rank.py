"""The Board between a Ray job's driver and its tasks, on its own (no cluster)."""

from __future__ import annotations

import anyio
import pytest

pytest.importorskip("ray", reason="run.executor: ray needs the ray extra: pip install '.[ray]'")

from pipeline.jobs.ray_rank import Board  # noqa: E402

pytestmark = pytest.mark.anyio


async def test_each_waiting_task_hears_every_signal_in_order() -> None:
    """Tasks waiting on the board get the driver's first signal, then its second."""
    board = Board()
    heard: list[list[int]] = [[], []]

    async def task(n: int) -> None:
        for seen in range(2):
            heard[n].append(await board.next_signal(seen))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(task, 0)
            tg.start_soon(task, 1)
            await anyio.wait_all_tasks_blocked()
            assert await board.stop(15) == []
            await anyio.wait_all_tasks_blocked()
            await board.stop(2)
    assert heard == [[15, 2], [15, 2]]


async def test_a_task_starting_after_the_stop_is_told_at_once() -> None:
    """A task that begins once the driver is stopping learns the signal and does not start its rank."""
    board = Board()
    assert await board.begin(0, pid=11) is None
    assert await board.stop(15) == [0]
    assert await board.begin(1, pid=12) == 15
    assert await board.next_signal(0) == 15


async def test_snapshot_counts_attempts() -> None:
    """A rank begun twice (Ray ran its task again) shows 2 attempts; its last report wins."""
    board = Board()
    await board.begin(0, pid=11)
    await board.report(0, {"rows": 5})
    await board.begin(0, pid=12)
    await board.report(0, {"rows": 2}, done=True)
    snap = await board.snapshot()
    assert snap == {"attempts": {0: 2}, "pids": {0: 12}, "progress": {0: {"rows": 2}}, "done": [0]}
