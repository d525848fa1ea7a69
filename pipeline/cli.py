"""The ``pipeline`` command line: run, validate, inspect, retry-failed, serve, search.

Every error a user can cause ends here as one plain line on stderr and an
exit code (2 for config and command-line problems, 3 for a fatal API error);
anything else is a bug and is allowed to crash loudly.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import sys
from typing import TYPE_CHECKING, Sequence

import anyio

from pipeline import __version__
from pipeline.config import Config, load_config
from pipeline.errors import EXIT_SIGINT, EXIT_SIGPIPE, PipelineError, SinkError
from pipeline.logs import LogSetup, configure, mask_secrets, redact_url

if TYPE_CHECKING:
    from pipeline.jobs.outcome import RunResult


def _fail(message: str, code: int, secrets: Sequence[str | None] = ()) -> int:
    message = mask_secrets(message, [secret for secret in secrets if secret])
    print(f"pipeline: error: {redact_url(message)}", file=sys.stderr)
    return code


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the job's YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key by dotted path (repeatable), e.g. embedding.concurrency=16",
    )


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Turn a pile of documents into a vector dataset through an embeddings API.",
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the job (resumes where an earlier run stopped)")
    _add_config_args(p)
    p.add_argument("--fresh", action="store_true",
                   help="delete the dataset at sink.path first and start over (e.g. after changing the model)")
    p = sub.add_parser("validate", help="check the config and estimate the job; calls no API")
    _add_config_args(p)
    p = sub.add_parser("inspect", help="print a dataset's shards, rows, failures and token usage")
    p.add_argument("dataset", help="the dataset path (local path or fsspec URL), or a config file (its sink)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to fsspec (repeatable)")
    p.add_argument("--rebuild", action="store_true",
                   help="rewrite _manifest.json from the per-rank parts in _manifests/ first")
    p = sub.add_parser("retry-failed", help="embed again the rows in errors/ and move successes to data/")
    _add_config_args(p)
    p = sub.add_parser("search", help="embed a query and print the nearest rows of the config's sink")
    _add_config_args(p)
    p.add_argument("query", help="the text to look for")
    p.add_argument("-k", type=int, default=5, help="how many rows to print (default 5)")
    p = sub.add_parser("serve", help="a local embeddings API server for development and tests")
    if "serve" in (argv or ()):  # its flags cost an import the other commands do not need
        from pipeline.serve import app as server

        server.add_arguments(p)
    return parser


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def _secrets(cfg: Config) -> list[str]:
    """What no line may show: the API key, and the password in a ``postgresql://`` sink.path."""
    from pipeline.dataset.postgres_schema import url_password

    return [cfg.api_key or "", url_password(cfg.sink.path) or ""]


def _report(result: RunResult, logs: LogSetup) -> int:
    """Print how a run ended (one line, secrets masked), and return its exit code."""
    if result.message:
        prefix = "error: " if result.exit_code else ""
        print(f"pipeline: {prefix}{logs.redactor.text(result.message)}", file=sys.stderr)
    return result.exit_code


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_run(args: argparse.Namespace) -> int:
    """``pipeline run``."""
    from pipeline.jobs.executor import make_executor

    cfg = _load(args)
    logs = configure(cfg.logging.level, cfg.logging.format, secrets=_secrets(cfg))
    # until the run's own handler is listening, SIGTERM and SIGHUP still mean "stop": exit 143/129, not -15
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    try:
        result = anyio.run(lambda: make_executor(cfg).run(cfg, logs=logs, fresh=args.fresh))
    except PipelineError as exc:
        return _fail(str(exc), exc.exit_code, _secrets(cfg))
    finally:
        if logs.console is not None:
            logs.console.clear()
    return _report(result, logs)


def cmd_validate(args: argparse.Namespace) -> int:
    """``pipeline validate``: counts and estimates, no API call; exits as a run would begin or end."""
    from pipeline.jobs.validate import validate

    cfg = _load(args)
    # what the listing warns of (a sink inside the source) goes to stderr as the config's logging says,
    # not through structlog's unconfigured default onto stdout, amid the report
    configure(cfg.logging.level, cfg.logging.format, secrets=_secrets(cfg))
    report = validate(cfg, args.config)
    print("\n".join(report.lines))
    for problem in report.problems:
        _fail(problem, report.exit_code)
    return report.exit_code


def _option_value(text: str) -> object:
    """A ``--storage-option`` value: ``true``/``false``, ``null`` and numbers as such, the rest as text.

    (``anon=false`` must reach s3fs as False: the string "false" is truthy.)
    Only values that read back the same are converted, so a secret such as
    ``0x1F`` or ``yes`` stays the text it is.
    """
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if value is None:
        return None if text.strip() in ("null", "~") else text
    if isinstance(value, (bool, int, float)) and str(value).lower() == text.strip().lower():
        return value
    return text


def cmd_inspect(args: argparse.Namespace) -> int:
    """``pipeline inspect``: a dataset as a table, read from its files."""
    from pipeline.dataset.inspect import failures_by_type, render_summary, summarize
    from pipeline.dataset.manifest import rebuild
    from pipeline.storage import Location

    config_options: dict[str, object] = {}
    if args.dataset.endswith((".yaml", ".yml")):  # a config: inspect its sink
        cfg = load_config(args.dataset)
        if cfg.sink.path.startswith(("postgresql://", "postgres://")):
            from pipeline.dataset.postgres_inspect import render_postgres, summarize_postgres

            pg = summarize_postgres(cfg.sink)
            print(render_postgres(pg))
            return 0 if pg["ok"] else 1
        args.dataset, config_options = cfg.sink.path, dict(cfg.sink.storage_options)
    options = config_options
    for item in args.storage_option:
        key, _, value = item.partition("=")
        options[key] = _option_value(value)
    where = Location.open(args.dataset, options, role="dataset")
    # a bad --storage-option is a TypeError only when s3fs first connects: anything is translated
    with where.errors("cannot read the dataset", catch=(Exception,)):
        if args.rebuild and rebuild(where.fs, where.root) is None:
            raise SinkError(f"{args.dataset} has no per-rank manifests in _manifests/ to rebuild from")
        summary = summarize(where.fs, where.root)
        by_type = failures_by_type(where.fs, where.root, summary)
    summary["path"] = where.url_of(where.root)  # s3://bucket/prefix, as the user wrote it
    print(render_summary(summary, by_type))
    return 0 if summary["ok"] else 1


def cmd_retry_failed(args: argparse.Namespace) -> int:
    """``pipeline retry-failed``: embed again the rows in errors/."""
    from pipeline.jobs.retry_failed import retry_failed

    cfg = _load(args)
    if cfg.sink.path.startswith(("postgresql://", "postgres://")):
        return _fail("retry-failed works on file datasets for now, not on a Postgres sink (sink.path)", 2)
    logs = configure(cfg.logging.level, cfg.logging.format, secrets=_secrets(cfg))
    result = anyio.run(lambda: retry_failed(cfg))
    return _report(result, logs)


def cmd_search(args: argparse.Namespace) -> int:
    """``pipeline search``: the rows nearest to a query."""
    from pipeline.jobs.search import render_hits, search

    cfg = _load(args)
    if args.k < 1:
        return _fail("-k must be at least 1", 2)
    configure("warning", cfg.logging.format, secrets=_secrets(cfg))
    print(render_hits(search(cfg, args.query, args.k)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``pipeline serve``."""
    from pipeline.serve import app as server

    return server.main(args)


COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "inspect": cmd_inspect,
    "retry-failed": cmd_retry_failed,
    "serve": cmd_serve,
    "search": cmd_search,
}


#: 128 + SIGPIPE: what a shell reports for a writer whose reader quit (``yes | head -1``)
def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (and not some other broken pipe)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False  # not a real stream: the broken pipe was something else's
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipeline`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        try:
            code = COMMANDS[args.command](args)
            sys.stdout.flush()  # a reader that quit (| head) shows here, not as a warning at exit
            return code
        except BrokenPipeError:
            if not _stdout_gone():
                raise
            # as Python's docs advise (signal module, "Note on SIGPIPE"): stdout goes to
            # devnull, so the flush at exit does not fail again, and we exit quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_SIGPIPE
        except BaseExceptionGroup as group:
            # a stage's error surfaces wrapped by its task group: handle the first one
            leaf: BaseException = group
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            if isinstance(leaf, (PipelineError, KeyboardInterrupt)):
                raise leaf from group
            raise
    except PipelineError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return EXIT_SIGINT


def run() -> None:
    """Console-script shim: exit with :func:`main`'s code, without the interpreter's finalisation.

    Once a command has returned, everything it owes is written (commits,
    the lease, the report): what is left is native thread pools torn down at
    exit, which now and then abort a finished command ("terminate called
    without an active exception", exit -6: apache/arrow#34314, #39162). So the
    process ends here, after flushing what Python still buffers.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader gone, or a stream closed: nothing more to say there
            pass
    logging.shutdown()
    os._exit(code)
