"""What `pipeline serve` can be told: ServerOptions and the flags that build it."""

from __future__ import annotations

import argparse

import pytest

from pipeline.errors import ConfigError
from pipeline.serve.options import ServerOptions, add_arguments, options_from_args


@pytest.mark.parametrize(
    "options",
    [
        {"dimensions": 12},
        {"fail_500": 1.5},
        {"fail_500": 0.6, "drop": 0.6},
        {"rpm": 0},
        {"limit_window_s": 0},
        {"port": 70000},
        {"poison": ("",)},
        {"limit_mode": "leaky"},
    ],
)
def test_bad_options_are_config_errors(options: dict) -> None:
    """Options that cannot work raise ConfigError."""
    with pytest.raises(ConfigError):
        ServerOptions(**options)


def test_flags_become_options() -> None:
    """The serve flags map onto ServerOptions, with --models split on commas and --poison repeatable."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(
        "--port 0 --fake --dimensions 32 --models a,b --models c --poison X --poison Y "
        "--rpm 10 --limit-window-s 1 --fail-500 0.1 --shuffle --api-key sekrit-9".split()
    )
    options = options_from_args(ns)
    assert options.models == ("a", "b", "c") and options.poison == ("X", "Y")
    assert (options.port, options.dimensions, options.rpm, options.limit_window_s) == (0, 32, 10, 1.0)
    assert options.fake and options.shuffle and options.fail_500 == 0.1 and options.api_key == "sekrit-9"
    assert "sekrit" not in repr(options)
    assert options_from_args(parser.parse_args([])) == ServerOptions()
    with pytest.raises(ConfigError):
        options_from_args(parser.parse_args(["--dimensions", "32"]))


def test_retry_after_is_on_unless_turned_off() -> None:
    """Retry-After is sent by default; --no-retry-after turns it off and --retry-after still parses."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_from_args(parser.parse_args([])).retry_after
    assert options_from_args(parser.parse_args(["--retry-after"])).retry_after
    assert not options_from_args(parser.parse_args(["--no-retry-after"])).retry_after


def test_idle_timeout_flag() -> None:
    """--idle-timeout-s sets how long an idle keep-alive connection stays open; 75 s by default, positive."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_from_args(parser.parse_args([])).idle_timeout_s == 75
    assert options_from_args(parser.parse_args(["--idle-timeout-s", "0.5"])).idle_timeout_s == 0.5
    with pytest.raises(ConfigError):
        ServerOptions(idle_timeout_s=0)


def test_ratelimit_headers_are_on_unless_turned_off() -> None:
    """x-ratelimit-* headers are sent by default; --no-ratelimit-headers turns them off."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_from_args(parser.parse_args([])).ratelimit_headers
    assert not options_from_args(parser.parse_args(["--no-ratelimit-headers"])).ratelimit_headers


def test_limit_mode_flag() -> None:
    """--limit-mode picks sliding (the default) or fixed windows."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_from_args(parser.parse_args([])).limit_mode == "sliding"
    assert options_from_args(parser.parse_args(["--limit-mode", "fixed"])).limit_mode == "fixed"
