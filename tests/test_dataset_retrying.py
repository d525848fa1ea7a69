"""A blinking store: uploads, manifest saves and lease renewals retried for a while, then one clear error."""

from __future__ import annotations

import errno
from typing import Any

import fsspec
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from pipeline.config import SinkConfig
from pipeline.dataset.retrying import StoreRetry, transient
from pipeline.dataset.writer import DatasetWriter
from pipeline.errors import CommitFailed, SinkError

from conftest import FakeClock
from test_dataset_writer import make_batch


def test_what_counts_as_transient() -> None:
    """Resets and the network's own errors are retried; a full disk, a refusal or our own errors are not."""
    assert transient(OSError(errno.ECONNRESET, "connection reset"))
    assert transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    assert transient(ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject"))
    assert not transient(ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
                                     "PutObject"))
    assert not transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not transient(PermissionError(errno.EACCES, "denied"))
    assert not transient(SinkError("lost the write lease"))
    assert not transient(ValueError("a bug"))


class Flaky:
    """Makes the next ``failures`` calls of some memory-fs methods raise a connection reset."""

    def __init__(self, fs: fsspec.AbstractFileSystem, failures: int, methods: tuple[str, ...],
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.failures = failures
        for name in methods:
            real = getattr(fs, name)

            def flaky(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
                if self.failures > 0:
                    self.failures -= 1
                    raise OSError(errno.ECONNRESET, "connection reset by peer")
                return _real(*args, **kwargs)

            monkeypatch.setattr(fs, name, flaky)  # fsspec shares the instance: undo after the test


def writer_on(fs: fsspec.AbstractFileSystem, clock: FakeClock) -> DatasetWriter:
    return DatasetWriter(SinkConfig(path="memory://ds"), rank=0, model="m", input_type=None, embedding_type="float",
                         metadata_fields=[], run_started_at="t0", fs=fs, clock=clock,
                         retry=StoreRetry(60, sleep=clock.sleep, clock=clock))


def test_a_short_outage_is_ridden_out(memfs: fsspec.AbstractFileSystem, clock: FakeClock,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Three failed calls in a row during a commit: the commit still lands, once."""
    w = writer_on(memfs, clock)
    w.write(make_batch(0, 4))
    Flaky(memfs, 3, ("put_file", "pipe_file"), monkeypatch)
    entries = w.commit()
    assert [e["rows"] for e in entries] == [4]
    assert w.manifest.totals["rows_embedded"] == 4
    assert memfs.exists("/ds/data/part-00000-000000.parquet")


def test_a_long_outage_stops_with_one_line(memfs: fsspec.AbstractFileSystem, clock: FakeClock,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A store away for longer than the retry budget: CommitFailed saying the last commit is intact."""
    w = writer_on(memfs, clock)
    w.write(make_batch(0, 4))
    w.commit()
    w.write(make_batch(1, 4, start=4))
    Flaky(memfs, 10_000, ("put_file", "pipe_file"), monkeypatch)
    started = clock()
    with pytest.raises(CommitFailed, match="connection reset.*intact, run again"):
        w.commit()
    assert 50 <= clock() - started <= 60
