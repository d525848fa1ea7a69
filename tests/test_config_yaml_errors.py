"""YAML syntax errors in a config: one plain line at the line and column to fix, never a value."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError

CASES = {
    "deeper_key": ("source:\n  path: x.jsonl\n   format: jsonl\nsink:\n  path: out\n",
                   "3:4", "'format' is indented deeper than 'path' on line 2, which already has a value: "
                          "the keys of one section start in the same column"),
    "shallower_key": ("sink:\n    path: out\n  format: parquet\n",
                      "3:3", "this line is indented 2 spaces, which lines up with no key above it: the keys of "
                             "one section start in the same column (line 2 is indented 4 spaces)"),
    "indented_file": ("  source:\n    path: x\nsink:\n  path: y\n",
                      "3:1", "the file's first key is indented 2 spaces and this one is not: the top-level "
                             "sections (source:, sink:, ...) start in column 1"),
    "tab": ("source:\n\tpath: x.jsonl\n",
            "2:1", "a tab character: YAML indents and separates with spaces only, replace it with spaces"),
    "missing_colon": ("source:\n  path x.jsonl\n  format: jsonl\n",
                      "2:3", "this line has no ':' between its key and its value"),
    "missing_colon_last": ("source:\n  path: x\nsink\n  path: y\n",
                           "3:1", "this line has no ':' between its key and its value"),
    "no_space_after_colon": ("source:\n  path: x.jsonl\n  format:jsonl\n",
                             "3:3", "a ':' needs a space after it (format: ...)"),
    "unclosed_quote": ('source:\n  path: "x.jsonl\nsink:\n  path: out\n',
                       "2:9", "the quote '\"' opened here is never closed"),
    "unclosed_bracket": ("source:\n  metadata_fields: [a, b\n  format: jsonl\n",
                         "2:20", "the list opened with '[' here is not closed by ']' (or lacks a ',' between "
                                 "two items)"),
    "colon_in_value": ("embedding:\n  url: http://h: 80\n",
                       "2:16", "a value holding ': ' must be put in quotes (key: \"a: b\")"),
    "windows_path": ('source:\n  path: "C:\\data\\x.jsonl"\n',
                     "2:13", "a backslash inside double quotes starts an escape YAML does not know: use single "
                             "quotes, or write the backslash twice, or use '/' in paths"),
    "list_among_keys": ("source:\n  path: x.jsonl\n  - y\n",
                        "3:3", "a list item ('- ') among the keys of a section: a key holds either a value, or "
                               "a list indented under it"),
    "two_documents": ("source:\n  path: x\n---\nsink:\n  path: y\n",
                      "3:1", "a second YAML document ('---'): a config is one document, remove the '---' and "
                             "what follows or merge it"),
    "reserved_character": ("source:\n  path: @x\n",
                           "2:9", "a value cannot start with '@' (YAML reserves it): put the value in quotes"),
    "python_tag": ("source: !!python/object:os.system\n  path: x\n",
                   "1:9", "the tag '!!python/object:os.system' is not allowed: a config holds plain values, lists "
                          "and mappings only"),
    "duplicate_nested_key": ("source:\n  path: a.jsonl\n  path: b.jsonl\nsink:\n  path: out\n",
                             "3:3", "source.path: given twice (first on line 2); YAML would keep only this one: "
                                    "merge the two into one"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_yaml_errors_are_one_plain_line_at_line_and_column(tmp_path: Path, name: str) -> None:
    """Each common YAML mistake is named in plain words at the file, line and column to fix."""
    text, where, message = CASES[name]
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == f"{path}:{where}: invalid YAML: {message}"


@pytest.mark.parametrize("text", [
    "embedding:\n  url: http://h\n  api_key sk-live-0123456789abcdef\n  model: m\n",
    "embedding:\n  api_key: \"sk-live-0123456789abcdef\n",
    "embedding:\n  api_key: *sk-live-0123456789abcdef\n",
    "embedding:\n  url: http://h\n  api_key: sk-live-0123456789abcdef: x\n",
])
def test_yaml_errors_never_show_a_value(tmp_path: Path, text: str) -> None:
    """A mistyped line holding the key is pointed at, and the key not printed."""
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "0123456789abcdef" not in str(info.value) and f"{path}:" in str(info.value)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_file_says_so(tmp_path: Path, text: str) -> None:
    """An empty config (or only comments) says it is empty and what it needs, not which key came first."""
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (f"{path}: the file is empty: a config needs at least source.path and sink.path "
                               "(source: {path: ...} and sink: {path: ...})")
    cfg = load_config(path, ["source.path=a.jsonl", "sink.path=out", "embedding.provider=local"], env={})
    assert cfg.source.path == "a.jsonl"  # an empty file with everything set by --set is a config


def test_a_colon_without_its_space_where_a_section_belongs(tmp_path: Path) -> None:
    """``source: path:x`` is one string to YAML: said as the missing space, without the value."""
    path = tmp_path / "job.yaml"
    path.write_text("source:\n  path:x.jsonl\nsink:\n  path: out\nembedding:\n  provider: local\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (f"{path}:1: source: must be a section, got the string 'path:...': "
                               "a ':' needs a space after it (path: ...)")
