"""Stopping a run: drain from the head on the first signal, cancel on the second or at the deadline.

On SIGTERM, SIGINT or SIGHUP (a closed terminal or SSH session) the reader
stops and no new batch is sent; answers already on their way are written and
committed, and after ``run.shutdown_grace_s`` less a few seconds for the final
commit (or on a second signal) whatever is left is cancelled. Records read
but not sent are read again by the next run, unpaid.
"""

from __future__ import annotations

import math
import signal

import anyio

from pipeline.errors import EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM
from typing import Callable

from pipeline.logs import get_logger

FINAL_COMMIT_S = 3.0  # kept out of the grace period for the last commit, inside Heroku's 30 s

EXIT_CODES = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM, signal.SIGHUP: EXIT_SIGHUP}
SIGNALS = tuple(EXIT_CODES)


class Shutdown:
    """Shutdown state shared by the job, its rounds and the signal watcher."""

    def __init__(self, grace_s: float, on_request: Callable[[], None] = lambda: None) -> None:
        self.grace_s = grace_s
        self._on_request = on_request  # told once, on the first signal (stop sending batches)
        self.requested: int | None = None  # the signal that asked us to stop
        self.event = anyio.Event()  # set on the first signal: wakes watch mode's sleep
        self.deadline = math.inf  # when the current round must end
        self._reading: anyio.CancelScope | None = None  # the current round's reader
        self._round: anyio.CancelScope | None = None  # the current round, as a whole

    @property
    def exit_code(self) -> int | None:
        """The exit code the signal received asks for, if one was."""
        return EXIT_CODES.get(self.requested) if self.requested is not None else None  # type: ignore[call-overload]

    def round_scopes(self) -> tuple[anyio.CancelScope, anyio.CancelScope]:
        """Scopes for one round: (the whole round, bounded by the deadline; its reader)."""
        self._round = anyio.CancelScope(deadline=self.deadline)
        self._reading = anyio.CancelScope()
        return self._round, self._reading

    def stop_reading(self) -> None:
        """Read nothing more; what was read still flows through."""
        if self._reading is not None:
            self._reading.cancel()

    def request(self, signum: int) -> None:
        """A signal arrived: the first drains, a second cancels at once."""
        log = get_logger()
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = signum
            self.event.set()
            log.warning("shutdown_requested", signal=name, grace_s=self.grace_s,
                        hint="finishing what is in flight and committing; a second signal stops at once")
            self.stop_reading()
            self._on_request()
            self.deadline = anyio.current_time() + max(0.0, self.grace_s - FINAL_COMMIT_S)
            if self._round is not None:
                self._round.deadline = min(self._round.deadline, self.deadline)
        else:
            log.warning("shutdown_forced", signal=name)
            self.deadline = anyio.current_time()
            if self._round is not None:
                self._round.cancel()


async def watch_signals(shutdown: Shutdown) -> None:
    """Hand SIGTERM, SIGINT and SIGHUP to ``shutdown`` until cancelled."""
    with anyio.open_signal_receiver(*SIGNALS) as signals:
        async for signum in signals:
            shutdown.request(signum)
