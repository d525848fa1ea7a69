"""A YAML syntax error as one plain sentence and the place it points at.

PyYAML's messages speak of its own machinery ("mapping values are not
allowed here", "expected <block end>, but found '<block mapping start>'"),
come in two parts on several lines, and often point past the mistake (an
unclosed quote is reported at the end of the file). :func:`explain` names
the usual causes in a config's terms, at the line and column to fix.

No message quotes a value from the file: a config holds keys, and a
mistyped line (``api_key sk-...`` without its colon) must not print one.
Keys are quoted, values never.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

_KEY = re.compile(r"\s*(?:-\s+)?([A-Za-z_][\w.-]*)\s*:(?:\s|$)")
_BAD_START = re.compile(r"found character '(.+)' that cannot start any token")
_ESCAPE = re.compile(r"found unknown escape character '(.+)'|expected escape sequence")
_TAG = re.compile(r"could not determine a constructor for the tag '(?:tag:yaml\.org,2002:)?([^']*)'")


@dataclass(frozen=True, slots=True)
class YamlProblem:
    """Where a YAML error is (1-based line and column) and what it is, in plain words."""

    line: int
    column: int
    message: str


def explain(exc: yaml.MarkedYAMLError, text: str) -> YamlProblem | None:
    """``exc`` in plain words at the place to fix, or None when it carries no position.

    A cause not recognised keeps PyYAML's own words (its problem part, one line).
    """
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return None
    lines = text.splitlines()
    problem, context = exc.problem or "", exc.context or ""
    opened = exc.context_mark

    def here(message: str, where: yaml.Mark | None = None) -> YamlProblem:
        where = where or mark
        return YamlProblem(where.line + 1, where.column + 1, message)

    bad_start = _BAD_START.search(problem)
    if "tab character" in problem or (bad_start is not None and bad_start.group(1) == "\\t"):
        return here("a tab character: YAML indents and separates with spaces only, replace it with spaces")
    if bad_start is not None:
        return here(f"a value cannot start with {bad_start.group(1)!r} (YAML reserves it): put the value in quotes")
    if "quoted scalar" in context and opened is not None:
        quote = _char_at(lines, opened)
        if _ESCAPE.search(problem):
            return here('a backslash inside double quotes starts an escape YAML does not know: use single '
                        "quotes, or write the backslash twice, or use '/' in paths")
        if "end of stream" in problem or "document separator" in problem:
            return here(f"the quote {quote} opened here is never closed", opened)
    if "flow sequence" in context and opened is not None:
        return here("the list opened with '[' here is not closed by ']' (or lacks a ',' between two items)", opened)
    if "flow mapping" in context and opened is not None:
        return here("the mapping opened with '{' here is not closed by '}' (or lacks a ',' between two items)",
                    opened)
    if problem == "mapping values are not allowed here":
        return _misplaced_colon(lines, mark) or here(
            "a ':' YAML cannot take here: compare this line's indentation with the line above, "
            "and put a value that holds ': ' in quotes")
    if "simple key" in context and "could not find expected ':'" in problem and opened is not None:
        return here(_no_colon(lines, opened.line), opened)
    if "block mapping" in context and problem.startswith("expected <block end>"):
        if "'-'" in problem:
            return here("a list item ('- ') among the keys of a section: a key holds either a value, "
                        "or a list indented under it")
        return here(f"this line is indented {_spaces(mark.column)}, which lines up with no key above it: "
                    "the keys of one section start in the same column" + _above(lines, mark.line))
    if problem.startswith("expected '<document start>'"):
        first = next((line for line in lines if line.strip() and not line.strip().startswith("#")), "")
        if _indent(first) > mark.column:
            return here(f"the file's first key is indented {_spaces(_indent(first))} and this one is not: "
                        "the top-level sections (source:, sink:, ...) start in column 1")
    if "expected a single document" in context:
        return here("a second YAML document ('---'): a config is one document, remove the '---' and "
                    "what follows or merge it")
    if problem.startswith("found undefined alias"):
        return here("a value starting with '*' refers to an anchor ('&name') that is not defined: "
                    "put the value in quotes if the '*' is part of it")
    if "duplicate anchor" in context and opened is not None:
        return here(f"an anchor ('&name') defined twice (first on line {opened.line + 1}): give each its own name")
    if (tag := _TAG.search(problem)) is not None:
        name = tag.group(1)
        shown = f"!!{name}" if not name.startswith("!") else name
        return here(f"the tag {shown!r} is not allowed: a config holds plain values, lists and mappings only")
    if "unhashable key" in problem:
        return here("a key must be a plain word, not a list or a mapping")
    return here(" ".join((problem or context).split()))  # our own checks (a key given twice) speak plainly


def _char_at(lines: list[str], mark: yaml.Mark) -> str:
    line = lines[mark.line] if mark.line < len(lines) else ""
    return repr(line[mark.column]) if mark.column < len(line) else "quote"


def _previous(lines: list[str], index: int) -> int | None:
    """The index of the last line before ``index`` that holds something other than a comment."""
    for i in range(min(index, len(lines)) - 1, -1, -1):
        stripped = lines[i].strip()
        if stripped and not stripped.startswith("#"):
            return i
    return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _spaces(count: int) -> str:
    return "1 space" if count == 1 else f"{count} spaces"


def _above(lines: list[str], index: int) -> str:
    """`` (line 2 is indented 4 spaces)``: the line above the one reported, to compare with."""
    before = _previous(lines, index)
    return f" (line {before + 1} is indented {_spaces(_indent(lines[before]))})" if before is not None else ""


def _no_colon(lines: list[str], index: int) -> str:
    """What a line that YAML found no ``key: value`` in lacks: its ':', or the space after it."""
    glued = re.match(r"\s*([A-Za-z_][\w.-]*):\S", lines[index]) if index < len(lines) else None
    if glued:
        return f"a ':' needs a space after it ({glued.group(1)}: ...)"
    return "this line has no ':' between its key and its value"


def _misplaced_colon(lines: list[str], mark: yaml.Mark) -> YamlProblem | None:
    """``mapping values are not allowed here``, said as what is usually wrong.

    YAML reports a ':' it cannot take; the mistake is a value holding ': '
    without quotes, the line above lacking its ':', or this line indented
    deeper than the key above it (YAML then reads it as more of that value).
    """
    if mark.line >= len(lines):
        return None
    line = lines[mark.line]
    if re.search(r":\s", line[: mark.column]):
        return YamlProblem(mark.line + 1, mark.column + 1,
                           "a value holding ': ' must be put in quotes (key: \"a: b\")")
    before = _previous(lines, mark.line)
    if before is None:
        return None
    above = lines[before]
    key = _KEY.match(line)
    named = f"{key.group(1)!r}" if key else "this key"
    if not re.search(r":(\s|$)", above):
        return YamlProblem(before + 1, _indent(above) + 1, _no_colon(lines, before))
    above_key = _KEY.match(above)
    if _indent(line) > _indent(above) and above_key is not None:
        return YamlProblem(mark.line + 1, _indent(line) + 1,
                           f"{named} is indented deeper than {above_key.group(1)!r} on line {before + 1}, "
                           "which already has a value: the keys of one section start in the same column")
    return None
