"""Where a rank's manifest is saved: behind the write lease, conditionally on a store, retried while it blinks.

Every save checks first that this writer still holds the lease, then writes
the rank's manifest, with no other writer in between: under the lease's lock
on local disk (a compare-and-swap), and on an object store as a PUT
conditional on the manifest's version this writer last saw (If-Match on its
ETag; create-only when there is none). A writer that lost the lease while
paused (even if its last renewal got through) can never overwrite its
successor's manifest. Store errors are retried for a while, then become one
:class:`~pipeline.errors.CommitFailed` line.
"""

from __future__ import annotations

import errno
from contextlib import nullcontext
from typing import Any

from pipeline.dataset.lease import Lease
from pipeline.dataset.manifest import Manifest, manifest_name, save_rank
from pipeline.dataset.retrying import StoreRetry
from pipeline.dataset.state_files import persist
from pipeline.errors import CommitFailed, SinkError
from pipeline.storage import STORE_ERRORS, Location, describe, join


class Ledger:
    """Saves one rank's manifest, fenced by its lease (which :meth:`release` lets go)."""

    def __init__(self, where: Location, rank: int, world_size: int, lease: Lease | None, retry: StoreRetry) -> None:
        self._where = where
        self._rank = rank
        self._world_size = world_size
        self._lease = lease
        self._retry = retry
        #: an object store: saves are conditional on the ETag last seen, shard names never reused
        self.fenced = not where.local
        self._path = join(where.root, manifest_name(rank, world_size))
        self._etag: str | None = self._current_etag() if self.fenced else None

    def save(self, manifest: Manifest) -> None:
        """Save ``manifest`` as this rank's, if the lease is still ours; :class:`CommitFailed` otherwise.

        What changed in its resume state is written first (a file the save
        lists); state files the save no longer lists are deleted after it.
        """
        retired: list[str] = []
        with self._lease.exclusive() if self._lease is not None else nullcontext():
            self.renew()
            try:
                retired = self._retry(lambda: persist(self._where.fs, self._where.root, self._rank, manifest,
                                                      fenced=self.fenced), "writing the resume state")
                self._retry(lambda: self._save_once(manifest), "saving the manifest")
            except SinkError as exc:
                raise CommitFailed(str(exc)) from exc
            except STORE_ERRORS as exc:
                if self.fenced and (isinstance(exc, FileExistsError) or getattr(exc, "errno", None) == errno.EINVAL):
                    raise CommitFailed(  # our condition failed: the manifest is not the version we last wrote
                        f"another pipeline has written the manifest of rank {self._rank:05d} of {self._where.url} "
                        "since this one last did (it took over the write lease); stopping without touching its work"
                    ) from exc
                raise CommitFailed(
                    f"cannot save the manifest of {self._where.url}: {describe(exc)}; what was committed before "
                    "is intact, run again to resume"
                ) from exc
        for path in retired:  # listed nowhere now; a crash before this leaves files the next start deletes
            try:
                self._where.fs.rm_file(path)
            except (OSError, *STORE_ERRORS):
                pass

    def renew(self) -> None:
        """Heartbeat the lease (retried while the store blinks); :class:`CommitFailed` when it is lost."""
        lease = self._lease
        if lease is None:
            return
        try:
            self._retry(lease.renew, f"renewing the lease {lease.path}")
        except SinkError as exc:
            raise CommitFailed(str(exc)) from exc
        except Exception as exc:  # the store's own errors (botocore, OSError), after retries
            raise CommitFailed(
                f"cannot renew the write lease {lease.path}: {describe(exc)}; what was committed is intact, "
                "run again to resume"
            ) from exc

    def release(self) -> None:
        """Let go of the lease; a lease that cannot be deleted goes stale, and the next run takes it."""
        if self._lease is not None:
            try:
                self._lease.release()
            except Exception:
                pass

    def _current_etag(self) -> str | None:
        """The ETag of this rank's manifest on the store, None when there is none (or no ETag)."""
        try:
            return _etag_of(self._where.fs.info(self._path))
        except FileNotFoundError:
            return None

    def _save_once(self, manifest: Manifest) -> None:
        """One save, conditional on a store (see :attr:`fenced`); remembers the new ETag."""
        fs = self._where.fs
        condition: dict[str, Any] | None = None
        if self.fenced:
            condition = {"IfMatch": self._etag} if self._etag else {"mode": "create"}
            if self._etag is None and fs.exists(self._path):
                condition = None  # a store without ETags: nothing to be conditional on
        answer = save_rank(manifest, fs, self._where.root, self._rank, self._world_size, condition)
        if self.fenced:
            self._etag = _etag_of(answer) or self._current_etag()


def _etag_of(answer: Any) -> str | None:
    etag = answer.get("ETag") if isinstance(answer, dict) else None
    return etag if isinstance(etag, str) else None
