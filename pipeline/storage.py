"""Where bytes are kept: a filesystem and a root, and the one boundary where its errors become ours.

Every URL a user gives (``source.path``, ``sink.path``, ``run.reuse_from``,
the dataset of ``pipeline inspect``) is opened with :meth:`Location.open`.
Storage operations whose failure a user can cause run inside
:meth:`Location.errors` (or :func:`storage_errors`), which turns what fsspec,
the OS and botocore raise into :class:`~pipeline.errors.SourceError`,
:class:`~pipeline.errors.SinkError` or a class the caller names: one line,
URLs redacted, the original kept as ``__cause__``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import PipelineError, SinkError, SourceError
from pipeline.logs import redact_url

__all__ = ["STORE_ERRORS", "Location", "describe", "is_local", "join", "storage_errors"]


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a store's client raises for a failed operation: the OS's errors, and
    botocore's and aiohttp's where s3fs lets them through untranslated (no
    credentials, endpoint unreachable, an unexpected answer)."""
    errors: list[type[BaseException]] = [OSError, EOFError, TimeoutError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # s3fs is optional
        pass
    try:
        from aiohttp import ClientError as HttpClientError

        errors.append(HttpClientError)
    except ImportError:
        pass
    return tuple(errors)


#: exceptions that mean "the store failed this operation" (not a bug of ours)
STORE_ERRORS: tuple[type[BaseException], ...] = _store_errors()


def describe(exc: BaseException) -> str:
    """One line for an exception: its message with whitespace collapsed, or its class name."""
    return " ".join(str(exc).split()) or type(exc).__name__


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local disk (write then rename) rather than a store (one PUT per object)."""
    return isinstance(fs, LocalFileSystem)


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for fsspec paths (always ``/``)."""
    return "/".join([root.rstrip("/"), *parts])


@contextmanager
def storage_errors(
    error: type[PipelineError],
    what: str,
    *,
    missing: str | None = None,
    catch: tuple[type[BaseException], ...] = STORE_ERRORS,
) -> Iterator[None]:
    """Run a storage operation; a failure it raises becomes ``error("{what}: {reason}")``.

    ``missing`` replaces the whole message when the failure is a
    ``FileNotFoundError``. Our own errors pass through unchanged; exceptions
    outside ``catch`` are bugs and pass through too. The message is one line
    with every URL's userinfo masked.
    """
    try:
        yield
    except PipelineError:
        raise
    except catch as exc:
        if missing is not None and isinstance(exc, FileNotFoundError):
            message = missing
        else:
            message = f"{what}: {describe(exc)}"
        raise error(redact_url(message)) from exc


def _error_for(role: str) -> type[PipelineError]:
    return SourceError if role.startswith("source") else SinkError


@dataclass(frozen=True, slots=True)
class Location:
    """A filesystem and a root path on it, with the URL as the user wrote it (for messages).

    ``role`` is the config key the URL came from (``source.path``,
    ``sink.path``, ``run.reuse_from``, ...): messages start with it, and it
    picks the error class (``SourceError`` for ``source.*``, else ``SinkError``).
    """

    fs: fsspec.AbstractFileSystem
    root: str  # as the filesystem knows it: no protocol, no trailing "/"
    url: str  # as the user wrote it
    role: str = "sink.path"

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None, *, role: str = "sink.path") -> Location:
        """The filesystem of ``url`` made with ``storage_options``; a one-line error when it cannot be made.

        Any exception counts here: backends report an unknown protocol, a
        missing package or a bad option in their own ways (``ValueError``,
        ``ImportError``, ``TypeError``).
        """
        error = _error_for(role)
        with storage_errors(error, f"{role} {url}: cannot open the filesystem", catch=(Exception,)):
            fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        return cls(fs, _normal(fs, root), url, role)

    @classmethod
    def on(cls, fs: fsspec.AbstractFileSystem, url: str, *, role: str = "sink.path") -> Location:
        """``url`` on a filesystem already made (tests inject one)."""
        return cls(fs, _normal(fs, fs._strip_protocol(url)), url, role)

    @property
    def local(self) -> bool:
        """Whether this is the local disk."""
        return is_local(self.fs)

    @property
    def error(self) -> type[PipelineError]:
        """The error class of this location's role."""
        return _error_for(self.role)

    @property
    def shown(self) -> str:
        """The URL as messages print it (userinfo masked)."""
        return redact_url(self.url)

    def join(self, *parts: str) -> str:
        """The path of ``parts`` under the root."""
        return join(self.root, *parts)

    def url_of(self, path: str) -> str:
        """The URL of ``path`` to show and record: the path itself on local disk, ``s3://...`` on S3.

        Userinfo is masked (``https://***@host/...``): it names the file in
        messages, logs and the dataset, and is never used to open it.
        """
        return path if self.local else redact_url(self.fs.unstrip_protocol(path))

    def errors(
        self,
        doing: str,
        *,
        error: type[PipelineError] | None = None,
        missing: str | None = None,
        catch: tuple[type[BaseException], ...] = STORE_ERRORS,
    ) -> Any:
        """A context manager: failures inside become ``"{role} {url}: {doing}: {reason}"``.

        ``error`` overrides the role's class (``CommitFailed`` for a write
        mid-run); ``missing`` is the message for a ``FileNotFoundError``.
        """
        return storage_errors(error or self.error, f"{self.role} {self.url}: {doing}", missing=missing, catch=catch)

    def invalidate(self, path: str | None = None) -> None:
        """Forget cached listings at and below ``path`` (default: the root), so the next listing asks the store.

        fsspec shares one instance per protocol and options process-wide, and
        s3fs answers ``ls``, ``info`` and shallow globs from its listings
        cache; its ``invalidate_cache(path)`` drops only ``path`` and its
        parents, so cached listings below it are dropped here too.
        """
        path = (path or self.root).rstrip("/")
        self.fs.invalidate_cache(path)
        cache = getattr(self.fs, "dircache", None)
        if cache is not None:
            below = path + "/"
            for key in [k for k in list(cache) if isinstance(k, str) and k.startswith(below)]:
                cache.pop(key, None)


def _normal(fs: fsspec.AbstractFileSystem, root: str) -> str:
    if is_local(fs):
        root = posixpath.normpath(root)
    return root.rstrip("/") or "/"
