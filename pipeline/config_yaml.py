"""Reading a config's YAML: a safe loader whose aliases cannot explode, ``${VAR}``
interpolation, ``--set`` overrides, and the line of every key (for messages)."""

from __future__ import annotations

import re
from typing import Any, Mapping

import yaml

from pipeline.errors import ConfigError
from pipeline.logs import redact_url


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_UNSET = object()


def interpolate(value: str, env: Mapping[str, str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in one string.

    A string that is only one unset ``${VAR}`` becomes ``_UNSET`` (the key is
    dropped, as if absent); defaults are parsed as YAML scalars when they make
    up the whole string, so ``${RANK:-0}`` gives the integer 0.
    """
    whole = _VAR.fullmatch(value)
    if whole:
        name, default = whole.group(1), whole.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is None:
            return _UNSET
        return _scalar(default)

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        return default or ""

    return _VAR.sub(sub, value)


def _scalar(text: str) -> Any:
    try:
        return safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


#: values a config may hold once its aliases are expanded, and levels of nesting;
#: a real config has a few hundred values, four or five levels deep
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


class YamlTooBig(yaml.YAMLError):
    """A document past :data:`MAX_YAML_VALUES` once its aliases are expanded, looping, or too deep."""


def _check_size(root: yaml.Node) -> None:
    """Raise :class:`YamlTooBig` when ``root``, aliases expanded, is over budget, loops, or nests too deep.

    An alias is the same node object reached twice, so sizes are memoised
    per node: the count costs one visit per distinct node, however large
    the expansion (nine levels of ten aliases are a billion values).
    """
    known: dict[int, tuple[int, int]] = {}  # node → (values, levels) below and including it
    open_nodes: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in open_nodes:
            raise YamlTooBig("YAML aliases loop: an alias refers to the value that holds it")
        if key not in known:
            open_nodes.add(key)
            children: list[yaml.Node] = []
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            values, levels = 1, 1
            for child in children:
                below, child_levels = measure(child, depth + 1)
                values, levels = values + below, max(levels, child_levels + 1)
                if values > MAX_YAML_VALUES:
                    raise YamlTooBig(f"YAML aliases expand to more than {MAX_YAML_VALUES:,} values (an alias bomb?)")
            open_nodes.discard(key)
            known[key] = (values, levels)
        if depth + known[key][1] - 1 > MAX_YAML_DEPTH:  # an alias can put a deep value deeper still
            raise YamlTooBig(f"YAML nested deeper than {MAX_YAML_DEPTH} levels")
        return known[key]

    measure(root, 1)


def _check_duplicates(root: yaml.Node) -> None:
    """Refuse a mapping that gives a key twice: YAML keeps the last silently (a second ``run:`` block
    would drop every key of the first)."""
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]  # each node with the dotted key it is the value of
    while stack:
        node, where = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                name = f"{where}.{key.value}" if where else str(key.value)
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in first:
                        raise yaml.constructor.ConstructorError(
                            None, None,
                            f"{name}: given twice (first on line {first[key.value] + 1}); YAML would keep "
                            "only this one: merge the two into one",
                            key.start_mark)
                    first[key.value] = key.start_mark.line
                stack += [(key, where), (value, name)]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, where) for item in node.value]


def load_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """The data of a YAML document and its composed node, refusing alias bombs before building anything."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_size(node)
        _check_duplicates(node)
        return loader.construct_document(node), node
    except RecursionError:
        raise YamlTooBig(f"YAML nested deeper than {MAX_YAML_DEPTH} levels") from None
    finally:
        loader.dispose()


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses alias bombs (:class:`YamlTooBig`, a ``yaml.YAMLError``)."""
    return load_yaml(text)[0]


def interpolate_tree(
    node: Any, env: Mapping[str, str], unset: dict[tuple, str] | None = None, path: tuple = ()
) -> Any:
    """Interpolate every string; keys whose whole value is an unset ``${VAR}`` are
    dropped, and recorded in ``unset`` (path → the value as written)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            value = interpolate_tree(v, env, unset, path + (k,))
            if value is not _UNSET:
                out[k] = value
            elif unset is not None:
                unset[path + (k,)] = v
        return out
    if isinstance(node, list):
        return [x for x in (interpolate_tree(v, env, unset, path) for v in node) if x is not _UNSET]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def line_map(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map each dotted key path of a composed YAML document to its 1-based line."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (str(key_node.value),)
            out[path] = key_node.start_mark.line + 1
            line_map(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = item.start_mark.line + 1
            line_map(item, prefix + (i,), out)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a", "b", "c"], value parsed as a YAML scalar)."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"{redact_url(flag_of(item))}: expected KEY=VALUE with a dotted key, e.g. embedding.concurrency=16"
        )
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str], applied: dict[tuple, str] | None = None) -> dict:
    """Set each ``--set KEY=VALUE`` into ``data`` (a copy is not made).

    ``applied``, when given, receives each key path and the flag that set it,
    so that an error in that value can blame the flag.
    """
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{redact_url(flag_of(item))}: {part} is not a section")
            node = child
        node[path[-1]] = value
        if applied is not None:
            applied[tuple(path)] = item
    return data


_SECRET = re.compile(r"(key|secret|password|passwd|token)$", re.IGNORECASE)


def is_secret(name: object) -> bool:
    """Whether a key holds a credential, whose value no message may show (``api_key``, ``secret``)."""
    return bool(_SECRET.search(str(name)))


def flag_of(item: str) -> str:
    """A ``--set`` flag as an error may show it: a credential's value masked."""
    key, sep, value = item.partition("=")
    masked = bool(sep) and any(is_secret(part) for part in key.split("."))  # (no "=": no value to mask)
    return f"--set {key}=***" if masked else f"--set {item}"
