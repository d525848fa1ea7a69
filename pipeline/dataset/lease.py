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
SIGKILL'd run on the same machine). A heartbeat in the future (clocks of two
hosts disagree) counts from when it was first seen, so such a lease lives
``ttl_s`` more unless its owner renews it. A lease file that is not JSON (a
write torn by a crash or a full disk) is stale and taken over with a
warning; valid JSON of another shape is not ours to delete and stops with
one line naming the file.

On local disk the lease is created whole or not at all (written aside, then
hard-linked into place, which fails if a lease is there) and each heartbeat
replaces it by a rename, so a crash cannot leave it torn. Every
read-then-write of the lease, and each manifest save with the check of the
lease before it, happens under an exclusive ``flock`` on a lock file beside
it (:meth:`Lease.exclusive`, a :class:`FileLock`): a compare-and-swap, so a writer paused between
its check and its write (SIGSTOP, a frozen machine) holds off its successor
instead of overwriting it. On object stores
the create is a conditional PUT where the store supports one; elsewhere the
check-then-write to take a lease is not atomic: two writers starting within
the same instant could both take it, and the fencing check before each save
stops the loser at its first commit.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Final

import fsspec
import orjson

from pipeline.errors import SinkError
from pipeline.logs import get_logger, redact_url
from pipeline.storage import STORE_ERRORS, describe, is_local, join

LOCKS = "_locks"

#: a lease file's fields and their JSON types
FIELDS: Final = {"owner": (str,), "host": (str,), "pid": (int,), "heartbeat": (int, float)}


class _Unreadable:
    """A lease file that is not JSON: the torn write of a dead writer."""

    def __init__(self, size: int) -> None:
        self.reason = "empty" if size == 0 else f"{size} bytes that are not JSON"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class FileLock:
    """A re-entrant ``flock`` on a lock file beside ``path`` (local disk), and a mutex for this process's threads."""

    def __init__(self, path: str, *, local: bool, shown: str) -> None:
        self.path, self.local, self.shown = path, local, shown
        self._mutex = threading.RLock()  # the heartbeat thread and the commit thread take turns
        self._fd: int | None = None
        self._depth = 0

    @contextmanager
    def held(self, wait_s: float) -> Iterator[None]:
        """Hold it, waiting up to ``wait_s`` for another process to let go (``SinkError`` then)."""
        with self._mutex:
            if self._depth == 0 and self.local:
                self._fd = self._take(wait_s)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    os.close(self._fd)
                    self._fd = None

    def _take(self, wait_s: float) -> int:
        directory, name = self.path.rsplit("/", 1)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(f"{directory}/.{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise SinkError(
                        f"the lock beside {self.shown} stayed held for {wait_s:.0f}s by another process "
                        "(paused, or stuck in a write); refusing to write at the same time"
                    ) from None
                time.sleep(0.05)


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
        self.rank = rank
        self.ttl_s = ttl_s
        self._clock = clock
        self._sleep = sleep
        self.owner = uuid.uuid4().hex
        self.held = False
        self._local = is_local(fs)
        #: on an object store, the ETag of the lease as we last wrote it: renewals are
        #: conditional on it (If-Match), so a writer that lost the lease can never overwrite it
        self._etag: str | None = None
        self._lock = FileLock(self.path, local=self._local, shown=self.url)
        #: the last heartbeat value seen in another's lease, and when it was first seen
        self._seen: tuple[tuple[str, float], float] | None = None

    @property
    def url(self) -> str:
        """Where the lease is, as messages print it."""
        return redact_url(self.path if self._local else self.fs.unstrip_protocol(self.path))

    @contextmanager
    def exclusive(self, wait_s: float = 60.0) -> Iterator[None]:
        """Hold the lease's lock (local disk): no other process reads-then-writes it meanwhile.

        Re-entrant within this process. On an object store it only orders this
        process's own threads: there, conditional writes do the same job.
        """
        with self._lock.held(wait_s):
            yield

    # ------------------------------------------------------------ reading

    def _read(self) -> dict[str, Any] | _Unreadable | None:
        """The lease as it is: None when there is none; ``SinkError`` when it is not a lease."""
        try:
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _Unreadable(len(raw))
        if not isinstance(data, dict) or not all(
            isinstance(data.get(name), types) and not isinstance(data.get(name), bool)
            for name, types in FIELDS.items()
        ):
            raise SinkError(
                f"{self.url} is not a pipeline lease (expected a JSON object with "
                f"{', '.join(FIELDS)}); if no run is writing this dataset, delete it"
            )
        return data

    def _body(self) -> bytes:
        return orjson.dumps({
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": self._clock(),
        })

    # ------------------------------------------------------------ writing

    def _write(self) -> None:
        """Heartbeat into the lease we hold (replace it whole).

        On an object store the PUT is conditional on the ETag we last wrote:
        a lease another writer took meanwhile (even while this process was
        paused with the PUT in flight) answers 412, and we stop.
        """
        if not self._local:
            condition = {"IfMatch": self._etag} if self._etag else {}
            try:
                self._remember(self.fs.pipe_file(self.path, self._body(), **condition))
            except OSError as exc:
                if not condition or exc.errno != errno.EINVAL:  # s3fs's PreconditionFailed (If-Match)
                    raise
                self.held = False
                raise SinkError(
                    f"lost the write lease {self.url} to another pipeline (it changed since our last "
                    "heartbeat); stopping without touching its work"
                ) from exc
            return
        tmp = self._aside()
        try:
            with open(tmp, "wb") as f:
                f.write(self._body())
            os.replace(tmp, self.path)
        except BaseException:
            _remove_quietly(tmp)
            raise

    def _create(self) -> None:
        """Write the lease only if no file is there; ``FileExistsError`` if one is.

        Atomic on local disk (a hard link to a complete file: a crash leaves
        no lease or a whole one) and on AWS S3 (a conditional PUT,
        ``If-None-Match: *``); elsewhere fsspec checks then writes, and the
        fencing in :meth:`renew` still stops a writer that lost a race.
        """
        if not self._local:
            self._remember(self.fs.pipe_file(self.path, self._body(), mode="create"))
            return
        # only the local disk has directories to make: on s3fs, makedirs
        # creates a missing *bucket*, turning a typo in sink.path into a new bucket
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        tmp = self._aside()
        try:
            with open(tmp, "wb") as f:
                f.write(self._body())
            try:
                os.link(tmp, self.path)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                # a filesystem without hard links: an exclusive create, then the content
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(self._body())
        finally:
            _remove_quietly(tmp)

    def _remember(self, answer: Any) -> None:
        """Keep the ETag a PUT answered with (s3fs returns the PutObject answer; others return None)."""
        etag = answer.get("ETag") if isinstance(answer, dict) else None
        self._etag = etag if isinstance(etag, str) else None

    def _aside(self) -> str:
        """A temp file next to the lease, hidden and ours alone."""
        directory, name = self.path.rsplit("/", 1)
        return f"{directory}/.{name}.{self.owner}.tmp"

    def _delete(self) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------ judging another's lease

    def _heartbeat(self, current: dict[str, Any]) -> float:
        """The lease's heartbeat, or when it was first seen if that is earlier (a clock ahead of ours)."""
        heartbeat = float(current["heartbeat"])
        key = (str(current["owner"]), heartbeat)
        now = self._clock()
        if self._seen is None or self._seen[0] != key:
            self._seen = (key, now)
            if heartbeat > now + self.ttl_s:
                get_logger().warning(
                    "lease_heartbeat_in_future", path=self.url, ahead_s=round(heartbeat - now),
                    held_by_host=current["host"], held_by_pid=current["pid"],
                )
        return min(heartbeat, self._seen[1])

    def _free(self, current: dict[str, Any] | None) -> bool:
        if current is None or current["owner"] == self.owner:
            return True
        if self._clock() - self._heartbeat(current) > self.ttl_s:
            return True
        return current["host"] == socket.gethostname() and not _alive(int(current["pid"]))

    def _since(self, current: dict[str, Any]) -> str:
        """``heartbeat 3s ago``, or ``in the future`` when the other host's clock is ahead."""
        age = self._clock() - float(current["heartbeat"])
        if age < 0:
            return f"heartbeat {-age:.0f}s in the future: is its clock right?"
        return f"heartbeat {age:.0f}s ago"

    # ------------------------------------------------------------ the lease's life

    def acquire(self, wait_s: float, on_wait: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Take the lease, waiting up to ``wait_s`` for another writer to let go.

        Sleeps between tries and gives up at the deadline: raises
        :class:`SinkError` naming the other writer when it does not let go,
        or naming the file when it holds something that is not a lease.
        """
        deadline = self._clock() + wait_s
        told = False
        while True:
            with self.exclusive(max(wait_s, 5.0)):
                current = self._take_if_free()
            if current is None:
                return
            if not isinstance(current, dict):
                current = None
            elif on_wait is not None and not told:
                on_wait(current)
                told = True
            now = self._clock()
            if now >= deadline:
                raise SinkError(self._refusal(current))
            self._sleep(min(1.0, max(0.05, deadline - now)))

    def _take_if_free(self) -> dict[str, Any] | bool | None:
        """One try (under the lock): None when the lease is now ours; else the other's lease (or False)."""
        current = self._read()
        if isinstance(current, _Unreadable):
            get_logger().warning("lease_taken_over", path=self.url, reason=f"the lease file is {current.reason}")
            current = None
            self._delete()
        elif current is not None and self._free(current):
            self._delete()  # stale, or ours from before: make room for a clean create
            current = None
        if current is not None:
            return current
        try:
            self._create()
        except FileExistsError:
            return False  # another writer created it first: look again after a pause
        self.held = True
        return None

    def _refusal(self, current: dict[str, Any] | None) -> str:
        holder = ""
        if current is not None:
            holder = f" (host {current['host']}, pid {current['pid']}, {self._since(current)})"
        return (
            f"another pipeline{holder} is writing rank {self.rank:05d} "
            f"of this dataset; refusing to write it at the same time"
        )

    def renew(self) -> None:
        """Heartbeat; raises :class:`SinkError` if another writer took the lease."""
        with self.exclusive():
            self._renew()

    def _renew(self) -> None:
        current = self._read()
        if isinstance(current, _Unreadable) or (current is not None and current["owner"] != self.owner):
            self.held = False
            holder = "" if isinstance(current, _Unreadable) else f" (host {current['host']}, pid {current['pid']})"
            raise SinkError(
                f"lost the write lease {self.url} to another pipeline{holder}; stopping without touching its work"
            )
        self._write()

    def release(self) -> None:
        """Let go, if we still hold it; a store that refuses is a warning, never an error.

        Release runs on the way out, often after another error: raising here
        would hide that one. A lease left behind is taken over once its
        heartbeat is older than ``ttl_s`` (at once on this host).
        """
        if not self.held:
            return
        self.held = False
        try:
            with self.exclusive(5.0):
                current = self._read()
                if isinstance(current, dict) and current["owner"] == self.owner:
                    self._delete()
        except SinkError:
            return  # not a lease at all, so not ours to delete
        except STORE_ERRORS as exc:
            get_logger().warning("lease_not_released", path=self.url, error=describe(exc))


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
