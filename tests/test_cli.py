"""The command line, as a user runs it: exit codes, one-line errors, no secrets."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, pipeline_cmd, run_cli, serve_process

KEY = "sk-test-0123456789abcdef"


def write_job(tmp_path: Path, url: str = "http://127.0.0.1:9", **extra: str) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    lines = [json.dumps({"id": f"r{i}", "text": f"record number {i}"}) for i in range(50)]
    (tmp_path / "in" / "docs.jsonl").write_text("\n".join(lines) + "\n")
    body = (
        f"source:\n  path: {tmp_path / 'in'}\n"
        f"embedding:\n  url: {url}\n  api_key: ${{TEST_KEY}}\n  max_attempts: 2\n  timeout_s: 5\n"
        f"sink:\n  path: {tmp_path / 'out'}\n"
        "logging:\n  format: logfmt\n"
    )
    job = tmp_path / "job.yaml"
    job.write_text(body)
    return job


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_key_exit_2(tmp_path: Path) -> None:
    """A typo in the config exits 2 with one line naming file, line and dotted key."""
    job = write_job(tmp_path)
    job.write_text(job.read_text().replace("  max_attempts: 2\n", "  max_atempts: 2\n"))
    result = run_cli("run", str(job))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"{job}:", "embedding.max_atempts", "unknown key")


def test_bad_set_value_exit_2(tmp_path: Path) -> None:
    """A --set with a wrong type exits 2 and names the key."""
    result = run_cli("validate", str(write_job(tmp_path)), "--set", "embedding.batch_size=500")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "embedding.batch_size")


def test_missing_source_exit_2(tmp_path: Path) -> None:
    """A source path that matches nothing exits 2 with one line naming it."""
    result = run_cli("run", str(write_job(tmp_path)), "--set", f"source.path={tmp_path}/nothing/*.jsonl")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "nothing")


def test_validate_sample_counts_without_api() -> None:
    """validate on the sample corpus prints counts and estimates and calls no API."""
    result = run_cli("validate", "configs/local.yaml", "--set", "embedding.provider=http",
                     "--set", "embedding.url=http://127.0.0.1:9")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "records: 300" in out and "chunks: 308" in out
    assert "estimated tokens:" in out and "requests: 4" in out


def test_rejected_key_exit_3_fast_and_secret(tmp_path: Path) -> None:
    """A rejected key stops the run in under 10 s with exit 3, and the key is printed nowhere."""
    with serve_process("--fake", "--api-key", "the-right-key") as url:
        job = write_job(tmp_path, url)
        started = time.monotonic()
        result = run_cli("run", str(job), env={"TEST_KEY": KEY})
        elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert elapsed < 10
    assert "embedding API rejected the key (401)" in result.stderr
    assert KEY not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_unreachable_endpoint_exit_3(tmp_path: Path) -> None:
    """An endpoint nobody listens on ends the run with exit 3 and one clear line."""
    result = run_cli("run", str(write_job(tmp_path, "http://127.0.0.1:9")), env={"TEST_KEY": KEY})
    assert result.returncode == 3
    assert "unreachable" in result.stderr and KEY not in result.stderr


def test_run_then_inspect(tmp_path: Path) -> None:
    """run against pipeline serve writes a dataset that inspect reads back."""
    with serve_process("--fake", "--dimensions", "16") as url:
        result = run_cli("run", str(write_job(tmp_path, url)), env={"TEST_KEY": KEY})
    assert result.returncode == 0, result.stderr
    assert "event=run_finished" in result.stderr and KEY not in result.stderr
    shown = run_cli("inspect", str(tmp_path / "out"))
    assert shown.returncode == 0, shown.stderr
    assert "rows embedded: 50" in shown.stdout


def test_local_sample_job(tmp_path: Path) -> None:
    """The README's first command: the local provider embeds the sample corpus offline."""
    result = run_cli("run", str(ROOT / "configs/local.yaml"), "--set", f"sink.path={tmp_path / 'local'}")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "local" / "_manifest.json").read_text())
    assert manifest["totals"]["rows_embedded"] == 308 and manifest["totals"]["rows_failed"] == 2
    assert manifest["dimensions"] == 256


def test_validate_masks_credentials_in_the_endpoint(tmp_path: Path) -> None:
    """validate prints an endpoint URL carrying user:key@ with the credentials masked."""
    result = run_cli("validate", str(write_job(tmp_path, "http://user:KEY-0123@127.0.0.1:9")))
    assert result.returncode == 0, result.stderr
    assert "KEY-0123" not in result.stdout + result.stderr
    assert "http://***@127.0.0.1:9" in result.stdout


def test_bad_scheme_error_masks_credentials(tmp_path: Path) -> None:
    """The config error for a non-http URL does not print the credentials in it."""
    result = run_cli("validate", str(write_job(tmp_path, "ftp://user:KEY-0123@host")))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "embedding.url", "ftp://***@host")
    assert "KEY-0123" not in result.stderr


def run_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``pipeline ARGS`` with stdout a pipe whose reader is already gone (``| head`` that has quit)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(pipeline_cmd(*args), stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=120, cwd=ROOT)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", ["validate", "inspect"])
def test_closed_stdout_exits_quietly(tmp_path: Path, command: str) -> None:
    """validate and inspect piped into a reader that quit exit 141 (128 + SIGPIPE) without a traceback."""
    if command == "inspect":
        assert run_cli("run", str(ROOT / "configs/local.yaml"), "--set", f"sink.path={tmp_path / 'ds'}").returncode == 0
        result = run_into_closed_pipe("inspect", str(tmp_path / "ds"))
    else:
        result = run_into_closed_pipe("validate", "configs/local.yaml")
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""


def test_other_broken_pipes_still_crash(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """A BrokenPipeError while stdout is fine is a bug, and is not silenced as a closed stdout."""
    from pipeline import cli

    def broken(_args: object) -> int:
        raise BrokenPipeError("a socket, not stdout")

    monkeypatch.setitem(cli.COMMANDS, "validate", broken)
    with pytest.raises(BrokenPipeError):
        cli.main(["validate", "job.yaml"])


def test_alias_bomb_exit_2_one_line(tmp_path: Path) -> None:
    """A config holding an alias bomb (a million values expanded) exits 2 with one line naming the file."""
    # six levels, not the field's nine: should the guard ever break, this must not eat the machine's memory
    levels = ['a0: &a0 "lol"'] + [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]" for n in range(1, 7)]
    job = tmp_path / "bomb.yaml"
    job.write_text("\n".join(levels) + "\n")
    result = run_cli("validate", str(job), timeout=60)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"{job}: YAML aliases expand to more than")


def test_misspelled_section_exit_2_names_it(tmp_path: Path) -> None:
    """A misspelled section exits 2 with one line naming it as the unknown key."""
    job = write_job(tmp_path)
    job.write_text(job.read_text().replace("embedding:", "embeding:"))
    result = run_cli("validate", str(job))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"{job}:", "embeding: unknown key (did you mean embedding?)")


def test_a_finished_command_skips_the_interpreters_finalisation(tmp_path: Path) -> None:
    """Once a command returned, the process ends without Python's finalisation (where Arrow's thread pools,
    torn down at exit, now and then abort a finished command with -6), its output flushed first."""
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('finalised\\n'))\n"
        "sys.argv = ['pipeline', 'validate', 'configs/local.yaml']\n"
        "from pipeline.cli import run\n"
        "run()\n"
    )
    result = subprocess.run([*pipeline_cmd()[:1], "-c", probe], capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "finalised" not in result.stderr
    assert "tokens" in result.stdout  # the whole report reached the pipe: flushed before the process ended


def test_a_short_throwaway_key_does_not_garble_errors(tmp_path: Path) -> None:
    """With api_key: x (a local server needs none), the one-line error names the missing path whole: a
    short secret is masked where it stands alone, not inside every word that holds its letters."""
    job = write_job(tmp_path)
    result = run_cli("run", str(job), "--set", f"source.path={tmp_path / 'nonexist'}", env={"TEST_KEY": "x"})
    assert result.returncode != 0
    assert_one_line_error(result.stderr, str(tmp_path / "nonexist"))


BROKEN_YAML = {
    "indent": ("  path: x.jsonl\n   format: jsonl\n", ":3:4: invalid YAML: 'format' is indented deeper than 'path'"),
    "tab": ("\tpath: x.jsonl\n", ":2:1: invalid YAML: a tab character"),
    "quote": ('  path: "x.jsonl\n', ":2:9: invalid YAML: the quote '\"' opened here is never closed"),
}


@pytest.mark.parametrize("command", ["run", "validate", "inspect"])
@pytest.mark.parametrize("mistake", list(BROKEN_YAML))
def test_broken_yaml_exit_2_one_plain_line(tmp_path: Path, command: str, mistake: str) -> None:
    """Bad indentation, a tab or an unclosed quote: exit 2, one line naming file, line, column and the
    mistake in plain words, not PyYAML's several lines."""
    body, expected = BROKEN_YAML[mistake]
    job = tmp_path / "bad.yaml"
    job.write_text("source:\n" + body + f"sink:\n  path: {tmp_path / 'out'}\n")
    result = run_cli(command, str(job))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"pipeline: error: {job}{expected}")


def test_a_file_where_the_sink_belongs_exit_2_as_validate_says(tmp_path: Path) -> None:
    """sink.path naming a file: the run refuses in validate's words before taking its lease (it said
    "cannot write the lease .../_locks/00000.json: [Errno 20] Not a directory")."""
    in_the_way = tmp_path / "out.txt"
    in_the_way.write_text("not a dataset\n")
    job = write_job(tmp_path)
    for command in ("run", "validate"):
        result = run_cli(command, str(job), "--set", f"sink.path={in_the_way}")
        assert result.returncode == 2
        assert_one_line_error(result.stderr, f"pipeline: error: sink.path {in_the_way}: exists and is not a directory")
    assert_one_line_error(run_cli("run", str(job), "--set", f"sink.path={in_the_way}/ds").stderr,
                          f"sink.path {in_the_way}/ds: cannot be created: {in_the_way} is a file")


def test_inspect_a_file_says_it_is_not_a_dataset(tmp_path: Path) -> None:
    """`pipeline inspect docs.jsonl` (or a config not ending in .yaml) says it is a file, not errno 20."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "a"}\n')
    result = run_cli("inspect", str(docs))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"no dataset at {docs}: it is a file")


def test_an_empty_source_path_exit_2_not_the_working_directory(tmp_path: Path) -> None:
    """--set source.path= (or path: "") is refused by name; it listed, and a run would embed, the directory it
    was started in."""
    result = run_cli("validate", str(write_job(tmp_path)), "--set", "source.path=")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "pipeline: error: --set source.path=: source.path: must not be empty")


def test_validate_keeps_log_warnings_off_its_report(tmp_path: Path) -> None:
    """A warning the listing logs (sink inside the source) goes to stderr in the config's format, not onto
    stdout amid the report in structlog's unconfigured default."""
    job = write_job(tmp_path)
    result = run_cli("validate", str(job), "--set", f"sink.path={tmp_path / 'in' / 'out'}")
    assert result.returncode == 0, result.stderr
    assert "sink_inside_source" not in result.stdout and result.stdout.startswith("config: ok")
    assert "at=warning event=sink_inside_source" in result.stderr


def test_inspect_says_what_a_dataset_does_not_know_instead_of_none(tmp_path: Path) -> None:
    """A dataset whose every record failed has no dimensions yet, and input_type: null sends none: inspect says
    so in words, not "None"."""
    with serve_process("--fake", "--dimensions", "8") as url:
        result = run_cli("run", str(write_job(tmp_path, url)), "--set", "source.text_field=body",
                         "--set", "embedding.input_type=null", env={"TEST_KEY": KEY})
    assert result.returncode == 1, result.stderr  # every record lacks the field: all failed
    shown = run_cli("inspect", str(tmp_path / "out"))
    assert shown.returncode == 0, shown.stderr
    assert "None" not in shown.stdout
    assert "input_type: not sent" in shown.stdout and "dimensions: not known yet (no vector written)" in shown.stdout
