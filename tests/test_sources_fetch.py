"""Small objects fetched ahead: handed out in planned order, bounded in number and bytes, errors kept per file."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import fsspec
import pytest

from pipeline.sources.fetch import Ahead, Fetched
from pipeline.types import InputFile


def inp(name: str, size: int | None = 10, part: str = "") -> InputFile:
    return InputFile(path=name, url=f"memory://{name}", size=size, format="text", compression=None,
                     rel_path=name, part=part)


class GatedFS:
    """A store whose GETs wait until let through; counts the fetches under way and the most at once."""

    def __init__(self, data: dict[str, bytes], broken: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.data = data
        self.broken = broken
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.started: list[str] = []
        self.under_way = 0
        self.most = 0
        self.all_started = threading.Condition(self.lock)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        assert start == 0 and end is None  # one ranged GET, no size asked first
        with self.lock:
            self.started.append(path)
            self.under_way += 1
            self.most = max(self.most, self.under_way)
            self.all_started.notify_all()
        self.gate.wait(60)
        with self.lock:
            self.under_way -= 1
        if path in self.broken:
            raise PermissionError(13, "Access Denied")
        return self.data[path]

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        raise AssertionError(f"{path} should have been fetched ahead")

    def wait_started(self, n: int) -> None:
        with self.lock:
            assert self.all_started.wait_for(lambda: len(self.started) >= n, timeout=60)


def read_all(ahead: Ahead[int]) -> list[tuple[str, int, bytes]]:
    out = []
    while (got := ahead.next()) is not None:
        item, extra, fs = got
        with fs.open(item.path, "rb") as f:
            out.append((item.path, extra, f.read()))
    return out


def test_files_come_out_in_planned_order_while_fetches_overlap() -> None:
    """Fetches run side by side (up to ``ahead``), yet files come out in the order planned, with their extras."""
    names = [f"f{i:03d}" for i in range(50)]
    fs = GatedFS({n: n.encode() * 3 for n in names})
    ahead: Ahead[int] = Ahead(fs, ahead=8)
    for i, n in enumerate(names):
        ahead.plan(inp(n), i)
    first = ahead.next()  # starts the first 8 fetches; the first has not answered yet
    fs.wait_started(8)
    assert fs.started == names[:8] and fs.under_way == 8
    fs.gate.set()
    assert first is not None and first[0].path == "f000" and first[1] == 0
    rest = read_all(ahead)
    assert [(p, e) for p, e, _ in rest] == [(n, i) for i, n in enumerate(names)][1:]
    assert all(data == p.encode() * 3 for p, _, data in rest)
    assert fs.most == 8
    ahead.close()


def test_bytes_in_flight_are_bounded() -> None:
    """No more than ``ahead_bytes`` are fetched ahead at once (one file at least, whatever its size)."""
    fs = GatedFS({f"f{i}": b"x" * 100 for i in range(10)})
    ahead: Ahead[int] = Ahead(fs, ahead=8, ahead_bytes=250)
    for i in range(10):
        ahead.plan(inp(f"f{i}", size=100), i)
    ahead.next()  # f0 handed out: f1 and f2 fetched ahead, a third would pass 250 bytes
    fs.wait_started(3)
    assert fs.started == ["f0", "f1", "f2"] and ahead._bytes == 200
    fs.gate.set()
    while ahead.next() is not None:
        assert ahead._bytes <= 250 and ahead._fetching <= 2
    fs.wait_started(10)
    assert fs.started == [f"f{i}" for i in range(10)]
    ahead.close()


def test_big_parts_unknown_and_empty_files_are_not_fetched() -> None:
    """Files over the size bound, pieces of files, files of unknown size and empty ones are read from ``fs``."""
    fs = GatedFS({"small": b"s"})
    fs.gate.set()
    ahead: Ahead[int] = Ahead(fs, ahead=4, small_bytes=50)
    planned = [inp("big", size=51), inp("small", size=1), inp("piece", size=10, part="#bytes=0-10"),
               inp("unknown", size=None), inp("empty", size=0)]
    for i, item in enumerate(planned):
        ahead.plan(item, i)
    got = []
    while (nxt := ahead.next()) is not None:
        got.append((nxt[0].path, isinstance(nxt[2], Fetched)))
    assert got == [("big", False), ("small", True), ("piece", False), ("unknown", False), ("empty", False)]
    assert fs.started == ["small"]
    ahead.close()


def test_a_failed_fetch_fails_its_own_file_only() -> None:
    """The error of one object's GET is raised where that file is opened; the files around it read fine."""
    names = [f"f{i}" for i in range(5)]
    fs = GatedFS({n: n.encode() for n in names}, broken={"f2"})
    fs.gate.set()
    ahead: Ahead[int] = Ahead(fs, ahead=3)
    for i, n in enumerate(names):
        ahead.plan(inp(n), i)
    opened = []
    while (nxt := ahead.next()) is not None:
        try:
            with nxt[2].open(nxt[0].path, "rb") as f:
                opened.append(f.read())
        except PermissionError:
            opened.append(None)
    assert opened == [b"f0", b"f1", None, b"f3", b"f4"]
    ahead.close()


def test_local_files_are_read_whole_without_threads(tmp_path: Path) -> None:
    """On local disk nothing is fetched ahead: a small file is read whole when its turn comes, gzip'd or not."""
    import gzip

    (tmp_path / "a.md").write_bytes(b"alpha")
    (tmp_path / "b.md.gz").write_bytes(gzip.compress(b"beta"))
    fs = fsspec.filesystem("file")
    ahead: Ahead[int] = Ahead(fs)
    ahead.plan(inp(str(tmp_path / "a.md"), size=5), 0)
    ahead.plan(inp(str(tmp_path / "b.md.gz"), size=(tmp_path / "b.md.gz").stat().st_size), 1)
    a, b = ahead.next(), ahead.next()
    assert a is not None and b is not None and ahead.next() is None
    assert isinstance(a[2], Fetched) and a[2].open(a[0].path).read() == b"alpha"
    assert b[2].open(b[0].path, compression="gzip").read() == b"beta"
    assert ahead._pool is None
    (tmp_path / "gone.md").write_bytes(b"x")
    ahead.plan(inp(str(tmp_path / "gone.md"), size=1), 2)
    gone = ahead.next()
    (tmp_path / "gone.md").unlink()
    assert gone is not None
    with pytest.raises(FileNotFoundError):
        gone[2].open(gone[0].path)


def test_close_drops_fetches_not_started() -> None:
    """Closing stops the fetches still queued; those under way end on their own."""
    fs = GatedFS({f"f{i}": b"x" for i in range(20)})
    ahead: Ahead[int] = Ahead(fs, ahead=2)
    for i in range(20):
        ahead.plan(inp(f"f{i}"), i)
    ahead.next()
    fs.wait_started(2)
    ahead.close()
    fs.gate.set()
    assert len(ahead) == 0 and ahead.next() is None
    assert len(fs.started) <= 3


@pytest.mark.parametrize("now", [b"", b"shorter", b"as listed", b"grown since it was listed" * 5000])
def test_a_local_file_is_read_as_it_is_now_not_as_listed(tmp_path: Path, now: bytes) -> None:
    """The listed size only sizes the first read: a file that shrank or grew since is read whole as it is."""
    path = tmp_path / "a.md"
    path.write_bytes(now)
    ahead: Ahead[int] = Ahead(fsspec.filesystem("file"))
    ahead.plan(inp(str(path), size=len(b"as listed")), 0)
    got = ahead.next()
    assert got is not None and got[2].open(got[0].path).read() == now
