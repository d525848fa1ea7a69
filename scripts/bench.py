#!/usr/bin/env python3
"""Benchmarks for `pipeline`: each scenario prints one table row.

    python scripts/bench.py                 # every scenario
    python scripts/bench.py overhead        # one scenario
    python scripts/bench.py --json          # machine-readable figures

Every scenario runs the real `pipeline run` as a subprocess against a real
`pipeline serve` on a loopback port, on a corpus generated in a temporary
directory, and reads its figures from the dataset's manifest, the server's
/stats counters and the process's resource usage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def write_corpus(path: Path, n: int, words: int = 12) -> None:
    """``n`` short multilingual records, one JSON object a line."""
    phrases = ["the quick brown fox", "une phrase en français", "ein deutscher Satz",
               "una frase en español", "日本語の文です", "中文句子", "русское предложение"]
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            text = " ".join(phrases[(i + k) % len(phrases)] for k in range(words // 3)) + f" #{i}"
            out.write(json.dumps({"id": f"r{i}", "text": text}, ensure_ascii=False) + "\n")


def write_config(path: Path, source: Path, sink: Path, embedding: dict[str, Any], **sections: dict) -> None:
    lines = [f"source:\n  path: {source}", "embedding:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in embedding.items()]
    lines += [f"sink:\n  path: {sink}\n  shard_rows: {sections.get('shard_rows', 100000)}"]
    lines += ["logging:\n  format: logfmt\n  level: warning"]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    manifest: dict[str, Any]
    returncode: int


def run_pipeline(config: Path) -> Measured:
    """`pipeline run CONFIG` in a subprocess, timed, with its CPU and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(pipeline_cmd("run", str(config)), cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-2000:])
    sink = Path(config.read_text().split("sink:\n  path: ")[1].split("\n")[0])
    manifest = json.loads((sink / "_manifest.json").read_text()) if (sink / "_manifest.json").exists() else {}
    return Measured(
        wall_s=wall,
        cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        max_rss_mb=after.ru_maxrss / 1024,
        manifest=manifest,
        returncode=proc.returncode,
    )


@dataclass
class Row:
    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        shown = "  ".join(f"{k}={v}" for k, v in self.figures.items())
        return f"{self.scenario:<14} {shown}"


def overhead(work: Path, records: int) -> Row:
    """Short records, 1024-dim float vectors, zero-latency fake server: our own cost per record."""
    corpus = work / "overhead.jsonl"
    write_corpus(corpus, records)
    config = work / "overhead.yaml"
    with serve("--fake", "--dimensions", "1024") as url:
        write_config(config, corpus, work / "overhead-out",
                     {"url": url, "model": "bench", "concurrency": 8, "encoding_format": "base64"})
        m = run_pipeline(config)
        server = stats(url)
    rows = m.manifest.get("totals", {}).get("rows_embedded", 0)
    return Row("overhead", {
        "records": records,
        "rows": rows,
        "wall_s": round(m.wall_s, 2),
        "rows_per_s": round(rows / m.wall_s),
        "cpu_s_per_1k": round(m.cpu_s / max(rows, 1) * 1000, 3),
        "requests": server["requests"],
        "exit": m.returncode,
    })


def _rate_limited(work: Path, records: int, name: str, server_flags: list[str], client: dict[str, Any],
                  words: int) -> Row:
    corpus = work / f"{name}.jsonl"
    write_corpus(corpus, records, words=words)
    config = work / f"{name}.yaml"
    with serve("--fake", "--dimensions", "256", "--limit-window-s", "1", *server_flags) as url:
        write_config(config, corpus, work / f"{name}-out",
                     {"url": url, "model": "bench", "concurrency": 8, **client})
        m = run_pipeline(config)
        server = stats(url)
    ok = server["responses"].get("200", 0)
    span = server["embedded_span_s"] or 1e-9
    figures: dict[str, Any] = {"records": records, "wall_s": round(m.wall_s, 1), "requests": server["requests"]}
    if "requests_per_minute" in client:
        allowed = client["requests_per_minute"] / 60
        figures["request_utilisation"] = round((ok - 1) / span / allowed, 3)
    if "tokens_per_minute" in client:
        allowed = client["tokens_per_minute"] / 60
        achieved = server["total_tokens"] * (ok - 1) / max(ok, 1) / span
        figures["token_utilisation"] = round(achieved / allowed, 3)
    figures["share_429"] = round(server["responses"].get("429", 0) / max(server["requests"], 1), 4)
    figures["exit"] = m.returncode
    return Row(name, figures)


def rate_requests(work: Path, records: int) -> Row:
    """Request budget binds: the server allows 10 requests in any sliding second (600/min)."""
    return _rate_limited(work, records, "rate-requests", ["--rpm", "10"], {"requests_per_minute": 600}, words=12)


def rate_tokens(work: Path, records: int) -> Row:
    """Token budget binds: the server allows 20,000 tokens in any sliding second (1.2M/min)."""
    return _rate_limited(
        work, records, "rate-tokens", ["--tpm", "20000", "--rpm", "1000"],
        {"tokens_per_minute": 1_200_000, "requests_per_minute": 60_000}, words=9,
    )


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
                     {"url": url, "model": "bench", "concurrency": 8, "batch_size": 96}, shard_rows=1000)
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


SCENARIOS: dict[str, Callable[[Path, int], Row]] = {
    "overhead": overhead,
    "rate-requests": rate_requests,
    "rate-tokens": rate_tokens,
    "resume": resume,
}
DEFAULT_RECORDS = {"resume": 10_000, "overhead": 60_000, "rate-requests": 28_800, "rate-tokens": 40_000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", choices=[*SCENARIOS, []], help="which to run (default: all)")
    parser.add_argument("--records", type=int, help="override the number of records")
    parser.add_argument("--json", action="store_true", help="print figures as JSON lines")
    args = parser.parse_args()
    chosen = args.scenarios or list(SCENARIOS)
    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} cores", file=sys.stderr)
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            row = SCENARIOS[name](Path(tmp), args.records or DEFAULT_RECORDS[name])
        print(json.dumps({"scenario": row.scenario, **row.figures}) if args.json else row.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
