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
  listing still by moto): `s3_fast_get_objects_per_s`; werkzeug's thread
  per request still costs the bench process CPU on every GET, so it is
  repeated once more before a lighter front (asyncio and h11 in one thread,
  a timer per request, GETs from memory with moto's ETags, listing passed
  on to moto): `s3_async_front_objects_per_s`, the client's own rate. Each
  run is made twice: as the pipeline reads small objects (through obstore where it can,
  pipeline/sources/s3_get.py) and with obstore hidden from `pipeline run`,
  every GET through s3fs (`*_s3fs_*`, the yardstick). `*_gets_by` counts the
  GETs of objects by client (User-Agent), to show which path did them.
  `many-files-local` runs the local part alone.
- many-listed: N objects (a million by default) of a synthetic S3-like
  store listed as an S3 source, a page at a time, and compared with a
  dataset, each case in a process of its own: peak RSS and seconds. `new_*`:
  the dataset knows none, and every input to read is then made as the read
  stage makes them (not read); `known_*`: it knows every one, unchanged (a
  watcher's or a nightly rerun's steady state); `find_*`: the yardstick, the
  listing gathered whole as s3fs's `find` does. The dataset is a stand-in
  whose signatures are made when asked: the figures are the listing's and
  the comparison's, not the sink state's; `state_*` compares against the
  real opened resume state of a dataset that knows every object. `rerun_*`:
  the whole of a rerun, `pipeline run`'s Job in one process (the synthetic
  store registered for s3://) against a copy of that dataset, which also
  holds real data shards (a row per object, 8-d vectors), with 5 objects
  changed and embedded by `pipeline serve --fake`: listing, opening the
  sink, comparing, seeding the id registry, reading, embedding, replacing
  the changed rows, committing; `rerun_peak_rss_mb` is the process's peak,
  `rerun_<step>_rss_mb` / `rerun_<step>_peak_rss_mb` its RSS and peak
  after each step (list, open, compare, ids: the id registry is seeded
  once the listing is let go of), `rerun_before_ids_rss_mb` the RSS then,
  and `rerun_seed_and_after_peak_rss_mb` the peak of the seeding and what
  follows alone. `start_peak_rss_mb`: the imports alone. Target: under 300 MB at a
  million.
- rerun-changes: a corpus embedded once, then 10% of its documents edited
  (one JSONL file of records and a folder of .md files, each with 10% of its
  records or files edited) and run again; `paid_per_changed` = inputs sent
  to the API ÷ inputs whose text changed, target about 1; `rerun_requests`
  the requests the rerun sent, against `requests_needed` (inputs paid ÷ the
  batch size, rounded up).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlsplit

S3_OBJECTS = 10_000  # objects of the S3 case (uploading to moto costs time too)
S3_LATENCY_MS = 30.0  # added to every request the S3 server answers
RERUN_CHANGED = 5  # objects of many-listed's rerun case changed since the dataset read them
RERUN_DIMENSIONS = 8  # of the vectors of many-listed's rerun case (its data shards stay small)
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
                       {"url": url, "model": "bench", "concurrency": bench.CONCURRENCY, "batch_size": bench.BATCH,
                        "encoding_format": "base64"})
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
        **s3["figures"],
        "exit": max(local["exit"], *s3["exits"]),
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


class _Counts:
    """Requests answered, and the GETs of objects (``*.md``) by client (User-Agent's first word: botocore's
    or obstore's), to show which path did them."""

    def __init__(self) -> None:
        self.requests = 0
        self.gets_by: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, method: str, path: str, user_agent: str | None) -> None:
        with self._lock:
            self.requests += 1
            if method == "GET" and path.endswith(".md"):
                client = (user_agent or "-").split("/")[0]
                self.gets_by[client] = self.gets_by.get(client, 0) + 1

    def taken(self) -> dict[str, Any]:
        """The counts since the last call; counting starts again."""
        with self._lock:
            figures = {"requests": self.requests, "gets_by": dict(sorted(self.gets_by.items()))}
            self.requests, self.gets_by = 0, {}
        return figures


def _from_memory(objects: dict[str, tuple[bytes, str]], method: str, path: str, query: str,
                 range_: str | None) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """The answer to a plain GET (or a GET of ``bytes=0-``) of one of ``objects`` (path → bytes, ETag), as
    S3 gives it; None for any other request."""
    found = objects.get(path)
    if found is None or method != "GET" or query not in ("", "x-id=GetObject") or (range_ or "bytes=0-") != "bytes=0-":
        return None
    data, etag = found
    headers = [("Content-Type", "binary/octet-stream"), ("Content-Length", str(len(data))),
               ("ETag", etag), ("Last-Modified", "Tue, 01 Dec 2026 00:00:00 GMT")]
    if range_ is None:
        return 200, headers, data
    return 206, [*headers, ("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")], data


class _Latency:
    """WSGI middleware: every request waits ``delay_s`` before it is answered (the server runs a thread
    per request, so requests wait side by side, as on a real store far away).

    With ``objects`` set, a plain GET of one of them is answered from there instead of by moto, whose own
    cost per request (several ms of CPU on a loaded 2-core machine) would otherwise be what the
    benchmark measures.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.delay_s = 0.0
        self.counts = _Counts()
        self.objects: dict[str, tuple[bytes, str]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if self.delay_s:
            self.counts.add(method, path, environ.get("HTTP_USER_AGENT"))
            time.sleep(self.delay_s)
        answer = _from_memory(self.objects, method, path, environ.get("QUERY_STRING", ""), environ.get("HTTP_RANGE"))
        if answer is None:
            return self.app(environ, start_response)
        status, headers, data = answer
        start_response("200 OK" if status == 200 else "206 Partial Content", headers)
        return [data]


class _AsyncFront:
    """A lighter front of the store than moto's threaded werkzeug server: asyncio and h11 in one thread,
    each request waiting ``delay_s`` (a timer, not a thread), GETs of ``objects`` answered from memory,
    every other request (listing) passed on to ``upstream``. Its own cost per request is small, so the
    figure behind it is the client's."""

    def __init__(self, upstream: str, objects: dict[str, tuple[bytes, str]], delay_s: float) -> None:
        self.upstream = urlsplit(upstream)
        self.objects = objects
        self.delay_s = delay_s
        self.counts = _Counts()
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, "127.0.0.1", 0),
                                                  self._loop).result()
        self._server = server
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _stop(self) -> None:
        """No new connections; those still open (a client's idle pool) are closed."""
        self._server.close()
        for writer in list(self._open):
            writer.close()  # its reader sees the end: the connection's task returns
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11

        conn = h11.Connection(h11.SERVER)
        self._open.add(writer)
        try:
            while (got := await self._request(conn, reader)) is not None:
                request, body = got
                method, target = request.method.decode(), request.target.decode()
                path, _, query = target.partition("?")
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                self.counts.add(method, path, headers.get("user-agent"))
                await asyncio.sleep(self.delay_s)
                answer = _from_memory(self.objects, method, path, query, headers.get("range"))
                if answer is None:
                    answer = await self._loop.run_in_executor(None, self._forward, method, target, headers, body)
                status, out_headers, data = answer
                writer.write(conn.send(h11.Response(status_code=status, headers=out_headers)))
                if data and method != "HEAD":
                    writer.write(conn.send(h11.Data(data=data)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    @staticmethod
    async def _request(conn: Any, reader: asyncio.StreamReader) -> tuple[Any, bytes] | None:
        import h11

        request, body = None, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(1 << 16))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(body)
            else:  # the client closed the connection
                return None

    def _forward(self, method: str, target: str, headers: dict[str, str],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            upstream.request(method, target, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        kept = [(k, v) for k, v in response.getheaders()
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive")]
        # a HEAD's length is the object's, as upstream said; anything else's is the body's
        length = response.getheader("Content-Length", "0") if method == "HEAD" else str(len(data))
        return response.status, [*kept, ("Content-Length", length)], data


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


#: the fronts of the S3 case: moto answers all; the middleware answers GETs from memory; the asyncio front does
FRONTS = ("s3", "s3_fast_get", "s3_async_front")


def _many_objects(work: Path, docs: list[str], url: str) -> dict[str, Any]:
    """``docs`` as one-document objects in S3 behind a latency, read by `pipeline run` into a local dataset,
    before each front of :data:`FRONTS`; each as the pipeline reads them and through s3fs only."""
    import s3fs

    bench = _bench()
    figures: dict[str, Any] = {}
    exits = []
    with _moto_with_latency() as (moto_url, latency):
        s3 = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        s3.mkdir("bench")
        objects = {f"bench/notes/d{i:07d}.md": text.encode() for i, text in enumerate(docs)}
        s3.pipe(objects)
        # the objects with the ETags moto gave them: what the fronts answering from memory serve
        stored = {f"/{path}": (objects[path], info["ETag"])
                  for path, info in s3.find("bench/notes", detail=True).items()}
        config = work / "s3.yaml"
        bench.write_config(config, "s3://bench/notes", work / "s3-out",  # type: ignore[arg-type]
                           {"url": url, "model": "bench", "concurrency": bench.CONCURRENCY,
                            "encoding_format": "base64"})
        delay = S3_LATENCY_MS / 1000
        for front in FRONTS:
            counts = latency.counts
            with ExitStack() as stack:
                if front == "s3_fast_get":
                    latency.objects = stored
                if front == "s3_async_front":
                    latency.objects = {}
                    async_front = _AsyncFront(moto_url, stored, delay)
                    os.environ["AWS_ENDPOINT_URL"] = stack.enter_context(async_front)
                    stack.callback(os.environ.__setitem__, "AWS_ENDPOINT_URL", moto_url)
                    counts = async_front.counts
                else:
                    latency.delay_s = delay
                    stack.callback(setattr, latency, "delay_s", 0.0)
                for path in ("_s3fs", ""):
                    shutil.rmtree(work / "s3-out", ignore_errors=True)
                    with _obstore_hidden(work) if path else nullcontext():
                        run = bench.run_pipeline(config)
                    counted = counts.taken()
                    exits.append(run.returncode)
                    name = f"{front}{path}"
                    figures.update({
                        f"{name}_objects_per_s": round(len(docs) / run.wall_s),
                        f"{name}_wall_s": round(run.wall_s, 2),
                        f"{name}_cpu_s": round(run.cpu_s, 1),
                        f"{name}_requests": counted["requests"],
                        f"{name}_gets_by": counted["gets_by"],
                        f"{name}_rows": run.manifest.get("totals", {}).get("rows_embedded"),
                    })
                    if front == "s3" and not path:
                        figures["s3_peak_rss_mb"] = round(run.max_rss_mb)
    return {"objects": len(docs), "figures": figures, "exits": exits}


@contextmanager
def _obstore_hidden(work: Path) -> Iterator[None]:
    """`pipeline run` started meanwhile cannot import obstore: its small objects are read through s3fs."""
    shim = work / "no-obstore" / "obstore"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text('raise ImportError("obstore hidden by the benchmark")\n')
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim.parent), saved]))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


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
        served = bench.stats(url)
        paid = served["inputs_embedded"]
    changed = len(edited) + len(range(0, files, 10))
    figures.update({
        "first_wall_s": round(first.wall_s, 2),
        "rerun_wall_s": round(again.wall_s, 2),
        "inputs_changed": changed,
        "inputs_paid": paid,
        "paid_per_changed": round(paid / changed, 2),
        # requests of the rerun, against the fewest that could carry the inputs paid
        "rerun_requests": served["requests"],
        "requests_needed": -(-paid // bench.BATCH),
        "rows": again.manifest.get("totals", {}).get("rows_embedded"),
        "exit": max(first.returncode, again.returncode),
    })
    return bench.Row("rerun-changes", figures)


def many_listed(work: Path, records: int) -> Any:
    """``records`` objects of a synthetic S3-like store listed a page at a time and compared, each case in a
    process of its own: its peak RSS and seconds. ``new_*``: against a dataset that knows none, then every
    input to read made as the read stage makes them (nothing read); ``known_*``: against a dataset that
    knows every one, unchanged (the watcher's and the nightly rerun's steady state: nothing opened);
    ``state_*``: as ``known``, against the real resume state of such a dataset, opened as a run opens it
    (listing, comparison and state in one process); ``rerun_*``: a whole ``pipeline run`` (its Job, in one
    process) over them against a copy of that dataset (with real data shards), a few objects changed;
    ``find_*``: the yardstick, the listing gathered whole as s3fs's ``find`` does, compared as ``new``.
    ``start_rss_mb``: a process that only imported what the cases import."""
    bench = _bench()
    figures: dict[str, Any] = {"objects": records}
    dataset = work / "known-ds"  # the real resume state of a dataset that knows every object, for "state"
    dataset.mkdir()
    # built in a process of its own: a child forked from a big parent would count the parent's pages in its
    # peak RSS (ru_maxrss is kept across fork and exec)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "known-dataset", str(records), str(dataset)],
                   check=True)
    for how in ("start", "new", "known", "state", "rerun", "find"):
        with bench.serve("--fake", "--dimensions", str(RERUN_DIMENSIONS)) if how == "rerun" else nullcontext() as url:
            m = bench.measure(_case(work, records, how, dataset, url), work)
        if m.returncode != 0:
            return bench.Row("many-listed", {**figures, "exit": m.returncode})
        if how != "start":
            figures.update({f"{how}_{k}": v for k, v in json.loads(m.stdout.strip().splitlines()[-1]).items()})
        # (rerun resets its peak before seeding the ids, to measure what follows alone: it says its whole peak)
        figures[f"{how}_peak_rss_mb"] = round(max(m.max_rss_mb, figures.get(f"{how}_whole_peak_rss_mb", 0)))
    return bench.Row("many-listed", {**figures, "exit": 0})


def _case(work: Path, records: int, how: str, dataset: Path, url: str | None) -> list[str]:
    """The command of one many-listed case; ``rerun`` runs a config of its own against a copy of ``dataset``
    (the run changes it) and the embedding server at ``url``."""
    me = str(Path(__file__).resolve())
    if how != "rerun":
        return [sys.executable, me, "listing", str(records), how, str(dataset)]
    copy = work / "rerun-ds"
    shutil.copytree(dataset, copy)
    config = work / "rerun.yaml"
    config.write_text(f"source:\n  path: s3://bucket/corpus\nembedding:\n  url: {url}\n  model: bench\n"
                      f"sink:\n  path: {copy}\nlogging:\n  format: logfmt\n  level: warning\n")
    return [sys.executable, me, "rerun", str(records), str(config)]


def _name(i: int) -> str:
    """The key of synthetic object ``i``, with its bucket."""
    return f"bucket/corpus/2024/{i // 1000:04d}/doc-{i:08d}.md"


def _signature(i: int) -> str:
    """What the listing says of synthetic object ``i``: its size and ETag."""
    return f"{1200 + i % 500}:\"{i:032x}\""


def _info(i: int, changed: frozenset[int] = frozenset()) -> dict[str, Any]:
    """What list_objects_v2 says of synthetic object ``i``, as s3fs hands it on (another ETag when changed)."""
    etag = f'"{i:032x}"' if i not in changed else f'"{i:031x}e"'
    return {"Key": _name(i), "name": _name(i), "type": "file", "size": 1200 + i % 500, "Size": 1200 + i % 500,
            "ETag": etag, "LastModified": "2024-01-01T00:00:00+00:00", "StorageClass": "STANDARD"}


def _store(objects: int, protocol: Any, changed: frozenset[int] = frozenset()) -> Any:
    """A filesystem class listing ``objects`` synthetic objects a page at a time, as s3fs does (the
    ``changed`` ones with another ETag, and their text readable)."""
    import fsspec.asyn
    from fsspec.implementations.memory import MemoryFileSystem

    class Store(MemoryFileSystem):  # type: ignore[misc]
        loop = fsspec.asyn.get_loop()

        @classmethod
        def _strip_protocol(cls, path: Any) -> str:  # as s3fs: bucket/key
            return str(path).removeprefix("s3://").removeprefix("s3a://").removeprefix("memory://").strip("/")

        def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
            return {"name": path, "type": "directory", "size": 0}

        def find(self, path: str, *args: Any, detail: bool = False, **kwargs: Any) -> Any:
            return {_info(i)["name"]: _info(i) for i in range(objects)}

        def invalidate_cache(self, path: str | None = None) -> None:
            pass

        def split_path(self, path: str) -> tuple[str, str, None]:
            bucket, _, key = path.partition("/")
            return bucket, key, None

        async def _iterdir(self, bucket: str, prefix: str = "", delimiter: str = "/") -> Any:
            for start in range(0, objects, 1000):
                for entry in [_info(i, changed) for i in range(start, min(objects, start + 1000))]:  # one page
                    yield entry

        def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
            i = int(path[-11:-3])
            if i not in changed or self._strip_protocol(path) != _name(i):
                raise FileNotFoundError(path)
            return f"# Document {i}\n\nIts text, edited since the last run.\n".encode()[start:end]

    Store.protocol = protocol
    return Store


def _listing(objects: int, how: str, dataset: str = "") -> dict[str, Any]:
    """List ``objects`` synthetic objects as an S3 source (a page at a time, or whole with ``find``), compare
    them with a dataset (knowing none of them, or all, unchanged) and walk what is to read; the seconds each
    took. The dataset is a stand-in whose signatures are made from an object's number when asked (the
    sink's own state is not what is measured here)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from collections.abc import Mapping

    import fsspec

    from pipeline.config import SourceConfig
    from pipeline.jobs.changes import apply, compare
    from pipeline.jobs.progress import Progress
    from pipeline.sources.listing import assign, list_files
    from pipeline.stages.read import Checkpoints
    from pipeline.storage import Location
    from pipeline.types import END_OF_FILE

    if how == "start":
        return {}

    name = _name
    Store = _store(objects, ("s3", "s3a") if how != "find" else "memory")

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
            return _signature(i)

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

        def set_signatures(self, pairs: Iterable[tuple[str, str]]) -> None:
            for _ in pairs:  # made as a run makes them, kept nowhere
                pass

    class Opened(Dataset):
        """The sink as a run opens it: the dataset's real resume state, read from its files."""

        def __init__(self, root: str) -> None:
            from pipeline.dataset import state_files
            from pipeline.dataset.manifest import Manifest

            local = fsspec.filesystem("file")
            self.state = state_files.load(local, root, Manifest.load(local, root))
            self.known = self.state.files

        def done_upto(self, key: str) -> int:
            return self.state.done_upto(key)

    fs = Store(skip_instance_cache=True)
    sink = Opened(dataset) if how == "state" else Dataset(objects if how == "known" else 0)
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
        (0, 0, objects) if how in ("known", "state") else (objects, objects, 0)) and not changes.deleted
    return {"list_s": round(listed - started, 1), "compare_s": round(compared - listed, 1),
            "walk_s": round(time.perf_counter() - compared, 1)}


def _known_dataset(objects: int, root: str) -> None:
    """Write a dataset that read every synthetic object whole: its resume state (for ``state``) and its data
    shards, a row per object with the id a run gives it and a vector of RERUN_DIMENSIONS (for ``rerun``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    from bench_state import _build

    _build(Path(root), objects, url=lambda i: f"s3://{_name(i)}", signature=_signature,
           doc_id=lambda i: _name(i).removeprefix("bucket/corpus/"), dimensions=RERUN_DIMENSIONS)


def _rerun(objects: int, config: str) -> dict[str, Any]:
    """``pipeline run`` of ``config`` in this process, its source ``objects`` synthetic objects (RERUN_CHANGED
    of them changed since the dataset read them): the run's figures, and after each of its first steps (the
    listing, the opened sink, the comparison, the seeded id registry) this process's RSS and peak RSS; the
    peak is reset before the registry is seeded (``/proc/self/clear_refs``), so ``seed_and_after_peak_rss_mb``
    is that of the seeding and what follows alone, and ``whole_peak_rss_mb`` the run's."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(1, str(Path(__file__).resolve().parent))
    import anyio
    import fsspec

    from bench_state import _peak_mb
    from pipeline.config import load_config
    from pipeline.jobs import run

    changed = frozenset(range(0, objects, max(1, objects // RERUN_CHANGED)))
    fsspec.register_implementation("s3", _store(objects, ("s3", "s3a"), changed), clobber=True)
    figures: dict[str, Any] = {"start_peak_rss_mb": round(_peak_mb())}

    def measured(name: str, step: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if name == "ids":  # the listing let go of: from here on, the peak of what follows alone
                figures["before_ids_rss_mb"] = round(_rss_mb())
                Path("/proc/self/clear_refs").write_text("5")
            started = time.perf_counter()
            out = step(*args, **kwargs)
            figures[f"{name}_s"] = round(time.perf_counter() - started, 1)
            figures[f"{name}_rss_mb"] = round(_rss_mb())
            figures[f"{name}_peak_rss_mb"] = round(_peak_mb())
            return out
        return wrapped

    for name, attr in (("list", "list_source"), ("open", "open_sink"), ("ids", "_register_ids"),
                       ("compare", "compare")):
        setattr(run, attr, measured(name, getattr(run, attr)))
    started = time.perf_counter()
    job = run.Job(load_config(config), handle_signals=False)
    result = anyio.run(job.run)
    return {**figures, "run_s": round(time.perf_counter() - started, 1), "status": result.status,
            "message": result.message, **{k: job.changes.get(k) for k in ("changed", "unchanged", "new")},
            "rows": result.totals.get("rows_embedded"), "seed_and_after_peak_rss_mb": round(_peak_mb()),
            "whole_peak_rss_mb": round(max(_peak_mb(), *(v for k, v in figures.items() if k.endswith("peak_rss_mb"))))}


def _rss_mb() -> float:
    """This process's resident memory now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__" and sys.argv[1:2] == ["known-dataset"]:
    _known_dataset(int(sys.argv[2]), sys.argv[3])

if __name__ == "__main__" and sys.argv[1:2] == ["rerun"]:
    print(json.dumps(_rerun(int(sys.argv[2]), sys.argv[3])))

if __name__ == "__main__" and sys.argv[1:2] == ["listing"]:
    print(json.dumps(_listing(int(sys.argv[2]), sys.argv[3], *sys.argv[4:5])))
