"""Watch mode: list the source again and again, and bring the dataset up to date each round.

A watcher lists the source every ``run.poll_interval_s``. A file is read
once its size and time (or ETag) stayed the same across two listings, so a
file still being uploaded is not read half-way; a file's rows are removed
once it is missing from two listings in a row, so a listing that blinks
does not remove anything. Each round compares with the dataset the way a
run does (:mod:`pipeline.jobs.changes`).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Awaitable, Callable, Iterable

import anyio

from pipeline.config import Config
from pipeline.dataset.sink import Sink
from pipeline.errors import SourceError
from pipeline.jobs.changes import Changes, compare, known_inputs
from pipeline.jobs.inputs import list_source
from pipeline.logs import get_logger
from pipeline.sources.listed import Inputs

FIRST_SETTLE_S = 5.0  # the first settle check comes soon, whatever the poll interval


async def watch_source(
    cfg: Config,
    sink: Sink,
    *,
    keep_going: Callable[[], bool],
    wake: anyio.Event,
    update: Callable[[Any, Changes], Awaitable[None]],
    note: Callable[[Any, Changes], dict[str, int]],
    warned: set[str] | None = None,
) -> None:
    """List, compare the settled inputs with the dataset, bring it up to date; until told to stop.

    ``note(fs, changes)`` tells the sink what changed (and may refuse a
    mass removal) and returns the counts to log; ``update(fs, changes)`` then removes what is gone, reads
    what changed and commits; ``wake`` ends a sleep between listings early
    (a signal). ``warned``: the warnings given once (by the job's first listing too), not once a listing.
    """
    log = get_logger()
    previous: Inputs | None = None  # this rank's inputs in the listing before
    previous_urls: Inputs | None = None
    urls: Inputs | None
    wait = min(FIRST_SETTLE_S, cfg.run.poll_interval_s)
    warned = set() if warned is None else warned
    while keep_going():
        try:
            fs, urls, listed = await anyio.to_thread.run_sync(partial(list_source, cfg, warned=warned))
        except SourceError as exc:  # nothing there yet, or the store blinked: try again later
            log.info("watch_listing_empty", reason=str(exc))
            fs, urls, listed = None, None, Inputs.empty()
        settled = await anyio.to_thread.run_sync(listed.settled_since, previous)
        # gone only when missing from this listing and the one before; a listing that
        # failed or found nothing at all removes nothing
        seen: Any
        if urls is None or previous_urls is None:
            seen = set(known_inputs(sink))
        else:
            seen = _Either(urls, previous_urls)
        previous, previous_urls = listed, urls
        changes = await anyio.to_thread.run_sync(compare, sink, fs, settled, seen)
        if changes.to_read or changes.deleted or changes.back:
            counts = note(fs, changes)  # with run.on_deleted: keep, the deleted are left alone
            # a file kept is said once, on the round that finds it gone (then marked counted), as a run says it
            if changes.to_read or changes.deleted or changes.kept:
                log.info("watch_found", **counts)
            await update(fs, changes)
        with anyio.move_on_after(wait):
            await wake.wait()
        wait = cfg.run.poll_interval_s


class _Either:
    """The urls of two listings, as :func:`~pipeline.jobs.changes.compare` looks them up."""

    def __init__(self, one: Inputs, other: Inputs) -> None:
        self._one, self._other = one, other

    def missing(self, urls: Iterable[str]) -> list[str]:
        return self._other.missing(self._one.missing(urls))
