"""Tests for pipeline.storage: a filesystem plus a root, and the one place its errors become ours."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
import s3fs
from botocore.exceptions import EndpointConnectionError

from pipeline.errors import CommitFailed, SinkError, SourceError
from pipeline.storage import Location, describe, is_local, join, storage_errors


def test_open_a_local_path(tmp_path: Path) -> None:
    """A local path opens on the local disk, its root normalised, the URL kept as written."""
    written = f"{tmp_path}/a/../b/"
    location = Location.open(written)
    assert location.local and is_local(location.fs)
    assert location.root == f"{tmp_path}/b"
    assert location.url == written
    assert location.join("data", "x.parquet") == f"{tmp_path}/b/data/x.parquet"
    assert location.url_of(location.join("x")) == f"{tmp_path}/b/x"


def test_open_a_url_and_on_a_given_filesystem(memfs: fsspec.AbstractFileSystem) -> None:
    """A memory:// URL opens its filesystem; on() wraps a filesystem already made; url_of adds the protocol."""
    location = Location.open("memory://bucket/ds/", role="run.reuse_from")
    assert not location.local and location.root == "/bucket/ds"
    same = Location.on(memfs, "memory://bucket/ds")
    assert same.root == location.root and same.fs is memfs
    assert location.url_of(location.join("a.json")) == "memory:///bucket/ds/a.json"


@pytest.mark.parametrize(("role", "error"), [("source.path", SourceError), ("sink.path", SinkError)])
def test_open_failure_is_one_line_of_the_role(role: str, error: type[Exception]) -> None:
    """A filesystem that cannot be made is one line naming the role and the URL, of the role's error class."""
    with pytest.raises(error) as info:
        Location.open("nosuchproto://bucket/x", role=role)
    message = str(info.value)
    assert message.startswith(f"{role} nosuchproto://bucket/x: cannot open the filesystem: ")
    assert "\n" not in message and info.value.__cause__ is not None


def test_messages_never_show_userinfo(memfs: fsspec.AbstractFileSystem) -> None:
    """A URL carrying credentials is printed with its userinfo masked, in the message and the reason."""
    location = Location.on(memfs, "memory://user:SECRET@host/ds")
    assert location.shown == "memory://***@host/ds"
    with pytest.raises(SinkError) as info, location.errors("cannot list"):
        raise OSError("failed to reach memory://user:SECRET@host/ds")
    assert "SECRET" not in str(info.value) and "***@host" in str(info.value)


def test_errors_translates_store_failures(memfs: fsspec.AbstractFileSystem) -> None:
    """OS and botocore errors become the role's error (or the one asked for), one line, cause kept."""
    location = Location.on(memfs, "memory://b/ds", role="sink.path")
    with pytest.raises(SinkError, match=r"^sink.path memory://b/ds: cannot write: disk\nfull$".replace(r"\n", " ")):
        with location.errors("cannot write"):
            raise OSError("disk\n  full")
    with pytest.raises(SinkError, match="^gone$") as info, location.errors("cannot read", missing="gone"):
        raise FileNotFoundError("b/ds/x")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(CommitFailed, match="Could not connect"):
        with location.errors("cannot commit", error=CommitFailed):
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")


def test_errors_let_bugs_and_our_own_errors_through() -> None:
    """Our own errors pass unchanged, and an exception that is not the store's is a bug: it is not hidden."""
    original = SourceError("already one line")
    with pytest.raises(SourceError) as info, storage_errors(SinkError, "x"):
        raise original
    assert info.value is original
    with pytest.raises(KeyError), storage_errors(SinkError, "x"):
        raise KeyError("a bug")


def test_describe_is_one_line() -> None:
    """describe() collapses whitespace, and names the class of an exception without a message."""
    assert describe(OSError("a\n  b\tc")) == "a b c"
    assert describe(TimeoutError()) == "TimeoutError"


def test_join() -> None:
    """join() puts exactly one / between the root and each part."""
    assert join("b/ds/", "data", "x") == "b/ds/data/x"
    assert join("/", "x") == "/x"


def test_invalidate_forgets_cached_listings_below_the_root() -> None:
    """invalidate() drops the cached listings of the root and of everything below it, not of its siblings."""
    fs = s3fs.S3FileSystem(anon=True, skip_instance_cache=True)  # no request is made
    for key in ("b", "b/docs", "b/docs/2024", "b/docs/2024/x", "b/other", "b/docs-old"):
        fs.dircache[key] = []
    Location.on(fs, "s3://b/docs").invalidate()
    assert sorted(fs.dircache) == ["b/docs-old", "b/other"]
