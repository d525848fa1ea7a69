"""Watch mode, and what every run notes about its inputs.

A watcher lists the source every ``run.poll_interval_s`` and embeds files
that are new or changed once their size and time (or ETag) stayed the same
across two listings, so a file still being uploaded is not read half-way.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import anyio

from pipeline.config import Config
from pipeline.dataset.sink import Sink
from pipeline.errors import SourceError
from pipeline.jobs.inputs import list_inputs
from pipeline.jobs.progress import Progress
from pipeline.logs import get_logger
from pipeline.stages.ids import IdRegistry
from pipeline.stages.read import Checkpoints
from pipeline.types import END_OF_FILE, InputFile

FIRST_SETTLE_S = 5.0  # the first settle check comes soon, whatever the poll interval


def signature(inp: InputFile) -> str:
    """What tells that an input changed: its size and modification time or ETag."""
    return f"{inp.size}:{inp.mtime}"


def note_inputs(
    sink: Sink,
    files: list[InputFile],
    progress: Progress,
    checkpoints: Checkpoints,
    *,
    restart_changed: bool = False,
    ids: IdRegistry | None = None,
) -> None:
    """Record each input's signature, and count the bytes still to read.

    With ``restart_changed`` (watch mode), an input whose signature changed
    since it was embedded is read again from its first record.
    """
    for inp in files:
        sig = signature(inp)
        known = sink.signature(inp.url)
        if restart_changed and known not in (None, sig):
            get_logger().warning("file_changed", file=inp.key)
            sink.restart(inp.key, inp.url)
            checkpoints.forget(inp.url)
            if ids is not None:  # its new version may use its old ids again
                ids.forget_source(inp.url)
        if restart_changed or known is None:
            sink.set_signature(inp.url, sig)
        if sink.done_upto(inp.key) < END_OF_FILE:
            progress.expect(inp)


def needs_reading(sink: Sink, inp: InputFile) -> bool:
    """Whether ``inp`` is new, unfinished, or changed since it was embedded."""
    known = sink.signature(inp.url)
    done = sink.done_upto(inp.key) >= END_OF_FILE
    return not done or (known is not None and known != signature(inp))


async def watch_source(
    cfg: Config,
    sink: Sink,
    *,
    keep_going: Callable[[], bool],
    wake: anyio.Event,
    run_round: Callable[[Any, list[InputFile]], Awaitable[None]],
    commit: Callable[[], Awaitable[None]],
    note: Callable[[list[InputFile]], None],
) -> None:
    """List, wait for files to settle, run a round over the ready ones, commit; until told to stop.

    ``note`` records the ready inputs before their round; ``wake`` ends a
    sleep between listings early (a signal).
    """
    log = get_logger()
    previous: dict[str, tuple[int | None, str | None]] = {}
    wait = min(FIRST_SETTLE_S, cfg.run.poll_interval_s)
    while keep_going():
        try:
            fs, listed = await anyio.to_thread.run_sync(list_inputs, cfg)
        except SourceError as exc:  # nothing there yet, or the store blinked: try again later
            log.info("watch_listing_empty", reason=str(exc))
            fs, listed = None, []
        current = {f.key: (f.size, f.mtime) for f in listed}
        ready = [f for f in listed if previous.get(f.key) == current[f.key] and needs_reading(sink, f)]
        previous = current
        if ready and fs is not None:
            log.info("watch_found", files=len(ready))
            note(ready)
            await run_round(fs, ready)
            # commit now: the next listing must see these files as done, and
            # a watcher may then sleep for a long time
            await commit()
        with anyio.move_on_after(wait):
            await wake.wait()
        wait = cfg.run.poll_interval_s
