"""Log lines: logfmt or JSON, one event a line, never the key."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import structlog

from conftest import run_cli, serve_process
from pipeline.logs import configure, get_logger, mask_secrets

KEY = "sk-live-9f8e7d6c5b4a"
LOGFMT_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\.)*"|[^\s"]+)')


def parse_logfmt(line: str) -> dict[str, str]:
    """Parse one logfmt line; raises if anything is left over, or a key has no value (``cost_usd=``)."""
    pairs = LOGFMT_PAIR.findall(line)
    rebuilt = " ".join(f"{k}={v}" for k, v in pairs)
    assert rebuilt == line.strip(), f"not logfmt: {line!r}"
    return {k: v.strip('"') for k, v in pairs}


def write_job(tmp_path: Path, url: str, fmt: str) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    lines = [json.dumps({"id": f"r{i}", "text": f"record {i} with \"quotes\" and = signs"}) for i in range(300)]
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(lines) + "\n{broken\n")
    job = tmp_path / "job.yaml"
    job.write_text(
        f"source:\n  path: {tmp_path / 'in'}\n"
        f"embedding:\n  url: {url}\n  api_key: ${{TEST_KEY}}\n  batch_size: 10\n  max_attempts: 20\n"
        f"sink:\n  path: {tmp_path / 'out'}\n  shard_rows: 50\n"
        f"logging:\n  format: {fmt}\n  level: debug\n"
    )
    return job


def test_logfmt_lines_parse_and_hide_the_key(tmp_path: Path) -> None:
    """Off a terminal every line is logfmt, under 10 KB, with a run_finished summary, and no key."""
    with serve_process("--fake", "--dimensions", "8", "--api-key", KEY, "--fail-429", "0.2",
                       "--fault-retry-after", "0") as url:
        result = run_cli("run", str(write_job(tmp_path, url, "logfmt")), env={"TEST_KEY": KEY})
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    events = [parse_logfmt(line) for line in lines]
    assert all(len(line.encode()) < 10_000 for line in lines)
    assert {"run_started", "shard_committed", "request_retried", "run_finished"} <= {e["event"] for e in events}
    finished = [e for e in events if e["event"] == "run_finished"][0]
    assert finished["records"] == "301" and int(finished["throttled"]) > 0
    assert "cost_usd" not in finished  # no embedding.usd_per_million_tokens: nothing to say
    assert KEY not in result.stderr and KEY not in result.stdout


def test_json_format(tmp_path: Path) -> None:
    """logging.format: json writes one JSON object per line."""
    with serve_process("--fake", "--dimensions", "8") as url:
        result = run_cli("run", str(write_job(tmp_path, url, "json")), env={"TEST_KEY": KEY})
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert events[-1]["event"] == "run_finished" and events[-1]["rows"] == 300
    assert "cost_usd" not in events[-1]  # absent, as in logfmt, rather than null
    assert all(value is not None for event in events for value in event.values())


def test_priced_run_logs_its_cost(tmp_path: Path) -> None:
    """With embedding.usd_per_million_tokens set, run_finished says what the run cost."""
    job = write_job(tmp_path, "http://127.0.0.1:1", "logfmt")
    with serve_process("--fake", "--dimensions", "8") as url:
        result = run_cli("run", str(job), "--set", f"embedding.url={url}",
                         "--set", "embedding.usd_per_million_tokens=0.1", env={"TEST_KEY": KEY})
    assert result.returncode == 0, result.stderr
    finished = [e for e in map(parse_logfmt, result.stderr.splitlines()) if e["event"] == "run_finished"][0]
    assert float(finished["cost_usd"]) > 0


@pytest.mark.parametrize("fmt", ["logfmt", "json", "live"])
def test_fields_without_a_value_are_left_out(fmt: str) -> None:
    """A field whose value is None (file_resumed's seek_offset without a checkpoint) is absent in every format."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal() if fmt == "live" else io.StringIO()
    configure("info", "auto" if fmt == "live" else fmt, stream=out)
    try:
        get_logger().info("file_resumed", file="a.jsonl", after=120, seek_offset=None)
    finally:
        structlog.reset_defaults()
    line = out.getvalue().strip().split("\x1b[2K")[-1]
    fields = json.loads(line) if fmt == "json" else parse_logfmt(line.replace("file_resumed ", "event=file_resumed "))
    assert "seek_offset" not in fields and fields["after"] in (120, "120")


def test_redaction_masks_secrets_anywhere() -> None:
    """A secret inside any field value, even nested in a message, is masked."""
    out = io.StringIO()
    configure("info", "logfmt", secrets=[KEY], stream=out)
    try:
        get_logger().info("request_failed", reason=f"Bearer {KEY} refused", detail={"k": KEY})
    finally:
        structlog.reset_defaults()
    text = out.getvalue()
    assert KEY not in text and "***" in text


def test_credentials_in_any_url_are_masked_in_logs() -> None:
    """A URL with userinfo in any log field (a sink or endpoint URL) is logged with it masked."""
    import io

    from pipeline.logs import configure, get_logger, mask_secrets

    stream = io.StringIO()
    configure("info", "logfmt", stream=stream)
    get_logger().info("run_started", sink="postgresql://app:s3cr3t@db.example:5432/x", source="s3://b/docs/")
    line = stream.getvalue()
    assert "s3cr3t" not in line and "postgresql://***@db.example:5432/x" in line and "s3://b/docs/" in line


def test_short_secrets_are_masked_as_words_long_ones_anywhere() -> None:
    """A short secret is masked where it stands alone (never inside other words); a real key anywhere."""
    assert mask_secrets("not found: /data/nonexist; run.max_removed_fraction", ["x"]) == (
        "not found: /data/nonexist; run.max_removed_fraction")
    assert mask_secrets("Authorization: Bearer x, key=x", ["x"]) == "Authorization: Bearer ***, key=***"
    assert mask_secrets("not found: texts/x/ex.jsonl, /data/x.jsonl", ["x"]) == "not found: texts/x/ex.jsonl, /data/x.jsonl"
    assert mask_secrets(f"token{KEY}tail", [KEY]) == "token***tail"
