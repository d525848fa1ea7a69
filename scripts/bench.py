#!/usr/bin/env python3
"""Benchmarks for `pipeline`: each scenario prints one table row.

    python scripts/bench.py                 # every scenario (about 5 minutes on 2 cores)
    python scripts/bench.py overhead        # one scenario
    python scripts/bench.py --json          # machine-readable figures

Every scenario runs the real `pipeline run` as a subprocess against a real
`pipeline serve` on a loopback port, on a corpus generated in a temporary
directory, and reads its figures from the dataset's manifest, the server's
/stats counters and the process's own resource usage (CPU time and peak RSS
of that one process, from wait4). Where it says so, the same work is also
done by scripts/baseline_openai.py, the script a user would write with the
official `openai` SDK, against the same server (its counters reset between
the two), and both are shown side by side: `baseline_*` is that script as
most users write it (the SDK's default encoding, which it decodes into
Python float lists), `tuned_*` the same script asking for base64 explicitly
and decoding it with numpy.

Scenarios and their targets:

- overhead: 60,000 short records, 1024-dim float vectors, zero latency;
  `wall_ratio` = pipeline wall / baseline wall, target at most 0.5.
- rate-requests, rate-tokens: the server's budget binds; utilisation of that
  budget and the share of requests answered 429, for both.
- rate-nolimit: nothing configured, the server allows 240 requests a minute:
  learned from its x-ratelimit-* headers (at most 2% answered 429), then from
  its 429s alone (at most 10%); at least 85% of the rate used, no row in errors/.
- rate-shared: three workers, one budget of 600 requests a minute shared
  through a real redis-server (at least 95% used, at most 2% answered 429),
  then the same three pacing alone for comparison, with the server's
  x-ratelimit-* headers and without.
- rate-sliding: a token budget counted over a sliding minute: at least 98%
  used, at most 1% answered 429.
- latency-bound: 200 ms + 0..50 ms (uniform) of server latency; throughput
  against the ideal, concurrency x batch / mean latency; target 90%.
- memory: peak RSS at 40k and 400k records with shard_rows 20,000; target
  under 450 MB at 400k and within 1.5x of the 40k peak.
- resume: killed twice (SIGKILL, then SIGTERM), rerun to the end.
- many-files, many-listed, rerun-changes: see scripts/bench_follow.py
  (many-files-local: many-files without its S3 part, on request only;
  many-listed's `rerun_*` figures: a whole rerun over a million objects).
- state-size: `_manifest.json` and `_state/` for a million one-document
  source objects (synthetic), opening them, a commit of 10 changes: see
  scripts/bench_state.py.
- pg-load: 1024-d float rows into a local Postgres (pgserver) through the
  Postgres sink, and through the README's old per-row text snippet, same
  server and rows; target at least 20,000 rows/s for the sink.
- ray: run.executor: ray, 2 tasks on a local cluster (provider: local), against
  one process: the cluster's start-up cost and the throughput (needs the ray
  extra; on 2 cores no speed-up is expected).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "scripts" / "baseline_openai.py"
BATCH = 96
CONCURRENCY = 8


def pipeline_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


@contextmanager
def serve(*flags: str) -> Iterator[str]:
    """`pipeline serve` in a subprocess; yields its URL."""
    proc = subprocess.Popen(
        pipeline_cmd("serve", "--port", "0", *flags), stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening on" not in line:
            raise RuntimeError(f"pipeline serve did not start: {line!r}")
        yield line.rsplit(" ", 1)[-1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:  # loopback only
        return json.loads(response.read())


def reset_stats(url: str) -> None:
    request = urllib.request.Request(f"{url}/stats/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
        response.read()


def write_corpus(path: Path, n: int, words: int = 12) -> None:
    """``n`` short multilingual records, one JSON object a line."""
    phrases = ["the quick brown fox", "une phrase en français", "ein deutscher Satz",
               "una frase en español", "日本語の文です", "中文句子", "русское предложение"]
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            text = " ".join(phrases[(i + k) % len(phrases)] for k in range(words // 3)) + f" #{i}"
            out.write(json.dumps({"id": f"r{i}", "text": text}, ensure_ascii=False) + "\n")


def write_config(path: Path, source: Path, sink: Path, embedding: dict[str, Any], **sections: Any) -> None:
    lines = [f"source:\n  path: {source}", "embedding:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in embedding.items()]
    lines += [f"sink:\n  path: {sink}\n  shard_rows: {sections.get('shard_rows', 100000)}"]
    lines += ["logging:\n  format: logfmt\n  level: warning"]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Measured:
    """One subprocess run: wall time, and the CPU time and peak RSS of that process alone."""

    wall_s: float
    cpu_s: float
    max_rss_mb: float
    returncode: int
    stdout: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)


def measure(cmd: list[str], work: Path) -> Measured:
    """Run ``cmd`` to its end; its own rusage comes from wait4, not from the sum over all children."""
    out_path, err_path = work / "stdout.txt", work / "stderr.txt"
    with out_path.open("w") as out, err_path.open("w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
    if proc.returncode != 0:
        sys.stderr.write(f"{' '.join(cmd[1:3])} exited {proc.returncode}:\n{err_path.read_text()[-2000:]}\n")
    return Measured(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        returncode=proc.returncode,
        stdout=out_path.read_text(),
    )


def run_pipeline(config: Path) -> Measured:
    """`pipeline run CONFIG` in a subprocess, timed, with its CPU and peak RSS."""
    m = measure(pipeline_cmd("run", str(config)), config.parent)
    sink = Path(config.read_text().split("sink:\n  path: ")[1].split("\n")[0])
    if (sink / "_manifest.json").exists():
        m.manifest = json.loads((sink / "_manifest.json").read_text())
    return m


def have_baseline() -> bool:
    if importlib.util.find_spec("openai") is None:
        print("# openai is not installed (pip install -r requirements-dev.txt): baseline skipped", file=sys.stderr)
        return False
    return True


def run_baseline(corpus: Path, url: str, *flags: str) -> tuple[Measured, int]:
    """scripts/baseline_openai.py on ``corpus``: its measurements and the rows it wrote."""
    out = corpus.with_name(corpus.stem + "-baseline.parquet")
    cmd = [sys.executable, str(BASELINE), str(corpus), str(out), "--url", url, "--model", "bench",
           "--concurrency", str(CONCURRENCY), "--batch-size", str(BATCH), *flags]
    m = measure(cmd, corpus.parent)
    rows = json.loads(m.stdout.strip().splitlines()[-1])["rows"] if m.returncode == 0 else 0
    out.unlink(missing_ok=True)
    return m, rows


@dataclass
class Row:
    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        shown = "  ".join(f"{k}={v}" for k, v in self.figures.items())
        return f"{self.scenario:<14} {shown}"


def overhead(work: Path, records: int) -> Row:
    """Short records, 1024-dim float vectors, zero-latency fake server: our own cost per record, and the script's."""
    corpus = work / "overhead.jsonl"
    write_corpus(corpus, records)
    config = work / "overhead.yaml"
    figures: dict[str, Any] = {"records": records}
    with serve("--fake", "--dimensions", "1024") as url:
        write_config(config, corpus, work / "overhead-out",
                     {"url": url, "model": "bench", "concurrency": CONCURRENCY, "encoding_format": "base64"})
        m = run_pipeline(config)
        requests = stats(url)["requests"]
        rows = m.manifest.get("totals", {}).get("rows_embedded", 0)
        figures.update({
            "rows": rows,
            "wall_s": round(m.wall_s, 2),
            "rows_per_s": round(rows / m.wall_s),
            "cpu_s_per_1k": round(m.cpu_s / max(rows, 1) * 1000, 3),
            "peak_rss_mb": round(m.max_rss_mb),
            "requests": requests,
            "exit": m.returncode,
        })
        if have_baseline():
            for prefix, flags in (("baseline", ()), ("tuned", ("--encoding-format", "base64"))):
                reset_stats(url)
                b, b_rows = run_baseline(corpus, url, *flags)
                figures.update({
                    f"{prefix}_rows": b_rows,
                    f"{prefix}_wall_s": round(b.wall_s, 2),
                    f"{prefix}_rows_per_s": round(b_rows / b.wall_s),
                    f"{prefix}_cpu_s_per_1k": round(b.cpu_s / max(b_rows, 1) * 1000, 3),
                    f"{prefix}_peak_rss_mb": round(b.max_rss_mb),
                    f"{prefix}_exit": b.returncode,
                })
            figures["wall_ratio"] = round(m.wall_s / figures["baseline_wall_s"], 3)
            figures["tuned_wall_ratio"] = round(m.wall_s / figures["tuned_wall_s"], 3)
    return Row("overhead", figures)


def _rate_figures(server: dict[str, Any], rpm: int | None, tpm: int | None) -> dict[str, Any]:
    """Utilisation of the binding budget (between the first and last answer) and the 429 share."""
    ok = server["responses"].get("200", 0)
    span = server["embedded_span_s"] or 1e-9
    figures: dict[str, Any] = {"requests": server["requests"]}
    if rpm is not None:
        figures["request_utilisation"] = round((ok - 1) / span / (rpm / 60), 3)
    if tpm is not None:
        achieved = server["total_tokens"] * (ok - 1) / max(ok, 1) / span
        figures["token_utilisation"] = round(achieved / (tpm / 60), 3)
    figures["share_429"] = round(server["responses"].get("429", 0) / max(server["requests"], 1), 4)
    return figures


def _rate_limited(work: Path, records: int, name: str, server_flags: list[str], client: dict[str, Any],
                  words: int, binding: dict[str, int]) -> Row:
    corpus = work / f"{name}.jsonl"
    write_corpus(corpus, records, words=words)
    config = work / f"{name}.yaml"
    rpm, tpm = binding.get("requests_per_minute"), binding.get("tokens_per_minute")
    # as measured before serve sent Retry-After on every 429 (a 1 s window would make each 429 cost 1 s)
    with serve("--fake", "--dimensions", "256", "--limit-window-s", "1", "--no-retry-after", *server_flags) as url:
        write_config(config, corpus, work / f"{name}-out",
                     {"url": url, "model": "bench", "concurrency": CONCURRENCY, **client})
        m = run_pipeline(config)
        figures: dict[str, Any] = {"records": records, "wall_s": round(m.wall_s, 1)}
        figures.update(_rate_figures(stats(url), rpm, tpm))
        figures["exit"] = m.returncode
        if have_baseline():
            # users leave rate limits to the SDK's retries; its default of 2 gives up mid-run here
            reset_stats(url)
            b, b_rows = run_baseline(corpus, url, "--max-retries", "10")
            figures["baseline_wall_s"] = round(b.wall_s, 1)
            figures.update({f"baseline_{k}": v for k, v in _rate_figures(stats(url), rpm, tpm).items()})
            figures["baseline_rows"] = b_rows
            figures["baseline_exit"] = b.returncode
    return Row(name, figures)


def rate_requests(work: Path, records: int) -> Row:
    """Request budget binds: the server allows 10 requests in any sliding second (600/min)."""
    return _rate_limited(work, records, "rate-requests", ["--rpm", "10"], {"requests_per_minute": 600},
                         words=12, binding={"requests_per_minute": 600})


def rate_tokens(work: Path, records: int) -> Row:
    """Token budget binds: the server allows 20,000 tokens in any sliding second (1.2M/min)."""
    return _rate_limited(
        work, records, "rate-tokens", ["--tpm", "20000", "--rpm", "1000"],
        {"tokens_per_minute": 1_200_000, "requests_per_minute": 60_000}, words=9,
        binding={"tokens_per_minute": 1_200_000},
    )


LATENCY_MS, JITTER_MS = 200.0, 50.0


def latency_bound(work: Path, records: int) -> Row:
    """Slow server (200 ms + 0..50 ms uniform): throughput against concurrency x batch / mean latency."""
    corpus = work / "latency.jsonl"
    write_corpus(corpus, records)
    config = work / "latency.yaml"
    mean_s = (LATENCY_MS + JITTER_MS / 2) / 1000  # the jitter is uniform: on average half of it
    ideal = CONCURRENCY * BATCH / mean_s

    def steady(server: dict[str, Any]) -> float:
        # between the first and the last answer: every answer but each worker's first lands in the span
        return (server["inputs_embedded"] - CONCURRENCY * BATCH) / (server["embedded_span_s"] or 1e-9)

    flags = ("--latency-ms", f"{LATENCY_MS:g}", "--jitter-ms", f"{JITTER_MS:g}")
    with serve("--fake", "--dimensions", "1024", *flags) as url:
        write_config(config, corpus, work / "latency-out",
                     {"url": url, "model": "bench", "concurrency": CONCURRENCY, "batch_size": BATCH})
        m = run_pipeline(config)
        server = stats(url)
        rows = m.manifest.get("totals", {}).get("rows_embedded", 0)
        figures: dict[str, Any] = {
            "records": records,
            "ideal_rows_per_s": round(ideal),
            "rows_per_s": round(steady(server)),
            "of_ideal": round(steady(server) / ideal, 3),
            "end_to_end_rows_per_s": round(rows / m.wall_s),  # with start-up, ramp and the final commit
            "end_to_end_of_ideal": round(rows / m.wall_s / ideal, 3),
            "exit": m.returncode,
        }
        if have_baseline():
            reset_stats(url)
            b, b_rows = run_baseline(corpus, url)
            server = stats(url)
            figures.update({
                "baseline_rows_per_s": round(steady(server)),
                "baseline_of_ideal": round(steady(server) / ideal, 3),
                "baseline_end_to_end_rows_per_s": round(b_rows / b.wall_s),
                "baseline_exit": b.returncode,
            })
    return Row("latency-bound", figures)


def memory(work: Path, records: int) -> Row:
    """Peak RSS of `pipeline run` at a tenth of ``records`` and at ``records`` (1024-dim floats, 20k-row shards)."""
    small = records // 10
    figures: dict[str, Any] = {}
    peaks = {}
    with serve("--fake", "--dimensions", "1024") as url:
        for n in (small, records):
            corpus = work / f"memory-{n}.jsonl"
            write_corpus(corpus, n)
            config = work / f"memory-{n}.yaml"
            write_config(config, corpus, work / f"memory-{n}-out",
                         {"url": url, "model": "bench", "concurrency": CONCURRENCY, "encoding_format": "base64"},
                         shard_rows=20000)
            m = run_pipeline(config)
            peaks[n] = m.max_rss_mb
            rows = m.manifest.get("totals", {}).get("rows_embedded", 0)
            figures[f"peak_rss_mb_{n // 1000}k"] = round(m.max_rss_mb)
            figures[f"rows_per_s_{n // 1000}k"] = round(rows / m.wall_s)
            figures[f"exit_{n // 1000}k"] = m.returncode
            corpus.unlink()
    figures["growth"] = round(peaks[records] / peaks[small], 2)
    return Row("memory", figures)


def _wait_commits(proc: subprocess.Popen[str], count: int) -> None:
    assert proc.stderr is not None
    seen = 0
    for line in proc.stderr:
        if "event=shard_committed" in line and "path=data/" in line:
            seen += 1
            if seen >= count:
                return


def resume(work: Path, records: int) -> Row:
    """Killed twice (SIGKILL, then SIGTERM), rerun to the end: inputs paid twice, SIGTERM exit time."""
    corpus = work / "resume.jsonl"
    write_corpus(corpus, records)
    config = work / "resume.yaml"
    with serve("--fake", "--dimensions", "256", "--latency-ms", "50") as url:
        write_config(config, corpus, work / "resume-out",
                     {"url": url, "model": "bench", "concurrency": CONCURRENCY, "batch_size": BATCH},
                     shard_rows=1000)
        config.write_text(config.read_text().replace("logging:\n  format: logfmt\n  level: warning",
                                                     "logging:\n  format: logfmt\n  level: info"))
        proc = subprocess.Popen(pipeline_cmd("run", str(config)), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        _wait_commits(proc, 3)
        proc.kill()
        proc.communicate()
        proc = subprocess.Popen(pipeline_cmd("run", str(config)), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        _wait_commits(proc, 3)
        sent = time.perf_counter()
        proc.terminate()
        proc.communicate()
        sigterm_s = time.perf_counter() - sent
        sigterm_code = proc.returncode
        m = run_pipeline(config)
        server = stats(url)
    totals = m.manifest.get("totals", {})
    return Row("resume", {
        "records": records,
        "rows_in_dataset": totals.get("rows_embedded"),
        "inputs_embedded": server["inputs_embedded"],
        "embedded_twice": server["duplicate_inputs_embedded"],
        "sigterm_exit_s": round(sigterm_s, 2),
        "sigterm_code": sigterm_code,
        "exit": m.returncode,
    })


def local(work: Path, records: int) -> Row:
    """provider: local (wordllama, in-process, 256 dimensions): the whole path with no network."""
    corpus = work / "local.jsonl"
    write_corpus(corpus, records)
    config = work / "local.yaml"
    write_config(config, corpus, work / "local-out", {"provider": "local", "model": "wordllama", "concurrency": 2})
    m = run_pipeline(config)
    rows = m.manifest.get("totals", {}).get("rows_embedded", 0)
    return Row("local", {
        "records": records,
        "rows": rows,
        "wall_s": round(m.wall_s, 2),
        "rows_per_s": round(rows / m.wall_s),
        "cpu_s_per_1k": round(m.cpu_s / max(rows, 1) * 1000, 3),
        "peak_rss_mb": round(m.max_rss_mb),
        "exit": m.returncode,
    })


def pg_load(work: Path, records: int) -> Row:
    """The Postgres sink's load rate against the old README snippet (scripts/bench_pg.py)."""
    from bench_pg import pg_load as measure_pg_load  # scripts/ is on sys.path when run as a script

    return Row("pg-load", measure_pg_load(work, records))


# --- rate budgets at real per-minute rates (issue 13): learned, shared, sliding -------------------

RATE_BATCH = 16  # small batches: many requests from a small corpus, so a minute-scale budget binds fast


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway `redis-server` on a free loopback port, persisting nothing; yields its URL."""
    import shutil
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout or ():
            if "Ready to accept connections" in line:
                break
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _minute_figures(server: dict[str, Any], rpm: int | None, tpm: int | None) -> dict[str, Any]:
    """Use of a per-minute budget and the share of requests answered 429, from the server's counters."""
    span = server["embedded_span_s"] or 1e-9
    figures: dict[str, Any] = {"requests": server["requests"], "admitted": server["admitted"]}
    if rpm is not None:
        # the first answer opens the span: the others are what the span allowed
        figures["request_use"] = round((server["admitted"] - 1) / (span * rpm / 60), 3)
    if tpm is not None:
        tokens = server["admitted_tokens"] * (server["admitted"] - 1) / max(server["admitted"], 1)
        figures["token_use"] = round(tokens / (span * tpm / 60), 3)
    figures["share_429"] = round(server["rate_limited"] / max(server["requests"], 1), 4)
    return figures


def _run_ranks(work: Path, name: str, corpus: Path, world: int, embedding: dict[str, Any]) -> dict[str, Any]:
    """``world`` `pipeline run` ranks at once on ``corpus``: wall time, exits, rows embedded and failed."""
    out = work / f"{name}-out"
    procs = []
    started = time.perf_counter()
    for rank in range(world):
        config = work / f"{name}-{rank}.yaml"
        write_config(config, corpus, out, embedding)
        text = config.read_text().replace(f"  path: {corpus}\n", f"  path: {corpus}\n  split_bytes: 65536\n", 1)
        config.write_text(text + f"run:\n  rank: {rank}\n  world_size: {world}\n")  # ranks share the file
        procs.append(subprocess.Popen(pipeline_cmd("run", str(config)), cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    exits = []
    for proc in procs:
        _, err = proc.communicate()
        exits.append(proc.returncode)
        if proc.returncode != 0:
            sys.stderr.write(f"pipeline run exited {proc.returncode}:\n{err[-2000:]}\n")
    totals = json.loads((out / "_manifest.json").read_text()).get("totals", {}) if (out / "_manifest.json").exists() else {}
    return {"wall_s": round(time.perf_counter() - started, 1), "exit": max(exits),
            "rows": totals.get("rows_embedded", 0), "rows_in_errors": totals.get("rows_failed", 0)}


def rate_nolimit(work: Path, records: int) -> Row:
    """Nothing configured; the server allows 240 requests a minute (sliding): learned from headers, then blind."""
    corpus = work / "nolimit.jsonl"
    write_corpus(corpus, records)
    figures: dict[str, Any] = {"records": records}
    client = {"model": "bench", "concurrency": CONCURRENCY, "batch_size": RATE_BATCH}
    for prefix, flags in (("headers", ()), ("blind", ("--no-ratelimit-headers", "--no-retry-after"))):
        with serve("--fake", "--dimensions", "256", "--rpm", "240", *flags) as url:
            run = _run_ranks(work, f"nolimit-{prefix}", corpus, 1, {"url": url, **client})
            figures.update({f"{prefix}_{k}": v for k, v in {**run, **_minute_figures(stats(url), 240, None)}.items()})
    if have_baseline():
        with serve("--fake", "--dimensions", "256", "--rpm", "240") as url:  # a fresh window, headers sent
            # users leave rate limits to the SDK's retries; its default of 2 gives up at once here
            b, b_rows = run_baseline(corpus, url, "--batch-size", str(RATE_BATCH), "--max-retries", "10")
            figures.update({f"baseline_{k}": v for k, v in _minute_figures(stats(url), 240, None).items()})
            figures.update({"baseline_wall_s": round(b.wall_s, 1), "baseline_rows": b_rows,
                            "baseline_exit": b.returncode})
    return Row("rate-nolimit", figures)


def rate_shared(work: Path, records: int) -> Row:
    """Three workers, one budget of 600 requests a minute (sliding): through Redis, then each pacing alone;
    with the server's x-ratelimit-* headers, then without."""
    corpus = work / "shared.jsonl"
    write_corpus(corpus, records)
    figures: dict[str, Any] = {"records": records}
    client = {"model": "bench", "concurrency": CONCURRENCY, "batch_size": RATE_BATCH, "requests_per_minute": 600}
    with redis_server() as store:
        # with x-ratelimit-* headers (Heroku, OpenAI) workers alone also hold when the server says none is left;
        # without them, only the store keeps three workers to one budget
        runs = (("store", (), {"rate_limit_store": store}), ("alone", (), {}),
                ("alone_no_headers", ("--no-ratelimit-headers",), {}))
        for prefix, flags, extra in runs:
            with serve("--fake", "--dimensions", "256", "--rpm", "600", *flags) as url:
                run = _run_ranks(work, f"shared-{prefix}", corpus, 3, {"url": url, **client, **extra})
                figures.update({f"{prefix}_{k}": v for k, v in {**run, **_minute_figures(stats(url), 600, None)}.items()})
    return Row("rate-shared", figures)


def rate_sliding(work: Path, records: int) -> Row:
    """A configured token budget of 150,000 a minute, counted by the server over a sliding minute."""
    corpus = work / "sliding.jsonl"
    write_corpus(corpus, records, words=30)
    figures: dict[str, Any] = {"records": records}
    client = {"model": "bench", "concurrency": CONCURRENCY, "batch_size": RATE_BATCH, "tokens_per_minute": 150_000}
    with serve("--fake", "--dimensions", "256", "--tpm", "150000", "--limit-mode", "sliding") as url:
        run = _run_ranks(work, "sliding", corpus, 1, {"url": url, **client})
        figures.update({**run, **_minute_figures(stats(url), None, 150_000)})
    if have_baseline():
        with serve("--fake", "--dimensions", "256", "--tpm", "150000", "--limit-mode", "sliding") as url:
            b, b_rows = run_baseline(corpus, url, "--batch-size", str(RATE_BATCH), "--max-retries", "10")
            figures.update({f"baseline_{k}": v for k, v in _minute_figures(stats(url), None, 150_000).items()})
            figures.update({"baseline_wall_s": round(b.wall_s, 1), "baseline_rows": b_rows,
                            "baseline_exit": b.returncode})
    return Row("rate-sliding", figures)


def ray_tasks(work: Path, records: int) -> Row:
    """run.executor: ray, 2 tasks on a local cluster the run starts itself, against one process.

    provider: local on both sides (the work is CPU-bound, no network): the
    figures are the cluster's start-up cost and what two tasks add up to.
    On 2 cores (3 with the driver) no speed-up is expected.
    """
    corpus = work / "ray.jsonl"
    write_corpus(corpus, records)
    embedding = {"provider": "local", "model": "wordllama", "concurrency": 2}
    one_config, ray_config = work / "one.yaml", work / "ray.yaml"
    write_config(one_config, corpus, work / "one-out", embedding)
    write_config(ray_config, corpus, work / "ray-out", embedding)
    # pieces of about 256 KB, shared out to the ranks; info level for the ray_connected line
    text = ray_config.read_text().replace(f"path: {corpus}\n", f"path: {corpus}\n  split_bytes: 262144\n", 1)
    ray_config.write_text(text.replace("level: warning", "level: info") + "run:\n  executor: ray\n  world_size: 2\n")
    one = run_pipeline(one_config)
    two = run_pipeline(ray_config)
    log = (work / "stderr.txt").read_text()
    connected = next((line for line in log.splitlines() if "event=ray_connected" in line), "")
    startup_s = float(connected.split("startup_s=")[1].split()[0]) if "startup_s=" in connected else None
    one_rows = one.manifest.get("totals", {}).get("rows_embedded", 0)
    two_rows = two.manifest.get("totals", {}).get("rows_embedded", 0)
    working_s = two.wall_s - (startup_s or 0.0)
    return Row("ray", {
        "records": records,
        "one_wall_s": round(one.wall_s, 2),
        "one_rows_per_s": round(one_rows / one.wall_s),
        "ray_wall_s": round(two.wall_s, 2),
        "ray_startup_s": startup_s,
        "ray_rows_per_s": round(two_rows / two.wall_s),
        "ray_rows_per_s_after_startup": round(two_rows / working_s) if working_s > 0 else None,
        "speedup": round(one.wall_s / two.wall_s, 2),
        "rows": [one_rows, two_rows],
        "exit": [one.returncode, two.returncode],
    })


SCENARIOS: dict[str, Callable[[Path, int], Row]] = {
    "overhead": overhead,
    "local": local,
    "rate-requests": rate_requests,
    "rate-tokens": rate_tokens,
    "rate-nolimit": rate_nolimit,
    "rate-shared": rate_shared,
    "rate-sliding": rate_sliding,
    "latency-bound": latency_bound,
    "memory": memory,
    "resume": resume,
    "pg-load": pg_load,
    "ray": ray_tasks,
}
# scenarios of a dataset that follows its source (scripts/bench_follow.py)
from bench_follow import many_files, many_files_local, many_listed, rerun_changes  # noqa: E402

SCENARIOS.update({"many-files": many_files, "many-files-local": many_files_local, "many-listed": many_listed,
                  "rerun-changes": rerun_changes})
from bench_state import state_size  # noqa: E402

SCENARIOS["state-size"] = state_size
ON_REQUEST = {"many-files-local"}  # a part of another scenario: not run by default
DEFAULT_RECORDS = {
    "overhead": 60_000,
    "local": 60_000,
    "rate-requests": 28_800,
    "rate-tokens": 40_000,
    "rate-nolimit": 5_000,  # 313 requests: about 80 s at 240 a minute, for each of three clients
    "rate-shared": 16_000,  # 1,000 requests: 100 s at 600 a minute, for each of three runs
    "rate-sliding": 5_000,  # about 310,000 tokens by serve's count: about two minutes at 150,000 a minute
    "latency-bound": 40_000,
    "memory": 400_000,  # and a tenth of it
    "resume": 10_000,
    "many-files": 30_000,
    "many-files-local": 30_000,
    "many-listed": 1_000_000,
    "rerun-changes": 20_000,
    "state-size": 1_000_000,
    "pg-load": 100_000,
    "ray": 60_000,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", choices=[*SCENARIOS, []], help="which to run (default: all)")
    parser.add_argument("--records", type=int, help="override the number of records")
    parser.add_argument("--json", action="store_true", help="print figures as JSON lines")
    args = parser.parse_args()
    chosen = args.scenarios or [name for name in SCENARIOS if name not in ON_REQUEST]
    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} cores", file=sys.stderr)
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            row = SCENARIOS[name](Path(tmp), args.records or DEFAULT_RECORDS[name])
        print(json.dumps({"scenario": row.scenario, **row.figures}) if args.json else row.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
