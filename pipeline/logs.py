"""Logging: structlog events as logfmt or JSON lines, a live line on a terminal.

Events are snake_case verbs with bound context (``shard_committed rows=…``).
Off a terminal every event is one logfmt line (Heroku's log tools parse
them) or one JSON object with ``logging.format: json``. On a terminal, events
are printed readably and a progress line redraws in place. A redaction
processor replaces every secret it was given, wherever it appears. A field
whose value is ``None`` is left out of every format.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson
import structlog

MAX_LINE = 8000  # Heroku drops log lines over 10 KB


WHOLE_WORD_BELOW = 16  # a secret shorter than this is masked only where it stands as a word of its own


def mask_secrets(text: str, secrets: list[str]) -> str:
    """``text`` with every secret in it masked (``***``).

    A short secret (a throwaway key such as ``x`` or ``test`` against a
    local server) is masked where it stands alone, not inside other words
    or paths: replacing every ``x`` made ``source.path not found:
    /data/none***ist`` of the errors (and ``texts/***/a.jsonl``). A real key is long, and masked wherever it appears.
    """
    for secret in secrets:
        if not secret or secret not in text:
            continue
        if len(secret) >= WHOLE_WORD_BELOW:
            text = text.replace(secret, "***")
        else:
            text = re.sub(rf"(?<![\w./-]){re.escape(secret)}(?![\w./-])", "***", text)
    return text


class Redactor:
    """A structlog processor that masks secrets in every value."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def __call__(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        for key, value in event.items():  # credentials in URLs, whoever logs them
            if isinstance(value, str) and "@" in value and "://" in value:
                event[key] = redact_url(value)
        if not self.secrets:
            return event
        for key, value in event.items():
            text = value if isinstance(value, str) else None
            if text is None and not isinstance(value, (int, float, bool, type(None))):
                text = str(value)
            if text is not None and any(s in text for s in self.secrets):
                event[key] = mask_secrets(text, self.secrets)
        return event

    def text(self, value: str) -> str:
        """``value`` with every secret masked."""
        return mask_secrets(value, self.secrets)


def _truncate(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if isinstance(value, str) and len(value) > 1000:
            event[key] = value[:1000] + "…"
    return event


def _drop_unset(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Leave out the fields that have nothing to say (``None``), in every format.

    A logfmt ``cost_usd=`` (no price configured) or ``seek_offset=`` (no
    checkpoint) reads as a value that went missing; an optional fact that
    does not apply is simply absent, and JSON says the same by leaving the
    key out rather than writing ``null``.
    """
    return {key: value for key, value in event.items() if value is not None}


def _logfmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1e6 else f"{value:.0f}"
    elif isinstance(value, (dict, list, tuple)):
        text = orjson.dumps(value, default=str).decode()
    else:
        text = str(value)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    return text


def logfmt(_logger: Any, _name: str, event: dict[str, Any]) -> str:
    """Render an event as one logfmt line: ``at=info event=… key=value …``."""
    ts = event.pop("ts", None)
    parts = [f"ts={ts}"] if ts else []
    parts += [f"at={event.pop('level', 'info')}", f"event={event.pop('event', '')}"]
    parts += [f"{k}={_logfmt_value(v)}" for k, v in event.items()]
    line = " ".join(parts)
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…"


def _json(_logger: Any, _name: str, event: dict[str, Any]) -> str:
    return orjson.dumps(event, default=str).decode()


class _LiveConsole:
    """Prints events above a progress line that redraws in place."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.status = ""

    def render(self, _logger: Any, _name: str, event: dict[str, Any]) -> str:
        level = event.pop("level", "info")
        name = event.pop("event", "")
        event.pop("timestamp", None)
        details = " ".join(f"{k}={_logfmt_value(v)}" for k, v in event.items())
        prefix = "" if level == "info" else f"{level.upper()} "
        return f"{prefix}{name} {details}".rstrip()

    def show(self, line: str) -> None:
        self.status = line
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()

    def clear(self) -> None:
        if self.status:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


class _ConsoleLogger:
    """A structlog logger that keeps the live progress line at the bottom."""

    def __init__(self, console: _LiveConsole) -> None:
        self.console = console

    def msg(self, message: str) -> None:
        stream = self.console.stream
        stream.write("\r\x1b[2K" + message + "\n")
        if self.console.status:
            stream.write(self.console.status)
        stream.flush()

    info = debug = warning = error = critical = exception = log = msg


@dataclass
class LogSetup:
    """What :func:`configure` decided, for the progress reporter."""

    live: bool
    redactor: Redactor
    console: _LiveConsole | None = field(default=None)


def configure(
    level: str = "info",
    fmt: str = "auto",
    secrets: list[str] | None = None,
    stream: TextIO | None = None,
) -> LogSetup:
    """Set structlog up for this process; returns how progress should show."""
    stream = stream or sys.stderr
    redactor = Redactor(secrets or [])
    live = fmt == "auto" and stream.isatty()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _drop_unset,
        redactor,
        _truncate,
    ]
    console = None
    if live:
        console = _LiveConsole(stream)
        processors.append(console.render)
        factory: Any = lambda *args: _ConsoleLogger(console)  # noqa: E731
    else:
        processors.insert(0, structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"))
        processors.append(_json if fmt == "json" else logfmt)
        factory = structlog.PrintLoggerFactory(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    return LogSetup(live=live, redactor=redactor, console=console)


def get_logger(**context: Any) -> Any:
    """A bound structlog logger."""
    return structlog.get_logger("pipeline").bind(**context)


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"



_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact_url(text: str) -> str:
    """``text`` with the userinfo of every URL in it masked (``https://***@host``).

    Keys passed to proxies as ``https://user:KEY@host`` must not be printed
    by ``validate``, config errors or the unreachable-endpoint message.
    """
    return _USERINFO.sub(r"\g<scheme>***@", text)
