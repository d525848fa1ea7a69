"""Shared fixtures and helpers: the anyio backend, an in-memory filesystem, a real
`pipeline serve` on loopback, the CLI as a subprocess, and a local Ray cluster."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import fsspec
import pytest


@pytest.fixture
def memfs() -> Iterator[fsspec.AbstractFileSystem]:
    """fsspec's in-memory filesystem, empty before and after the test."""
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]


class FakeClock:
    """Time that moves only when slept on or advanced: a clock, a sync sleep and an async sleep."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A :class:`FakeClock` at t=1000 s, for code that takes a clock and a sleep."""
    return FakeClock()


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio (the backend production uses)."""
    return "asyncio"


ROOT = Path(__file__).resolve().parent.parent


def pipeline_cmd(*args: str) -> list[str]:
    """The command line that runs ``pipeline`` with this interpreter."""
    return [sys.executable, "-m", "pipeline", *args]


@contextmanager
def serve_process(*flags: str) -> Iterator[str]:
    """A real ``pipeline serve`` subprocess on an ephemeral loopback port; yields its URL."""
    proc = subprocess.Popen(
        pipeline_cmd("serve", "--host", "127.0.0.1", "--port", "0", *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server prints its URL once it listens
        if "listening on" not in line:
            raise RuntimeError(f"pipeline serve did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        yield line.rsplit(" ", 1)[-1].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``pipeline ARGS`` to completion and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(pipeline_cmd(*args), capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL 16 with pgvector (the ``pgserver`` package), one per test session: its URL."""
    import warnings

    with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset, at import
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="stop")
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    try:
        yield server.get_uri()
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


#: a Postgres sink's tables: ``{sink.table}`` and its side tables
PG_SUFFIXES = ("", "_errors", "_commits", "_state", "_runs", "_meta")


@pytest.fixture
def table(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[str]:
    """A Postgres table name of this test's own (the server is shared by the session), dropped afterwards
    with its side tables."""
    import hashlib

    import psycopg

    name = "t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for suffix in PG_SUFFIXES:
            conn.execute(f'DROP TABLE IF EXISTS "{name}{suffix}"')


@contextmanager
def redis_process(port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A real ``redis-server`` on a free loopback port (or ``port``), persisting nothing; yields its URL and process."""
    import shutil
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            raise RuntimeError("redis-server is missing: .ci/run installs it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    if port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # it says so once it listens
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server did not start (exit {proc.wait()})")
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of one real ``redis-server`` for the whole session (tests use their own keys)."""
    with redis_process() as (url, _):
        yield url


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster of 2 CPUs on loopback for the whole session; yields its address.

    Tests that use it are skipped where Ray is not installed (it is an
    optional extra; CI installs it). ``ray.init`` replaces this process's
    SIGTERM handler: the one before is put back.
    """
    from pipeline.jobs.ray_executor import RAY_LOG_DEFAULTS

    with pytest.MonkeyPatch.context() as env:
        for var, value in RAY_LOG_DEFAULTS.items():  # read when Ray is imported: task lines as a driver shows them
            if var not in os.environ:
                env.setenv(var, value)
        ray = pytest.importorskip("ray", reason="run.executor: ray needs the ray extra: pip install '.[ray]'")
        previous = signal.getsignal(signal.SIGTERM)
        context = ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                           logging_level=logging.WARNING)
        signal.signal(signal.SIGTERM, previous)
        try:
            yield context.address_info["gcs_address"]
        finally:
            ray.shutdown()
