"""One writer per rank: a lease file with a heartbeat in the sink.

When Heroku restarts a dyno, the new one may start while the old one is
still draining after SIGTERM. Both would write shards and the manifest of the
same rank. The lease makes the second wait until the first lets go (or stops
heartbeating), then refuses with a clear error if it never does; and a
writer checks, before every manifest save, that the lease is still its own
(fencing), so a writer that lost it can never overwrite the other's work.

``_locks/{rank:05d}.json`` holds the owner's id, host, pid and last
heartbeat. A lease is stale when its heartbeat is older than ``ttl_s``, or at
once when its owner was a process on this host that no longer exists (a
SIGKILL'd run on the same machine).

On object stores the check-then-write to take a lease is not atomic: two
writers starting within the same instant could both take it. The fencing
check before each save still stops the loser at its first commit.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any, Callable

import fsspec
import orjson

from pipeline.errors import SinkError
from pipeline.storage import is_local, join

LOCKS = "_locks"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Lease:
    """The right to write one rank of a dataset."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        root: str,
        rank: int,
        *,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.fs = fs
        self.path = join(root, LOCKS, f"{rank:05d}.json")
        self.ttl_s = ttl_s
        self._clock = clock
        self._sleep = sleep
        self.owner = uuid.uuid4().hex
        self.held = False

    def _read(self) -> dict[str, Any] | None:
        try:
            return orjson.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError:
            return None  # a torn write of a dead writer: treat as free

    def _body(self) -> bytes:
        return orjson.dumps({
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": self._clock(),
        })

    def _write(self) -> None:
        """Heartbeat into the lease we hold (overwrite)."""
        self.fs.pipe_file(self.path, self._body())

    def _create(self) -> None:
        """Write the lease only if no file is there; ``FileExistsError`` if one is.

        Atomic on local disk (``O_EXCL``) and on AWS S3 (a conditional PUT,
        ``If-None-Match: *``); elsewhere fsspec checks then writes, and the
        fencing in :meth:`renew` still stops a writer that lost a race.
        """
        if is_local(self.fs):
            # only the local disk has directories to make: on s3fs, makedirs
            # creates a missing *bucket*, turning a typo in sink.path into a new bucket
            self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(self._body())
        else:
            self.fs.pipe_file(self.path, self._body(), mode="create")

    def _free(self, current: dict[str, Any] | None) -> bool:
        if current is None or current.get("owner") == self.owner:
            return True
        if self._clock() - float(current.get("heartbeat", 0)) > self.ttl_s:
            return True
        same_host = current.get("host") == socket.gethostname()
        return same_host and not _alive(int(current.get("pid", 0)))

    def acquire(self, wait_s: float, on_wait: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Take the lease, waiting up to ``wait_s`` for another writer to let go.

        Raises :class:`SinkError` naming the other writer when it does not.
        """
        deadline = self._clock() + wait_s
        told = False
        while True:
            current = self._read()
            if self._free(current):
                if current is not None:  # stale, or ours from before: make room for a clean create
                    try:
                        self.fs.rm_file(self.path)
                    except FileNotFoundError:
                        pass
                try:
                    self._create()
                except FileExistsError:
                    continue  # another writer created it first: look again
                self.held = True
                return
            assert current is not None
            if self._clock() >= deadline:
                age = self._clock() - float(current.get("heartbeat", 0))
                raise SinkError(
                    f"another pipeline (host {current.get('host')}, pid {current.get('pid')}, "
                    f"heartbeat {age:.0f}s ago) is writing rank {self.path.rsplit('/', 1)[-1][:5]} "
                    f"of this dataset; refusing to write it at the same time"
                )
            if on_wait is not None and not told:
                on_wait(current)
                told = True
            self._sleep(min(1.0, max(0.05, deadline - self._clock())))

    def renew(self) -> None:
        """Heartbeat; raises :class:`SinkError` if another writer took the lease."""
        current = self._read()
        if current is not None and current.get("owner") != self.owner:
            self.held = False
            raise SinkError(
                f"lost the write lease {self.path} to another pipeline (host {current.get('host')}, "
                f"pid {current.get('pid')}); stopping without touching its work"
            )
        self._write()

    def release(self) -> None:
        """Let go, if we still hold it."""
        if not self.held:
            return
        self.held = False
        current = self._read()
        if current is not None and current.get("owner") == self.owner:
            try:
                self.fs.rm_file(self.path)
            except FileNotFoundError:
                pass
