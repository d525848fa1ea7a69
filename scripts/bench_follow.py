"""Benchmark scenarios of a dataset that follows its source (registered in scripts/bench.py).

- many-files: N one-document .md files against the same N documents in one
  JSONL file, local disk, fake server; `wall_ratio` = files / jsonl, target
  at most 1.5. Also the manifest's size after the files run. Then the same
  documents (at most S3_OBJECTS of them) as objects in moto's S3 server, run
  in this process behind a WSGI middleware that sleeps S3_LATENCY_MS before
  answering each request (listing pages, GETs); `s3_objects_per_s` = objects
  ÷ the whole run's wall time (start-up, listing and embedding included),
  target at least 500. The sink stays on local disk. moto's own cost per
  request bounds that figure on a small machine, so the run is repeated
  with the objects' GETs answered by the middleware itself (same latency,
  listing still by moto): `s3_fast_get_objects_per_s`. `many-files-local`
  runs the local part alone.
- many-listed: N objects (a million by default) of a synthetic S3-like
  store listed as an S3 source, a page at a time, and compared with a
  dataset, each case in a process of its own: peak RSS and seconds. `new_*`:
  the dataset knows none, and every input to read is then made as the read
  stage makes them (not read); `known_*`: it knows every one, unchanged (a
  watcher's or a nightly rerun's steady state); `find_*`: the yardstick, the
  listing gathered whole as s3fs's `find` does. The dataset is a stand-in
  whose signatures are made when asked: the figures are the listing's and
  the comparison's, not the sink state's. `start_peak_rss_mb`: the imports
  alone. Target: under 300 MB at a million.
- rerun-changes: a corpus embedded once, then 10% of its documents edited
  (one JSONL file of records and a folder of .md files, each with 10% of its
  records or files edited) and run again; `paid_per_changed` = inputs sent
  to the API ÷ inputs whose text changed, target about 1.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

S3_OBJECTS = 10_000  # objects of the S3 case (uploading to moto costs time too)
S3_LATENCY_MS = 30.0  # added to every request the S3 server answers
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def _bench() -> Any:
    """scripts/bench.py's helpers (imported late: bench.py registers these scenarios)."""
    return sys.modules.get("__main__") if hasattr(sys.modules.get("__main__"), "SCENARIOS") else __import__("bench")


def _docs(n: int) -> list[str]:
    phrases = ["the quick brown fox", "une phrase en français", "ein deutscher Satz", "日本語の文です"]
    return [" ".join(phrases[(i + k) % len(phrases)] for k in range(4)) + f" #{i}" for i in range(n)]


def _config(work: Path, name: str, source: Path, url: str) -> Path:
    bench = _bench()
    config = work / f"{name}.yaml"
    bench.write_config(config, source, work / f"{name}-out",
                       {"url": url, "model": "bench", "concurrency": bench.CONCURRENCY, "encoding_format": "base64"})
    return config


def many_files(work: Path, records: int) -> Any:
    """N small .md files against one JSONL of the same N documents: wall time of each, and their ratio;
    then the same documents (at most S3_OBJECTS) as objects in S3."""
    bench = _bench()
    docs = _docs(records)
    with bench.serve("--fake", "--dimensions", "256") as url:
        local = _files_against_jsonl(work, docs, url)
        s3 = _many_objects(work, docs[:S3_OBJECTS], url)
    return bench.Row("many-files", {
        **{name: value for name, value in local.items() if name != "exit"},
        "s3_objects": s3["objects"],
        "s3_latency_ms": S3_LATENCY_MS,
        "s3_wall_s": round(s3["run"].wall_s, 2),
        "s3_objects_per_s": round(s3["objects"] / s3["run"].wall_s),
        "s3_requests": s3["requests"],
        "s3_peak_rss_mb": round(s3["run"].max_rss_mb),
        "s3_fast_get_objects_per_s": round(s3["objects"] / s3["fast"].wall_s),
        "s3_fast_get_requests": s3["fast_requests"],
        "exit": max(local["exit"], s3["run"].returncode, s3["fast"].returncode),
    })


def many_files_local(work: Path, records: int) -> Any:
    """many-files without its S3 part: the local files against the JSONL only."""
    bench = _bench()
    with bench.serve("--fake", "--dimensions", "256") as url:
        return bench.Row("many-files-local", _files_against_jsonl(work, _docs(records), url))


def _files_against_jsonl(work: Path, docs: list[str], url: str) -> dict[str, Any]:
    """``docs`` as one .md file each, then as one JSONL file, each run into its own dataset: the figures."""
    bench = _bench()
    folder = work / "files"
    folder.mkdir()
    for i, text in enumerate(docs):
        (folder / f"d{i:07d}.md").write_text(text)
    corpus = work / "one.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    one = bench.run_pipeline(_config(work, "one", corpus, url))
    many = bench.run_pipeline(_config(work, "many", folder, url))
    manifest = work / "many-out" / "_manifest.json"
    return {
        "files": len(docs),
        "jsonl_wall_s": round(one.wall_s, 2),
        "files_wall_s": round(many.wall_s, 2),
        "wall_ratio": round(many.wall_s / one.wall_s, 2),
        # CPU time of each run's own process: steadier than wall time on a machine others share
        "cpu_ratio": round(many.cpu_s / one.cpu_s, 2),
        "files_peak_rss_mb": round(many.max_rss_mb),
        "manifest_kb": round(manifest.stat().st_size / 1024) if manifest.exists() else None,
        "exit": max(one.returncode, many.returncode),
    }


class _Latency:
    """WSGI middleware: every request waits ``delay_s`` before it is answered (the server runs a thread
    per request, so requests wait side by side, as on a real store far away).

    With ``objects`` (path → bytes) set, a plain GET of one of them is answered from there instead of
    by moto, whose own cost per request (tens of ms of CPU on a loaded 2-core machine) would otherwise
    be what the benchmark measures.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.delay_s = 0.0
        self.requests = 0
        self.objects: dict[str, bytes] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if self.delay_s:
            self.requests += 1
            time.sleep(self.delay_s)
        data = self.objects.get(environ.get("PATH_INFO", ""))
        if (data is None or environ["REQUEST_METHOD"] != "GET"
                or environ.get("QUERY_STRING", "") not in ("", "x-id=GetObject")
                or environ.get("HTTP_RANGE", "bytes=0-") != "bytes=0-"):
            return self.app(environ, start_response)
        ranged = "HTTP_RANGE" in environ
        headers = [("Content-Type", "binary/octet-stream"), ("Content-Length", str(len(data))),
                   ("ETag", '"0"'), ("Last-Modified", "Tue, 01 Dec 2026 00:00:00 GMT")]
        if ranged:
            headers.append(("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}"))
        start_response("206 Partial Content" if ranged else "200 OK", headers)
        return [data]


@contextmanager
def _moto_with_latency() -> Iterator[tuple[str, _Latency]]:
    """moto's S3 server on a loopback port in a thread, behind :class:`_Latency`; the AWS_* environment
    (inherited by `pipeline run`) points at it."""
    import logging

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = _Latency(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    saved = dict(os.environ)
    os.environ.update({**FAKE_AWS, "AWS_ENDPOINT_URL": url})
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        os.environ.pop(name, None)
    try:
        yield url, app
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.shutdown()
        thread.join()


def _many_objects(work: Path, docs: list[str], url: str) -> dict[str, Any]:
    """``docs`` as one-document objects in S3 behind a latency, read by `pipeline run` into a local dataset."""
    import s3fs

    bench = _bench()
    with _moto_with_latency() as (_, latency):
        s3 = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        s3.mkdir("bench")
        s3.pipe({f"bench/notes/d{i:07d}.md": text.encode() for i, text in enumerate(docs)})
        config = work / "s3.yaml"
        bench.write_config(config, "s3://bench/notes", work / "s3-out",  # type: ignore[arg-type]
                           {"url": url, "model": "bench", "concurrency": bench.CONCURRENCY,
                            "encoding_format": "base64"})
        latency.delay_s = S3_LATENCY_MS / 1000
        run = bench.run_pipeline(config)
        requests, latency.requests = latency.requests, 0
        # again, the objects' GETs answered by the middleware: what the pipeline does when the store is fast
        latency.objects = {f"/bench/notes/d{i:07d}.md": text.encode() for i, text in enumerate(docs)}
        shutil.rmtree(work / "s3-out")
        fast = bench.run_pipeline(config)
        latency.delay_s = 0.0
    return {"objects": len(docs), "run": run, "requests": requests, "fast": fast,
            "fast_requests": latency.requests}


def rerun_changes(work: Path, records: int) -> Any:
    """Embed, edit 10% of the documents, run again: inputs paid per input changed, for JSONL and .md files."""
    bench = _bench()
    docs = _docs(records)
    corpus = work / "in" / "docs.jsonl"
    folder = work / "in" / "notes"
    folder.mkdir(parents=True)
    files = records // 10
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    for i in range(files):
        (folder / f"n{i:06d}.md").write_text(docs[i] + " (note)")
    figures: dict[str, object] = {"records": records, "files": files}
    with bench.serve("--fake", "--dimensions", "256") as url:
        config = _config(work, "changes", work / "in", url)
        first = bench.run_pipeline(config)
        edited = {i for i in range(0, records, 10)}
        corpus.write_text("".join(
            json.dumps({"id": f"d{i}", "text": t + (" (edited)" if i in edited else "")}) + "\n"
            for i, t in enumerate(docs)))
        for i in range(0, files, 10):
            path = folder / f"n{i:06d}.md"
            path.write_text(docs[i] + " (note, edited)")
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        bench.reset_stats(url)
        again = bench.run_pipeline(config)
        paid = bench.stats(url)["inputs_embedded"]
    changed = len(edited) + len(range(0, files, 10))
    figures.update({
        "first_wall_s": round(first.wall_s, 2),
        "rerun_wall_s": round(again.wall_s, 2),
        "inputs_changed": changed,
        "inputs_paid": paid,
        "paid_per_changed": round(paid / changed, 2),
        "rows": again.manifest.get("totals", {}).get("rows_embedded"),
        "exit": max(first.returncode, again.returncode),
    })
    return bench.Row("rerun-changes", figures)


def many_listed(work: Path, records: int) -> Any:
    """``records`` objects of a synthetic S3-like store listed a page at a time and compared, each case in a
    process of its own: its peak RSS and seconds. ``new_*``: against a dataset that knows none, then every
    input to read made as the read stage makes them (nothing read); ``known_*``: against a dataset that
    knows every one, unchanged (the watcher's and the nightly rerun's steady state: nothing opened);
    ``find_*``: the yardstick, the listing gathered whole as s3fs's ``find`` does, compared as ``new``.
    ``start_rss_mb``: a process that only imported what the cases import."""
    bench = _bench()
    figures: dict[str, Any] = {"objects": records}
    for how in ("start", "new", "known", "find"):
        m = bench.measure([sys.executable, str(Path(__file__).resolve()), "listing", str(records), how], work)
        if m.returncode != 0:
            return bench.Row("many-listed", {**figures, "exit": m.returncode})
        if how != "start":
            figures.update({f"{how}_{k}": v for k, v in json.loads(m.stdout.strip().splitlines()[-1]).items()})
        figures[f"{how}_peak_rss_mb"] = round(m.max_rss_mb)
    return bench.Row("many-listed", {**figures, "exit": 0})


def _listing(objects: int, how: str) -> dict[str, Any]:
    """List ``objects`` synthetic objects as an S3 source (a page at a time, or whole with ``find``), compare
    them with a dataset (knowing none of them, or all, unchanged) and walk what is to read; the seconds each
    took. The dataset is a stand-in whose signatures are made from an object's number when asked (the
    sink's own state is not what is measured here)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from collections.abc import Mapping

    import fsspec.asyn
    from fsspec.implementations.memory import MemoryFileSystem

    from pipeline.config import SourceConfig
    from pipeline.jobs.changes import apply, compare
    from pipeline.jobs.progress import Progress
    from pipeline.sources.listing import assign, list_files
    from pipeline.stages.read import Checkpoints
    from pipeline.storage import Location
    from pipeline.types import END_OF_FILE

    if how == "start":
        return {}

    def name(i: int) -> str:
        return f"bucket/corpus/2024/{i // 1000:04d}/doc-{i:08d}.md"

    def info(i: int) -> dict[str, Any]:  # what list_objects_v2 says of an object, as s3fs hands it on
        return {"Key": name(i), "name": name(i), "type": "file", "size": 1200 + i % 500, "Size": 1200 + i % 500,
                "ETag": f'"{i:032x}"', "LastModified": "2024-01-01T00:00:00+00:00", "StorageClass": "STANDARD"}

    class Store(MemoryFileSystem):  # type: ignore[misc]
        protocol = ("s3", "s3a") if how != "find" else "memory"
        loop = fsspec.asyn.get_loop()

        def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
            return {"name": path, "type": "directory", "size": 0}

        def find(self, path: str, *args: Any, detail: bool = False, **kwargs: Any) -> Any:
            return {info(i)["name"]: info(i) for i in range(objects)}

        def invalidate_cache(self, path: str | None = None) -> None:
            pass

        def split_path(self, path: str) -> tuple[str, str, None]:
            bucket, _, key = path.partition("/")
            return bucket, key, None

        async def _iterdir(self, bucket: str, prefix: str = "", delimiter: str = "/") -> Any:
            for start in range(0, objects, 1000):
                for entry in [info(i) for i in range(start, min(objects, start + 1000))]:  # one page
                    yield entry

    class Signatures(Mapping):  # type: ignore[type-arg]
        """url → signature of every object, made when asked (as a compact state would)."""

        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __iter__(self) -> Any:
            return (f"s3://{name(i)}" for i in range(self.n))

        def __getitem__(self, url: str) -> str:
            try:
                i = int(url[-11:-3])
            except ValueError:
                raise KeyError(url) from None
            if not 0 <= i < self.n or url != f"s3://{name(i)}":
                raise KeyError(url)
            return f"{1200 + i % 500}:\"{i:032x}\""

    class Dataset:
        """The sink as compare and apply see it; it knows the first ``known`` objects, each done whole."""

        def __init__(self, known: int) -> None:
            self.known = Signatures(known)

        def signature(self, url: str) -> str | None:
            return self.known.get(url)

        def signatures(self) -> Signatures:
            return self.known

        def done_upto(self, key: str) -> int:
            return END_OF_FILE if key in self.known else 0

        def set_signature(self, url: str, signature: str) -> None:
            pass

    fs = Store(skip_instance_cache=True)
    sink = Dataset(objects if how == "known" else 0)
    started = time.perf_counter()
    files = list_files(Location.on(fs, "bucket/corpus"), SourceConfig(path="s3://bucket/corpus"))
    mine = assign(fs, files, 0, 1, 1 << 28)
    listed = time.perf_counter()
    changes = compare(sink, fs, mine, files)  # type: ignore[arg-type]
    progress = Progress()
    apply(sink, fs, changes, Checkpoints(), progress, remove=True)  # type: ignore[arg-type]
    compared = time.perf_counter()
    walked = sum(1 for inp in changes.to_read if sink.done_upto(inp.key) < END_OF_FILE)  # as read_stage plans them
    assert (changes.counts()["new"], walked, changes.unchanged) == (
        (0, 0, objects) if how == "known" else (objects, objects, 0)) and not changes.deleted
    return {"list_s": round(listed - started, 1), "compare_s": round(compared - listed, 1),
            "walk_s": round(time.perf_counter() - compared, 1)}


if __name__ == "__main__" and sys.argv[1:2] == ["listing"]:
    print(json.dumps(_listing(int(sys.argv[2]), sys.argv[3])))
