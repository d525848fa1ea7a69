"""Whole small S3 objects read with obstore (Rust) instead of s3fs, for the files fetched ahead.

On S3 a small object costs one GET, and through s3fs each GET also costs
several ms of client CPU (botocore builds, signs and parses every request in
Python): hundreds of objects a second are out of reach on a small machine,
whatever the concurrency. obstore (Apache Arrow's ``object_store``) does the
same GET for a fraction of that. Only this GET moves: listing, big files,
pieces of files and the sink keep going through s3fs.

The obstore store is made from the s3fs filesystem itself, so that both see
the same store: its botocore client's endpoint, region and credentials (the
ones botocore resolved from the storage options, the AWS_* environment or a
profile), anonymous when the filesystem is. Options that cannot be carried
over (a version-aware or SSE-C filesystem, extra client or request options)
keep every GET on s3fs, as does a missing obstore package.

A GET obstore fails is done again through s3fs, so a missing object or a
refused one reports exactly as before (s3fs's error, the caller's message).
Should s3fs succeed where obstore failed, the two disagree about the store
(a region, an endpoint or a credential not carried over): every later GET
goes through s3fs, and one ``fast_get_off`` line says so.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import fsspec.asyn

from pipeline.logs import get_logger

__all__ = ["S3Getter", "s3_getter"]

#: client options of s3fs's that change nothing a GET through obstore depends on
_SAME_CLIENT = {"endpoint_url", "region_name"}
#: botocore config options that do not stop obstore from doing the same GET
_SAME_CONFIG = {"max_pool_connections", "connect_timeout", "read_timeout", "retries", "signature_version",
                "s3", "user_agent_extra"}
#: how long credentials that botocore refreshes are used before botocore is asked again
_REFRESHED_EVERY = timedelta(minutes=5)


def s3_getter(fs: Any) -> S3Getter | None:
    """A getter of whole objects of ``fs`` through obstore; None when ``fs`` is not S3, its options cannot
    be carried over, or obstore is not installed (its GETs then stay on ``fs``)."""
    if not _carried_over(fs):
        return None
    try:
        import obstore  # noqa: F401
    except ImportError:
        return None
    return S3Getter(fs)


def _carried_over(fs: Any) -> bool:
    """Whether obstore can do the GETs of ``fs`` as s3fs would: an s3fs filesystem with plain options."""
    try:
        from s3fs import S3FileSystem
    except ImportError:
        return False
    if not isinstance(fs, S3FileSystem) or fs.version_aware or fs.s3_additional_kwargs:
        return False
    if set(fs.client_kwargs) - _SAME_CLIENT or set(fs.config_kwargs) - _SAME_CONFIG:
        return False
    signature = fs.config_kwargs.get("signature_version")
    if signature not in (None, "s3v4"):
        return False
    addressing = (fs.config_kwargs.get("s3") or {}).get("addressing_style", "auto")
    return set(fs.config_kwargs.get("s3") or {}) <= {"addressing_style"} and addressing in ("auto", "path")


class S3Getter:
    """``get(path)``: the bytes of the whole object at ``path`` (``bucket/key``, as ``fs`` names it).

    Safe to call from many threads at once (the fetch-ahead pool's). One
    obstore store per bucket, made at its first GET from the botocore client
    s3fs uses for that bucket.
    """

    def __init__(self, fs: Any) -> None:
        self._fs = fs
        self._stores: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.off = False  # obstore and s3fs disagreed: every GET goes through s3fs

    def get(self, path: str) -> bytes:
        """The object's bytes; what s3fs raises when it cannot be read."""
        if self.off:
            return self._slow(path)
        import obstore

        bucket, key, _ = self._fs.split_path(path)
        try:
            store = self._store(bucket)
        except Exception as exc:  # noqa: BLE001 - s3fs's own client is made the same way: it tells
            data = self._slow(path)
            self._turn_off(exc)
            return data
        if store is None:
            return self._slow(path)
        try:
            return bytes(obstore.get(store, key).bytes())
        except Exception as exc:  # noqa: BLE001 - whatever it was, s3fs tells (or proves it wrong)
            data = self._slow(path)
            self._turn_off(exc)
            return data

    def _slow(self, path: str) -> bytes:
        # start=0: one ranged GET, where s3fs would first ask for the size of a whole object
        return self._fs.cat_file(path, start=0)

    def _turn_off(self, exc: BaseException) -> None:
        with self._lock:
            if self.off:
                return
            self.off = True
        # the class only: obstore's messages carry request details, the store's answer among them
        get_logger().warning("fast_get_off", reason=type(exc).__name__,
                             note="obstore failed a GET s3fs did; small objects are read through s3fs")

    def _store(self, bucket: str) -> Any:
        """The bucket's store; None when botocore has no credentials for it and the filesystem is not
        anonymous (s3fs then raises its own error, where obstore would send unsigned GETs)."""
        with self._lock:
            if bucket not in self._stores:
                self._stores[bucket] = _store_like(self._fs, bucket)
            return self._stores[bucket]


def _store_like(fs: Any, bucket: str) -> Any:
    """An obstore S3Store of ``bucket`` that reaches the store as ``fs``'s botocore client for it does;
    None when that client has no credentials and ``fs`` is not anonymous."""
    from obstore.store import S3Store

    async def client() -> Any:
        await fs.set_session()
        return await fs.get_s3(bucket)

    s3 = fsspec.asyn.sync(fs.loop, client)
    config: dict[str, Any] = {"region": s3.meta.region_name or "us-east-1", **_address(fs, s3.meta.endpoint_url,
                                                                                         bucket)}
    client_options = {"allow_http": config["endpoint"].startswith("http://")}
    if fs.requester_pays:
        config["request_payer"] = True
    credentials = s3._request_signer._credentials  # what botocore signs with
    provider = None
    if fs.anon:
        config["skip_signature"] = True
    elif credentials is None:
        return None
    else:
        config["skip_signature"] = False
        provider = _Credentials(fs, credentials)
    return S3Store(bucket, config=config, client_options=client_options, credential_provider=provider)


def _address(fs: Any, endpoint: str, bucket: str) -> dict[str, Any]:
    """The endpoint and addressing style botocore uses for ``bucket``: on AWS the bucket in the host name
    (unless its name has a dot, which TLS certificates do not cover, or ``addressing_style: path``); on
    any other endpoint (MinIO, moto, R2, ...) the bucket in the path."""
    parts = urlsplit(endpoint)
    style = (fs.config_kwargs.get("s3") or {}).get("addressing_style", "auto")
    on_aws = (parts.hostname or "").endswith((".amazonaws.com", ".amazonaws.com.cn"))
    if on_aws and style != "path" and "." not in bucket:
        return {"endpoint": f"{parts.scheme}://{bucket}.{parts.netloc}", "virtual_hosted_style_request": True}
    return {"endpoint": endpoint, "virtual_hosted_style_request": False}


class _Credentials:
    """obstore's credential provider: the credentials botocore signs s3fs's requests with.

    A provider (rather than keys in the config) keeps obstore from taking
    credentials of its own from the environment. Credentials botocore
    refreshes (a role, SSO, instance metadata) are asked for again every few
    minutes, on the filesystem's event loop, where aiobotocore refreshes them.
    """

    def __init__(self, fs: Any, credentials: Any) -> None:
        self._fs = fs
        self._credentials = credentials
        self._refreshed = hasattr(credentials, "refresh_needed")

    def __call__(self) -> dict[str, Any]:
        creds = self._credentials
        expires = None
        if self._refreshed:
            creds = fsspec.asyn.sync(self._fs.loop, creds.get_frozen_credentials)
            expires = datetime.now(timezone.utc) + _REFRESHED_EVERY
        return {"access_key_id": creds.access_key, "secret_access_key": creds.secret_key,
                "token": creds.token, "expires_at": expires}

