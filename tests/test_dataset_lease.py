"""Tests for pipeline.dataset.lease: one writer per rank, taken atomically, fenced at every save."""

from __future__ import annotations

from pathlib import Path

import fsspec
import orjson
import pytest
from structlog.testing import capture_logs

from conftest import FakeClock
from pipeline.dataset.lease import Lease
from pipeline.errors import SinkError


def lease(root: Path, clock: FakeClock) -> Lease:
    return Lease(fsspec.filesystem("file"), str(root), 0, ttl_s=30, clock=clock, sleep=clock.sleep)


def test_second_writer_waits_then_refuses(tmp_path: Path, clock: FakeClock) -> None:
    """While the first holds a live lease, a second waits its time and then refuses in one line."""
    first, second = lease(tmp_path, clock), lease(tmp_path, clock)
    first.acquire(0)
    with pytest.raises(SinkError, match="another pipeline .* refusing"):
        second.acquire(5)
    assert clock.now >= 1005


def test_released_or_stale_lease_is_taken(tmp_path: Path, clock: FakeClock) -> None:
    """A released lease is free at once; one whose heartbeat is older than the TTL is taken over."""
    first, second = lease(tmp_path, clock), lease(tmp_path, clock)
    first.acquire(0)
    first.release()
    second.acquire(0)
    third = lease(tmp_path, clock)
    clock.advance(31)
    third.acquire(0)  # second stopped heartbeating 31 s ago
    with pytest.raises(SinkError, match="lost the write lease"):
        second.renew()  # fencing: second finds out at its next save


def test_create_is_atomic_when_two_see_it_free(tmp_path: Path, clock: FakeClock) -> None:
    """Two writers that both saw no lease cannot both take it: the second create fails and it looks again."""
    first, second = lease(tmp_path, clock), lease(tmp_path, clock)
    second._read = lambda: None  # type: ignore[method-assign]  # it read before the first wrote
    first.acquire(0)
    with pytest.raises(FileExistsError):
        second._create()


# --------------------------------------------------------------------------- leases that are not ours


def bounded(monkeypatch: pytest.MonkeyPatch, held: Lease, name: str, limit: int = 50) -> list[int]:
    """Fail instead of hanging when ``held.name`` is called more than ``limit`` times (a spinning loop)."""
    real = getattr(held, name)
    calls: list[int] = []

    def guarded(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) > limit:
            raise AssertionError(f"{name} called {limit} times: the acquire loop spins")
        return real(*args, **kwargs)

    monkeypatch.setattr(held, name, guarded)
    return calls


def lease_file(root: Path) -> Path:
    return root / "_locks" / "00000.json"


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x00", b'{"owner": "ab', b"  \n"])
def test_torn_lease_is_stale_and_taken_over_with_a_warning(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    """An empty or undecodable lease (a write torn by a crash or a full disk) is taken over at once, with a warning."""
    lease_file(tmp_path).parent.mkdir()
    lease_file(tmp_path).write_bytes(content)
    taker = lease(tmp_path, clock)
    bounded(monkeypatch, taker, "_read")
    with capture_logs() as logs:
        taker.acquire(30)
    assert taker.held and clock.now == 1000
    assert orjson.loads(lease_file(tmp_path).read_bytes())["owner"] == taker.owner
    assert [e["event"] for e in logs] == ["lease_taken_over"]
    assert logs[0]["path"] == str(lease_file(tmp_path)) and logs[0]["log_level"] == "warning"


NOT_LEASES = [
    b"[1, 2]",
    b'"text"',
    b"{}",
    b'{"owner": 1, "host": "h", "pid": 1, "heartbeat": 1}',
    b'{"owner": "o", "host": "h", "pid": true, "heartbeat": 1}',
]


@pytest.mark.parametrize("content", NOT_LEASES)
def test_wrongly_shaped_lease_is_a_one_line_error(tmp_path: Path, clock: FakeClock, content: bytes) -> None:
    """Valid JSON that is not a lease is not deleted: one line naming the file, from acquire and from renew."""
    lease_file(tmp_path).parent.mkdir()
    lease_file(tmp_path).write_bytes(content)
    with pytest.raises(SinkError) as info:
        lease(tmp_path, clock).acquire(30)
    message = str(info.value)
    assert str(lease_file(tmp_path)) in message and "not a pipeline lease" in message and "\n" not in message
    holder = lease(tmp_path, clock)
    with pytest.raises(SinkError, match="not a pipeline lease"):
        holder.renew()
    assert lease_file(tmp_path).read_bytes() == content


def test_heartbeat_in_the_future_is_live_for_a_ttl_then_stale(tmp_path: Path, clock: FakeClock) -> None:
    """A lease whose clock is far ahead is said to be in the future (not -N s ago), lives ttl_s from when
    it is first seen, and is taken over after that unless its owner renews it."""
    other = {"owner": "other", "host": "elsewhere", "pid": 1, "heartbeat": clock() + 1e12}
    lease_file(tmp_path).parent.mkdir()
    lease_file(tmp_path).write_bytes(orjson.dumps(other))
    with capture_logs() as logs, pytest.raises(SinkError) as info:
        lease(tmp_path, clock).acquire(10)
    assert "in the future" in str(info.value) and "-" not in str(info.value).split("heartbeat")[1]
    assert "lease_heartbeat_in_future" in [e["event"] for e in logs]
    taker = lease(tmp_path, clock)
    with pytest.raises(SinkError, match="in the future"):
        taker.acquire(0)  # first sight: live
    clock.advance(29)
    with pytest.raises(SinkError, match="in the future"):
        taker.acquire(0)  # still within ttl_s of first sight
    clock.advance(2)
    taker.acquire(0)  # never renewed: stale
    assert taker.held


def test_acquire_always_sleeps_and_ends_by_its_deadline(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the lease looks free but every create loses a race, acquire sleeps between tries and gives up in time."""
    taker = lease(tmp_path, clock)
    monkeypatch.setattr(taker, "_read", lambda: None)

    def lose() -> None:
        raise FileExistsError(str(lease_file(tmp_path)))

    monkeypatch.setattr(taker, "_create", lose)
    creates = bounded(monkeypatch, taker, "_create")
    with pytest.raises(SinkError, match="another pipeline is writing rank 00000"):
        taker.acquire(5)
    assert 1005 <= clock.now < 1007 and 2 <= len(creates) <= 20


def test_a_create_that_fails_midway_leaves_no_lease(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create that fails after the lease file could exist (disk full, a crash) leaves no torn lease behind."""
    import pipeline.dataset.lease as lease_module

    def full(*args: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lease_module.socket, "gethostname", full)
    with pytest.raises(OSError, match="No space"):
        lease(tmp_path, clock).acquire(0)
    monkeypatch.undo()
    assert not lease_file(tmp_path).exists()
    left = [p.name for p in lease_file(tmp_path).parent.iterdir() if not p.name.endswith('.json.lock')]
    assert left == []  # no temp file either (the lock file beside the lease stays: it is no lease)
    again = lease(tmp_path, clock)
    bounded(monkeypatch, again, "_read")
    again.acquire(0)
    assert again.held


def test_renew_replaces_the_lease_whole(tmp_path: Path, clock: FakeClock) -> None:
    """A heartbeat rewrites the lease by a rename: a valid lease with the new time, no temp file left."""
    holder = lease(tmp_path, clock)
    holder.acquire(0)
    clock.advance(12)
    holder.renew()
    assert orjson.loads(lease_file(tmp_path).read_bytes())["heartbeat"] == 1012
    assert sorted(p.name for p in lease_file(tmp_path).parent.iterdir()) == [".00000.json.lock", "00000.json"]
    holder.release()
    assert not lease_file(tmp_path).exists()


def test_release_on_a_store_that_refuses_is_a_warning(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink made read-only mid-run: release warns and returns (it runs on the way out, after another error)."""
    holder = lease(tmp_path, clock)
    holder.acquire(0)

    def refuse(path: str) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(holder.fs, "rm_file", refuse)
    with capture_logs() as logs:
        holder.release()
    assert [(e["event"], e["log_level"]) for e in logs] == [("lease_not_released", "warning")]
    assert "Permission denied" in logs[0]["error"] and not holder.held


def test_a_writer_paused_inside_its_check_holds_off_its_successor(tmp_path: Path, clock: FakeClock) -> None:
    """Local compare-and-swap: while a writer is between checking its lease and writing (paused there),
    another cannot take the lease over, even once the heartbeat is stale; it waits, then refuses in one line."""
    holder = lease(tmp_path, clock)
    holder.acquire(0)
    successor = lease(tmp_path, clock)
    with holder.exclusive():  # paused inside a renewal or a manifest save
        clock.advance(120)  # its heartbeat is long stale
        with pytest.raises(SinkError, match="lock .* stayed held"):
            successor.acquire(0)  # waits a few real seconds on the lock, then refuses
    holder.renew()  # it wakes and finishes: still the owner
    assert orjson.loads(lease_file(tmp_path).read_bytes())["owner"] == holder.owner
    clock.advance(120)  # paused outside the lock this time: the successor takes over...
    successor.acquire(0)
    with pytest.raises(SinkError, match="lost the write lease"):
        holder.renew()  # ...and the old writer's next check stops it, without writing
    assert orjson.loads(lease_file(tmp_path).read_bytes())["owner"] == successor.owner
