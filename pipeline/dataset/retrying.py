"""Riding out a store that blinks: commits and lease renewals retried for a while.

An object store can be unreachable for a few seconds (a 503 storm, a DNS
hiccup, a connection reset). A commit is idempotent until the manifest
switches (a shard PUT again under the same name, the manifest saved again),
so those steps are retried with backoff for up to ``budget_s``. Errors that
waiting cannot fix (a full or read-only disk, a permission refused, a lost
lease) are raised at once.
"""

from __future__ import annotations

import errno
import time
from typing import Callable, TypeVar

from pipeline.errors import PipelineError
from pipeline.logs import get_logger
from pipeline.storage import STORE_ERRORS

T = TypeVar("T")

#: OSErrors that waiting does not fix
PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                              errno.EISDIR, errno.ENOTDIR, errno.EDQUOT, errno.EFBIG, errno.ENAMETOOLONG,
                              errno.EEXIST, errno.EINVAL})  # the last two: a conditional write refused


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away by itself: a network or store error, not a full disk, a refusal or a bug."""
    if isinstance(exc, PipelineError) or not isinstance(exc, STORE_ERRORS):
        return False
    if isinstance(exc, OSError):
        refused = (PermissionError, FileNotFoundError, FileExistsError)
        return not isinstance(exc, refused) and exc.errno not in PERMANENT_ERRNOS
    status = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status is None or status >= 500 or status in (408, 429)  # botocore's ClientError says


class StoreRetry:
    """Runs a store operation, retrying transient errors with capped backoff for up to ``budget_s``."""

    def __init__(
        self,
        budget_s: float = 60.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_s = budget_s
        self._sleep = sleep
        self._clock = clock

    def __call__(self, operation: Callable[[], T], what: str) -> T:
        """``operation()``; the last error once the budget is spent or the error is permanent."""
        deadline = self._clock() + self.budget_s
        delay = 0.5
        while True:
            try:
                return operation()
            except Exception as exc:
                if not transient(exc) or self._clock() + delay > deadline:
                    raise
                reason = " ".join(str(exc).split()) or type(exc).__name__
                get_logger().warning("store_retrying", what=what, reason=reason[:300], wait_s=delay)
                self._sleep(delay)
                delay = min(delay * 2, 8.0)
