"""Whole small S3 objects read through obstore (moto's server): the same bytes, signatures and errors as s3fs."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import moto.settings
import pytest
import s3fs
from structlog.testing import capture_logs

from conftest import run_cli, serve_process
from state_helpers import read_state
from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.fetch import Ahead
from pipeline.sources.listing import open_source
from pipeline.sources.records import open_input
from pipeline.sources.s3_get import S3Getter, s3_getter
from pipeline.types import InputFile
from test_s3 import endpoint, new_bucket, s3, write_job  # noqa: F401 (fixtures)

OBJECTS = {
    "notes/a.md": "une note, accentuée".encode(),
    "notes/with space & plus+.md": b"odd key",
    "notes/deep/kéy.md": "clé".encode(),
    "notes/binary.md": bytes(range(256)) * 40,
    "notes/big.md": b"0123456789abcdef" * 65536,  # a MiB
}


def upload(s3: s3fs.S3FileSystem) -> str:  # noqa: F811
    bucket = new_bucket(s3)
    s3.pipe({f"{bucket}/{key}": data for key, data in OBJECTS.items()})
    return bucket


def no_s3fs_get(path: str, **kwargs: object) -> bytes:
    raise AssertionError(f"{path} was read through s3fs")


def test_objects_read_through_obstore_are_byte_identical(s3: s3fs.S3FileSystem, monkeypatch) -> None:  # noqa: F811
    """Every object, odd keys and a MiB one included, comes back through obstore as s3fs reads it."""
    bucket = upload(s3)
    fs, files = open_source(SourceConfig(path=f"s3://{bucket}/notes"))
    getter = s3_getter(fs)
    assert isinstance(getter, S3Getter)
    expected = {f.path: s3.cat_file(f.path) for f in files}
    monkeypatch.setattr(fs, "cat_file", no_s3fs_get)
    assert {f.path: getter.get(f.path) for f in files} == expected
    assert sorted(expected.values()) == sorted(OBJECTS.values()) and not getter.off


def test_fetched_ahead_through_obstore(s3: s3fs.S3FileSystem, monkeypatch) -> None:  # noqa: F811
    """The read stage's fetches of small objects go through obstore, none through s3fs."""
    bucket = upload(s3)
    fs, files = open_source(SourceConfig(path=f"s3://{bucket}/notes"))
    monkeypatch.setattr(fs, "cat_file", no_s3fs_get)
    ahead: Ahead[None] = Ahead(fs, ahead=4)
    for f in files:
        ahead.plan(f, None)
    got = {}
    while (nxt := ahead.next()) is not None:
        inp, _, source = nxt
        with open_input(source, inp) as f:
            got[inp.rel_path] = f.read()
    ahead.close()
    assert got == {key.removeprefix("notes/"): data for key, data in OBJECTS.items()}


def open_ahead(fs: s3fs.S3FileSystem, inp: InputFile) -> None:
    """Fetch ``inp`` ahead and open it, as the read stage does (its SourceError raised)."""
    ahead: Ahead[None] = Ahead(fs, ahead=4)
    ahead.plan(inp, None)
    got, _, source = ahead.next()
    open_input(source, got)


def test_a_missing_object_is_the_same_one_line_error(s3: s3fs.S3FileSystem) -> None:  # noqa: F811
    """An object gone since the listing: s3fs's FileNotFoundError, so the reader's one line names its URL."""
    bucket = upload(s3)
    fs, files = open_source(SourceConfig(path=f"s3://{bucket}/notes/a.md"))
    s3.rm(files[0].path)
    with pytest.raises(SourceError) as err:
        open_ahead(fs, files[0])
    assert str(err.value) == f"input file not found: s3://{bucket}/notes/a.md"
    assert isinstance(err.value.__cause__, FileNotFoundError)
    getter = s3_getter(fs)
    with pytest.raises(FileNotFoundError):
        getter.get(files[0].path)
    assert not getter.off  # both said the same: obstore stays


def test_refused_credentials_are_a_one_line_error_without_the_secret(s3: s3fs.S3FileSystem,  # noqa: F811
                                                                    monkeypatch) -> None:
    """moto checking signatures refuses the fake keys: "permission denied" naming the URL, no key in it."""
    bucket = upload(s3)
    fs, files = open_source(SourceConfig(path=f"s3://{bucket}/notes/a.md"))
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # every request authenticated
    with pytest.raises(SourceError) as err:
        open_ahead(fs, files[0])
    assert str(err.value) == f"cannot open s3://{bucket}/notes/a.md: permission denied"
    assert "testing" not in str(err.value) and "\n" not in str(err.value)


def test_options_obstore_cannot_take_keep_the_gets_on_s3fs(endpoint: str) -> None:  # noqa: F811
    """A version-aware filesystem, SSE-C request options or client options of botocore's own: no obstore."""
    plain = s3fs.S3FileSystem(skip_instance_cache=True)
    assert s3_getter(plain) is not None
    for options in ({"version_aware": True},
                    {"s3_additional_kwargs": {"SSECustomerAlgorithm": "AES256"}},
                    {"client_kwargs": {"verify": False}},
                    {"config_kwargs": {"proxies": {"https": "http://proxy:3128"}}},
                    {"config_kwargs": {"s3": {"addressing_style": "virtual"}}}):
        assert s3_getter(s3fs.S3FileSystem(skip_instance_cache=True, **options)) is None, options
    assert s3_getter(fsspec.filesystem("memory")) is None


def test_unmapped_options_still_read_every_object(s3: s3fs.S3FileSystem) -> None:  # noqa: F811
    """With options obstore cannot take, the objects fetched ahead come through s3fs, bytes unchanged."""
    bucket = upload(s3)
    cfg = SourceConfig(path=f"s3://{bucket}/notes", storage_options={"client_kwargs": {"verify": False}})
    fs, files = open_source(cfg)
    assert s3_getter(fs) is None
    ahead: Ahead[None] = Ahead(fs, ahead=4)
    for f in files:
        ahead.plan(f, None)
    got = {}
    while (nxt := ahead.next()) is not None:
        with open_input(nxt[2], nxt[0]) as f:
            got[nxt[0].rel_path] = f.read()
    ahead.close()
    assert got == {key.removeprefix("notes/"): data for key, data in OBJECTS.items()}


def test_obstore_wrong_where_s3fs_is_right_turns_it_off(s3: s3fs.S3FileSystem) -> None:  # noqa: F811
    """A store obstore cannot reach (here: a wrong endpoint) while s3fs can: the object still comes, through
    s3fs, and so do all later ones; one warning says so."""
    from obstore.store import S3Store

    bucket = upload(s3)
    fs, files = open_source(SourceConfig(path=f"s3://{bucket}/notes"))
    getter = s3_getter(fs)
    getter._stores[bucket] = S3Store(bucket, endpoint="http://127.0.0.1:9", region="us-east-1",
                                     skip_signature=True, client_options={"allow_http": True},
                                     retry_config={"max_retries": 0})
    first, *rest = files
    with capture_logs() as logs:
        assert getter.get(first.path) == s3.cat_file(first.path) and getter.off
        assert [getter.get(f.path) for f in rest] == [s3.cat_file(f.path) for f in rest]
    warnings = [entry for entry in logs if entry["event"] == "fast_get_off"]
    assert len(warnings) == 1 and "127.0.0.1" not in str(warnings[0])


def test_run_over_objects_keeps_their_etag_signatures(s3: s3fs.S3FileSystem, tmp_path: Path) -> None:  # noqa: F811
    """`pipeline run` reading through obstore records each object's size and ETag as its signature; a second
    run finds nothing changed."""
    bucket = upload(s3)
    with serve_process("--fake", "--dimensions", "8") as url:
        job = write_job(tmp_path, url, f"s3://{bucket}/notes", str(tmp_path / "out"))
        first = run_cli("run", str(job))
        again = run_cli("run", str(job))
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert "fast_get_off" not in first.stderr + first.stdout
    state = read_state(tmp_path / "out")
    expected = {f"s3://{bucket}/{key}": f"{len(data)}:{s3.info(f'{bucket}/{key}')['ETag']}"
                for key, data in OBJECTS.items()}
    assert state.files == expected
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["totals"]["records_read"] == len(OBJECTS)


def test_credentials_botocore_refreshes_are_asked_for_again() -> None:
    """Static credentials are handed over once for good; refreshable ones (a role, SSO) are fetched on the
    filesystem's loop and expire after a while, so obstore asks again and gets botocore's refreshed ones."""
    from types import SimpleNamespace

    import fsspec.asyn

    from pipeline.sources.s3_get import _Credentials

    fs = SimpleNamespace(loop=fsspec.asyn.get_loop())
    static = _Credentials(fs, SimpleNamespace(access_key="AK", secret_key="SK", token=None))
    assert static() == {"access_key_id": "AK", "secret_access_key": "SK", "token": None, "expires_at": None}

    class Refreshing:
        calls = 0

        def refresh_needed(self) -> bool:
            return True

        async def get_frozen_credentials(self) -> SimpleNamespace:
            Refreshing.calls += 1
            return SimpleNamespace(access_key=f"AK{self.calls}", secret_key="SK", token="TOKEN")

    refreshed = _Credentials(fs, Refreshing())
    first, second = refreshed(), refreshed()
    assert (first["access_key_id"], second["access_key_id"]) == ("AK1", "AK2") and first["token"] == "TOKEN"
    assert first["expires_at"] is not None


def test_endpoint_and_addressing_follow_botocore() -> None:
    """On AWS the bucket goes in the host name as botocore puts it (not for a dotted name, nor with
    ``addressing_style: path``); on another endpoint in the path; the endpoint is botocore's (FIPS, China)."""
    from types import SimpleNamespace

    from pipeline.sources.s3_get import _address

    plain = SimpleNamespace(config_kwargs={})
    path_style = SimpleNamespace(config_kwargs={"s3": {"addressing_style": "path"}})
    aws = "https://s3.eu-west-3.amazonaws.com"
    assert _address(plain, aws, "docs") == {"endpoint": "https://docs.s3.eu-west-3.amazonaws.com",
                                            "virtual_hosted_style_request": True}
    fips = _address(plain, "https://s3-fips.us-east-2.amazonaws.com", "docs")
    assert fips["endpoint"] == "https://docs.s3-fips.us-east-2.amazonaws.com"
    assert _address(plain, aws, "my.docs") == {"endpoint": aws, "virtual_hosted_style_request": False}
    assert _address(path_style, aws, "docs") == {"endpoint": aws, "virtual_hosted_style_request": False}
    assert _address(plain, "http://127.0.0.1:9000", "docs") == {"endpoint": "http://127.0.0.1:9000",
                                                                "virtual_hosted_style_request": False}


def test_a_store_obstore_cannot_make_leaves_the_gets_to_s3fs(s3: s3fs.S3FileSystem, monkeypatch) -> None:  # noqa: F811
    """Should making the obstore store fail, the object still comes through s3fs, and the rest after it."""
    import pipeline.sources.s3_get as s3_get

    def refuse(fs: object, bucket: str) -> None:
        raise ValueError("not an endpoint obstore takes")

    bucket = upload(s3)
    fs, files = open_source(SourceConfig(path=f"s3://{bucket}/notes"))
    monkeypatch.setattr(s3_get, "_store_like", refuse)
    getter = s3_getter(fs)
    assert [getter.get(f.path) for f in files] == [s3.cat_file(f.path) for f in files] and getter.off
