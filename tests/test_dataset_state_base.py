"""The loaded resume state's compact columns (pipeline.dataset.state_base): lookups, changes over them, round trips."""

from __future__ import annotations

import random
from pathlib import Path

import fsspec
import numpy as np
import pytest

from pipeline.dataset import state_files
from pipeline.dataset.manifest import Manifest
from pipeline.dataset.state import State
from pipeline.dataset.state_base import LOAD, Column, _table
from pipeline.types import END_OF_FILE

DATA = "data/part-00000-{:06d}.parquet"


def url(i: int) -> str:
    return f"s3://bucket/crawl/doc-{i:05d}.json"


def saved(tmp_path: Path, m: Manifest) -> State:
    """``m``'s state written (what changed) and read back as a new process would."""
    fs = fsspec.filesystem("file")
    state_files.persist(fs, str(tmp_path), 0, m)
    m.state = None
    return state_files.load(fs, str(tmp_path), m)


def tables(state: State) -> dict[str, dict]:
    """Every table of ``state`` as plain dicts."""
    return {"progress": dict(state.progress), "ends": dict(state.ends), "files": dict(state.files),
            "offsets": dict(state.offsets), "sources": dict(state.sources), "marks": dict(state.marks)}


def signature(i: int) -> str:
    """Input ``i``'s signature: a size and S3 ETag (kept as bytes when loaded) or something else."""
    etag = f'"{i:032x}"'
    return [f"{i}:{etag}", etag, f"{i}:{etag.upper()}", f"{i}:{etag}|tail=0123456789abcdef", f"{i}:\"é\""][i % 5]


def built(n: int) -> Manifest:
    """A manifest whose state holds ``n`` inputs (one in 10 in two pieces), with shards of 50."""
    m = Manifest.new("m", None, "float")
    s = m.loaded
    for start in range(0, n, 50):
        docs = range(start, min(n, start + 50))
        keys = [k for i in docs for k in ([f"{url(i)}#bytes=0-9", f"{url(i)}#bytes=10-19"] if i % 10 == 3
                                          else [url(i)])]
        s.advance([(k, END_OF_FILE if i % 7 else i) for i, k in enumerate(keys)], {k: 2 for k in keys})
        s.add_shard(DATA.format(start // 50), {url(i): 1 for i in docs} if start % 100 else None,
                    dict.fromkeys(keys, END_OF_FILE))
        for i in docs:
            s.set_signature(url(i), signature(i))
    s.set_offsets({url(5): [[10, 1000], [20, 2000]]})
    return m


def test_a_loaded_state_answers_every_lookup_as_the_dicts_it_was_written_from(tmp_path: Path) -> None:
    m = built(1_000)
    expected = tables(m.loaded)
    loaded = saved(tmp_path, m)
    assert tables(loaded) == expected
    assert isinstance(loaded.files, Column) and len(loaded.files) == 1_000 and len(loaded.progress) == 1_100
    for i in range(1_000):
        assert loaded.files.get(url(i)) == signature(i) and url(i) in loaded.files
        key = f"{url(i)}#bytes=0-9" if i % 10 == 3 else url(i)
        assert loaded.done_upto(key) == expected["progress"][key]
    for absent in (url(1_000), "", "s3://bucket/crawl/doc-00003.json#bytes=20-29", url(3)):
        assert loaded.done_upto(absent) == 0 and absent not in loaded.progress
    assert loaded.files.get(url(1_000)) is None and loaded.ends.get(url(1_000), -1) == -1
    with pytest.raises(KeyError):
        loaded.files[url(1_000)]
    assert loaded.sources_of(DATA.format(1)) == {url(i): 1 for i in range(50, 100)}
    assert loaded.sources_of(DATA.format(2)) is None  # unknown, as written
    assert loaded.share_of([url(50), url(51), url(100)]) == pytest.approx(2 / 500)
    assert list(loaded.files) == sorted(expected["files"])  # a snapshot holds its names in order


def test_changes_over_the_loaded_rows_behave_as_a_dict_and_are_saved(tmp_path: Path) -> None:
    """Random sets, overwrites and removals (tombstones) of loaded and new names, against a dict, over five saves."""
    m = built(300)
    model = tables(m.loaded)
    rnd = random.Random(7)
    files = []
    for _ in range(5):
        state = saved(tmp_path, m)
        files.append(len(m.state_files))
        assert tables(state) == model
        for _ in range(40):
            i = rnd.randrange(400)  # a third of them never loaded
            op = rnd.random()
            if op < 0.4:
                state.set_signature(url(i), f"changed {rnd.random()}")
                model["files"][url(i)] = state.files[url(i)]
            elif op < 0.6:
                state.forget(url(i))
                for table in ("files", "offsets"):
                    model[table].pop(url(i), None)
                for key in [k for k in model["progress"] if k == url(i) or k.startswith(url(i) + "#")]:
                    model["progress"].pop(key)
                    model["ends"].pop(key, None)
            elif op < 0.8:
                state.advance([(url(i), END_OF_FILE)], {url(i): 4})
                before = model["progress"].get(url(i), -1)
                if END_OF_FILE > before:
                    model["progress"][url(i)] = END_OF_FILE
                    model["ends"][url(i)] = max(4, before)
            else:
                state.restart(url(i), url(i))
                for table in ("progress", "ends", "offsets"):
                    model[table].pop(url(i), None)
            assert len(state.files) == len(model["files"]) and len(state.progress) == len(model["progress"])
        assert tables(state) == model
        assert sorted(state.names()) == sorted(set(model["progress"]) | set(model["ends"]) | set(model["files"])
                                               | set(model["offsets"]))
    assert tables(saved(tmp_path, m)) == model
    assert max(files) > 2  # what changed went to files of their own, read over the snapshot


def test_the_names_a_listing_lacks_are_found_through_the_loaded_index(tmp_path: Path) -> None:
    """``Column.unlisted`` gives the names held that no listed url is: loaded or set since, changed, removed."""
    state = saved(tmp_path, built(300))
    state.set_signature(url(10), "changed")
    state.set_signature(url(11), "changed")
    state.set_signature(url(350), "new")
    state.set_signature(url(351), "new")
    state.forget(url(20))
    state.forget(url(21))
    listed = [url(i) for i in range(0, 400, 3)] + [url(11), url(351), url(21), "s3://elsewhere/x.json"]
    expected = [name for name in dict(state.files) if name not in set(listed)]
    assert url(10) in expected and url(350) in expected and url(20) not in expected
    assert sorted(state.files.unlisted(iter(listed))) == sorted(expected)
    assert state.files.unlisted(iter(())) == list(state.files)
    fresh = Column("signature", None, {url(1): "a", url(2): "b"})
    assert fresh.unlisted(iter([url(2)])) == [url(1)]


def test_a_column_set_removed_and_set_again_counts_each_name_once() -> None:
    m = built(20)
    loaded = saved_in_memory(m)
    files = loaded.files
    assert len(files) == 20
    del files[url(1)]
    assert url(1) not in files and len(files) == 19 and files.get(url(1)) is None
    with pytest.raises(KeyError):
        del files[url(1)]
    files[url(1)] = "again"
    files[url(1)] = "and again"
    files[url(99)] = "new"
    assert len(files) == 21 and files[url(1)] == "and again" and list(files).count(url(1)) == 1
    del files[url(99)]
    assert len(files) == 20 and dict(files.items()) == dict(zip(files, map(files.__getitem__, files)))
    copy = files.copy()
    files[url(2)] = "only here"
    assert copy[url(2)] == signature(2)


def saved_in_memory(m: Manifest) -> State:
    """``m``'s state read back from the Arrow table a state file would hold."""
    state = m.loaded
    return state_files.apply_table(state_files.to_table(state, state.names(), state.shard_paths()))


def test_forgetting_an_input_finds_its_pieces_without_a_scan_of_every_key(tmp_path: Path, monkeypatch) -> None:
    m = Manifest.new("m", None, "float")
    s = m.loaded
    s.advance([("s3://b/a", 5), ("s3://b/a#bytes=0-9", END_OF_FILE), ("s3://b/a#bytes=10-19", 3),
               ("s3://b/a2", 7), ("s3://b/a#x.json#bytes=0-9", 1), ("s3://b/b", 1)], {})
    s.set_signature("s3://b/a", "1:x")
    loaded = saved(tmp_path, m)
    loaded.advance([("s3://b/a#bytes=20-29", 2), ("s3://b/a2#bytes=0-9", 2)], {})  # set since the load
    monkeypatch.setattr(Column, "__iter__", lambda self: pytest.fail("forget read every key"))
    loaded.forget("s3://b/a")
    monkeypatch.undo()
    # "a#x.json" is a url of its own, but also a piece of "a" as of_url sees it: gone with it, as before
    assert dict(loaded.progress) == {"s3://b/a2": 7, "s3://b/b": 1, "s3://b/a2#bytes=0-9": 2}
    assert loaded.ends == {} and loaded.files == {}
    again = saved(tmp_path, m)
    assert dict(again.progress) == {"s3://b/a2": 7, "s3://b/b": 1, "s3://b/a2#bytes=0-9": 2}


def test_the_hash_index_finds_every_name_when_home_slots_crowd_and_wrap_around() -> None:
    size = int(1_000 / LOAD) + 1
    rng = np.random.default_rng(3)
    crowded = (size - 3) + size * rng.integers(-2**40, 2**40, 600)  # all at home in the last three slots
    hashes = np.unique(np.concatenate([crowded, rng.integers(-2**62, 2**62, 400)]))[:1_000].astype(np.int64)
    rng.shuffle(hashes)
    keys, at = _table(hashes)
    assert len(keys) == size and np.count_nonzero(at) == len(hashes)
    for j, h in enumerate(hashes.tolist()):
        slot = h % size
        while keys[slot] != h:
            assert at[slot], "an empty slot before the name: lookups would miss it"
            slot = (slot + 1) % size
        assert at[slot] == j + 1


def test_signatures_are_a_read_only_view_of_the_state(tmp_path: Path) -> None:
    from test_dataset_writer import make_writer

    w = make_writer(tmp_path)
    w.set_signature(url(1), "1:x")
    view = w.signatures()
    w.set_signature(url(2), "1:y")
    assert dict(view) == {url(1): "1:x", url(2): "1:y"} and view.get(url(3)) is None and len(view) == 2
    with pytest.raises(TypeError):
        view[url(3)] = "1:z"  # type: ignore[index]
    w.close("completed")


def test_many_names_set_at_once_are_as_if_set_one_at_a_time() -> None:
    """``Column.set_many`` (what a commit uses) over loaded, removed, new names and pieces, against ``[]=``."""
    one, many = saved_in_memory(built(20)).files, saved_in_memory(built(20)).files
    for files in (one, many):
        del files[url(1)]
    pairs = [(url(1), "back"), (url(2), "changed"), (url(30), "new"), (f"{url(31)}#bytes=0-9", "piece"),
             (url(30), "new again")]
    for name, value in pairs:
        one[name] = value
    many.set_many(pairs)
    assert dict(many.items()) == dict(one.items()) and len(many) == len(one) == 22
    assert many.of_url(url(31)) == one.of_url(url(31)) == [f"{url(31)}#bytes=0-9"]


def test_a_key_marked_twice_in_one_commit_advances_as_marked_one_at_a_time() -> None:
    s = Manifest.new("m", None, "float").loaded
    s.advance([("a", 3), ("a", 2), ("a", END_OF_FILE), ("b", 1), ("b", END_OF_FILE), ("b", END_OF_FILE)],
              {"a": 3})
    assert dict(s.progress) == {"a": END_OF_FILE, "b": END_OF_FILE}
    assert dict(s.ends) == {"a": 3, "b": 1} and s.dirty == {"a", "b"}
