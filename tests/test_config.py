"""Config loading: interpolation, overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import interpolate, load_config
from pipeline.errors import ConfigError

BASE = """\
source:
  path: docs/*.jsonl
embedding:
  url: ${EMBEDDING_URL}
  api_key: ${EMBEDDING_KEY}
  model: ${EMBEDDING_MODEL_ID:-cohere-embed-multilingual}
sink:
  path: out/dataset
run:
  rank: ${RANK:-0}
  world_size: ${WORLD_SIZE:-1}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_defaults_and_env(tmp_path: Path) -> None:
    """Env vars fill ${VAR}, defaults apply, and integers come out typed."""
    cfg = load_config(write(tmp_path, BASE), env={"EMBEDDING_URL": "https://x.example/", "EMBEDDING_KEY": "k-123456"})
    assert cfg.embedding.url == "https://x.example"
    assert cfg.api_key == "k-123456"
    assert cfg.embedding.model == "cohere-embed-multilingual"
    assert cfg.run.rank == 0 and cfg.run.world_size == 1
    assert cfg.embedding.batch_size == 96 and cfg.chunking.max_chars == 2048


def test_env_fills_missing_endpoint(tmp_path: Path) -> None:
    """EMBEDDING_* config vars fill the endpoint when the file leaves it out."""
    text = "source: {path: a.jsonl}\nsink: {path: out}\n"
    cfg = load_config(write(tmp_path, text), env={"EMBEDDING_URL": "https://h", "EMBEDDING_MODEL_ID": "m1"})
    assert cfg.embedding.url == "https://h" and cfg.embedding.model == "m1"


def test_the_local_provider_names_its_own_model(tmp_path: Path) -> None:
    """provider: local without a model records the packaged wordllama model, not the endpoint's default
    (nor EMBEDDING_MODEL_ID, the endpoint's model on Heroku); a model it is given is kept."""
    text = "source: {path: a.jsonl}\nembedding: {provider: local}\nsink: {path: out}\n"
    cfg = load_config(write(tmp_path, text), env={"EMBEDDING_MODEL_ID": "cohere-embed-multilingual"})
    assert cfg.embedding.model == "wordllama-l2-supercat-256"
    named = text.replace("{provider: local}", "{provider: local, model: mine}")
    assert load_config(write(tmp_path, named)).embedding.model == "mine"


def test_missing_url_names_key(tmp_path: Path) -> None:
    """Without a URL for provider http, the error names embedding.url and the env var."""
    with pytest.raises(ConfigError, match=r"embedding.*EMBEDDING_URL"):
        load_config(write(tmp_path, BASE), env={})


def test_unknown_key_names_dotted_path_and_line(tmp_path: Path) -> None:
    """A typo is reported with its dotted key and its line in the file."""
    path = write(tmp_path, BASE.replace("sink:\n", "sink:\n  shard_row: 5\n"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"EMBEDDING_URL": "http://h"})
    assert str(info.value) == f"{path}:8: sink.shard_row: unknown key (did you mean shard_rows?)"


@pytest.mark.parametrize("key, value, hint", [
    ("on_deleted", "keep", "run.on_deleted"),
    ("max_removed_fraction", "1", "run.max_removed_fraction"),
    ("max_remove_fraction", "1", "run.max_removed_fraction"),
])
def test_a_key_at_the_top_names_its_section(tmp_path: Path, key: str, value: str, hint: str) -> None:
    """A key of a section written at the top level (or a near miss of one) says which section holds it."""
    path = write(tmp_path, BASE + f"{key}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"EMBEDDING_URL": "http://h"})
    assert str(info.value).endswith(f"{key}: unknown key (did you mean {hint}?)")


def test_a_key_in_the_wrong_section_names_the_right_ones(tmp_path: Path) -> None:
    """A key of another section names every section that holds it."""
    path = write(tmp_path, BASE.replace("sink:\n", "sink:\n  id_field: key\n  batch_size: 5\n"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"EMBEDDING_URL": "http://h"})
    assert "sink.id_field: unknown key (did you mean source.id_field?)" in str(info.value)


def test_out_of_range_value(tmp_path: Path) -> None:
    """A value out of range names its key; batch_size above 96 is refused."""
    with pytest.raises(ConfigError, match=r"embedding\.batch_size: .*96"):
        load_config(write(tmp_path, BASE), ["embedding.batch_size=97"], env={"EMBEDDING_URL": "http://h"})


def test_wrong_type(tmp_path: Path) -> None:
    """A wrong type says what it got."""
    with pytest.raises(ConfigError, match=r"embedding\.concurrency: .*'lots'"):
        load_config(write(tmp_path, BASE), ["embedding.concurrency=lots"], env={"EMBEDDING_URL": "http://h"})


def test_set_overrides_parse_yaml_scalars(tmp_path: Path) -> None:
    """--set values are YAML scalars and reach nested keys."""
    cfg = load_config(
        write(tmp_path, BASE),
        ["embedding.concurrency=16", "source.path=s3://b/docs/*.jsonl", "sink.include_text=false"],
        env={"EMBEDDING_URL": "http://h"},
    )
    assert cfg.embedding.concurrency == 16
    assert cfg.source.path == "s3://b/docs/*.jsonl"
    assert cfg.sink.include_text is False


def test_bad_set_syntax(tmp_path: Path) -> None:
    """A --set without '=' is a config error, not a crash."""
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(write(tmp_path, BASE), ["embedding.concurrency"])


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    """Broken YAML is reported with its file, line and column (more cases in test_config_yaml_errors.py)."""
    path = write(tmp_path, "source:\n  path: [unclosed\nsink: {path: x}\n")
    with pytest.raises(ConfigError, match=rf"{path}:2:9: invalid YAML"):
        load_config(path)


def test_missing_file() -> None:
    """A missing config file is one clear line."""
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_a_directory_given_as_the_config(tmp_path: Path) -> None:
    """A folder where the config file belongs is said in plain words, not as errno 21."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a config file (give its YAML file)"


LOCAL = "source:\n  path: a.jsonl\nsink:\n  path: out\nembedding:\n  provider: local\n"


@pytest.mark.parametrize("old, new, where, message", [
    ("  path: a.jsonl\n", "  path:\n", ":2: source.path", "has no value"),
    ("  path: a.jsonl\n", '  path: ""\n', ":2: source.path", "must not be empty"),
    ("  path: out\n", '  path: ""\n', ":4: sink.path", "must not be empty"),
    ("  path: a.jsonl\n", "  path: a.jsonl\n  metadata_fields: lang\n", ":3: source.metadata_fields",
     "must be a list, got the string 'lang' (a list of one: [lang])"),
])
def test_empty_and_mistyped_values_in_plain_words(tmp_path: Path, old: str, new: str, where: str, message: str) -> None:
    """`path:` with nothing, `path: ""` (it listed the working directory) and a string for a list, said plainly."""
    path = write(tmp_path, LOCAL.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == f"{path}{where}: {message}"


def test_a_set_under_a_value_is_blamed_on_the_flag(tmp_path: Path) -> None:
    """--set embedding.api_key.x=1 turns a value into a mapping: the flag is blamed, not the file's line."""
    path = write(tmp_path, LOCAL)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["embedding.api_key.x=1"], env={})
    assert str(info.value).startswith("--set embedding.api_key.x=***: embedding.api_key:")


def test_a_file_not_in_utf8_names_its_line(tmp_path: Path) -> None:
    """A config saved as Latin-1 names the line and the byte, not the codec's position in the file."""
    path = tmp_path / "job.yaml"
    path.write_bytes("source:\n  path: caf\u00e9.jsonl\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2: not UTF-8 text (byte 0xe9): save the file as UTF-8"


def test_rank_must_be_below_world_size(tmp_path: Path) -> None:
    """rank >= world_size is refused."""
    with pytest.raises(ConfigError, match="rank"):
        load_config(write(tmp_path, BASE), env={"EMBEDDING_URL": "http://h", "RANK": "2", "WORLD_SIZE": "2"})


def test_key_not_in_repr(tmp_path: Path) -> None:
    """The API key never shows in the config's repr."""
    cfg = load_config(write(tmp_path, BASE), env={"EMBEDDING_URL": "http://h", "EMBEDDING_KEY": "supersecret"})
    assert "supersecret" not in repr(cfg) and "supersecret" not in str(cfg.model_dump())


def test_interpolate_inline() -> None:
    """${VAR} inside a longer string is substituted; defaults apply when unset."""
    assert interpolate("s3://${BUCKET}/x", {"BUCKET": "b"}) == "s3://b/x"
    assert interpolate("${A:-z}-${B:-y}", {}) == "z-y"


def test_dyno_gives_rank(tmp_path: Path) -> None:
    """On Heroku, DYNO=worker.3 gives rank 2 when RANK is unset; RANK wins when set."""
    text = "source: {path: a.jsonl}\nembedding: {url: 'http://h'}\nsink: {path: out}\n"
    env = {"DYNO": "worker.3", "WORLD_SIZE": "4"}
    cfg = load_config(write(tmp_path, text), env=env)
    assert (cfg.run.rank, cfg.run.world_size) == (2, 4)
    assert load_config(write(tmp_path, BASE), env={**env, "EMBEDDING_URL": "http://h"}).run.rank == 2
    assert load_config(write(tmp_path, text), env={**env, "RANK": "0"}).run.rank == 0
    assert load_config(write(tmp_path, text), env={"DYNO": "run.1234", "WORLD_SIZE": "2"}).run.rank == 0
    assert load_config(write(tmp_path, text), env={"DYNO": "worker.2"}).run.rank == 0


def test_unset_variable_is_named(tmp_path: Path) -> None:
    """A required key given as an unset ${VAR} names the variable in the error."""
    text = "source: {path: '${SOURCE_PATH}'}\nembedding: {url: 'http://h'}\nsink: {path: out}\n"
    with pytest.raises(ConfigError, match=r"source\.path: required key is missing \(\$\{SOURCE_PATH\} is not set"):
        load_config(write(tmp_path, text), env={})


def alias_bomb(levels: int, width: int = 10) -> str:
    """A "billion laughs" document: each level an anchored list of ``width`` aliases of the last."""
    lines = ['a0: &a0 "lol"']
    for n in range(1, levels + 1):
        lines.append(f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * width) + "]")
    return "\n".join(lines)


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    """YAML aliases expanding past the budget are one ConfigError naming the file, not a memory blow-up."""
    bomb = alias_bomb(6)  # a million strings expanded; the field's nine levels (a billion) end the same way
    text = f"source:\n  path: a.jsonl\n  storage_options:\n    {bomb.replace(chr(10), chr(10) + '    ')}\n"
    path = write(tmp_path, text + "embedding: {url: 'http://h'}\nsink: {path: out}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: YAML aliases expand to more than [\d,]+ values"):
        load_config(path, env={})


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    """An alias inside its own anchor (a cycle) is a ConfigError, not a RecursionError."""
    text = "source: &s {path: a.jsonl, storage_options: {loop: *s}}\nembedding: {url: 'http://h'}\nsink: {path: out}\n"
    with pytest.raises(ConfigError, match="YAML aliases"):
        load_config(write(tmp_path, text), env={})


def test_ordinary_anchors_still_work(tmp_path: Path) -> None:
    """Anchors, aliases and merge keys in a small config keep their meaning."""
    text = (
        "source: {path: a.jsonl, storage_options: &opts {anon: true}, metadata_fields: &fields [lang, title]}\n"
        "embedding: {url: 'http://h'}\n"
        "sink: {path: out, storage_options: {<<: *opts, key: k}}\n"
    )
    cfg = load_config(write(tmp_path, text), env={})
    assert cfg.source.storage_options == {"anon": True}
    assert cfg.sink.storage_options == {"anon": True, "key": "k"}
    assert cfg.source.metadata_fields == ["lang", "title"]


@pytest.mark.parametrize("depth", [100, 1000])
def test_deep_nesting_is_refused(tmp_path: Path, depth: int) -> None:
    """YAML nested hundreds of levels deep is one ConfigError, not a RecursionError."""
    path = write(tmp_path, "source: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError, match=rf"^{path}: YAML nested deeper than 64 levels"):
        load_config(path, env={})


def test_aliases_cannot_nest_past_the_limit(tmp_path: Path) -> None:
    """Aliases that stack a 40-level value inside itself twice are refused like plain deep nesting."""
    deep = "[" * 40 + "]" * 40
    text = f"a: &a {deep}\nb: &b {'[' * 39}*a{']' * 39}\nc: {'[' * 39}*b{']' * 39}\n"
    with pytest.raises(ConfigError, match="YAML nested deeper than 64 levels"):
        load_config(write(tmp_path, text), env={})


def test_misspelled_section_is_named_first(tmp_path: Path) -> None:
    """A misspelled section is reported as the unknown key, not hidden behind the errors it causes."""
    path = write(tmp_path, BASE.replace("embedding:", "embeding:"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}:3: embeding: unknown key (did you mean embedding?)")


def test_bad_set_value_is_blamed_on_the_flag(tmp_path: Path) -> None:
    """A wrong --set value names the flag, not a line of the file the flag overrode."""
    path = write(tmp_path, BASE.replace("sink:", "  concurrency: 4\nsink:"))
    with pytest.raises(ConfigError) as info:
        load_config(path, ["embedding.concurrency=lots"], env={"EMBEDDING_URL": "http://h"})
    message = str(info.value)
    assert message.startswith("--set embedding.concurrency=lots: embedding.concurrency: "), message
    assert str(path) not in message and "'lots'" in message


def test_unknown_key_in_set_is_blamed_on_the_flag(tmp_path: Path) -> None:
    """A typo in a --set key names the flag and suggests the key."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), ["embedding.concurency=4"], env={"EMBEDDING_URL": "http://h"})
    assert str(info.value) == (
        "--set embedding.concurency=4: embedding.concurency: unknown key (did you mean concurrency?)"
    )


def test_string_where_a_section_belongs(tmp_path: Path) -> None:
    """``source: /path`` is explained in words: a section is expected, a string came."""
    path = write(tmp_path, BASE.replace("source:\n  path: docs/*.jsonl", "source: /data/docs"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"EMBEDDING_URL": "http://h"})
    assert str(info.value) == f"{path}:1: source: must be a section (source: {{path: ...}}), got the string '/data/docs'"


def test_empty_section_is_explained(tmp_path: Path) -> None:
    """An empty ``sink:`` says a section is expected and nothing came."""
    path = write(tmp_path, BASE.replace("sink:\n  path: out/dataset", "sink:"))
    with pytest.raises(ConfigError, match=r":7: sink: must be a section \(sink: \{path: \.\.\.\}\), got nothing$"):
        load_config(path, env={"EMBEDDING_URL": "http://h"})



def test_credentials_in_a_bad_url_are_masked(tmp_path: Path) -> None:
    """A URL with user:key@ in a config error shows ***@ instead of the credentials."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), env={"EMBEDDING_URL": "ftp://user:KEY-123@h"})
    assert "KEY-123" not in str(info.value) and "ftp://***@h" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), ["embedding.url=ftp://user:KEY-123@h"])
    assert "KEY-123" not in str(info.value) and "--set embedding.url=ftp://***@h" in str(info.value)


def test_wrong_type_api_key_is_not_printed(tmp_path: Path) -> None:
    """An api_key of the wrong type is named, but its value is not shown."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), ["embedding.api_key=123456789"], env={"EMBEDDING_URL": "http://h"})
    assert "embedding.api_key" in str(info.value) and "123456789" not in str(info.value)


def test_set_under_a_secret_is_not_echoed(tmp_path: Path) -> None:
    """A --set that treats api_key as a section is refused without echoing its value."""
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["embedding.api_key.x=TOPSECRET"], env={"EMBEDDING_KEY": "k", "EMBEDDING_URL": "http://h"})
    assert "api_key is not a section" in str(info.value) and "TOPSECRET" not in str(info.value)


def test_a_section_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    """A second `run:` block would silently replace the first (YAML keeps the last key): refused, naming
    both lines."""
    text = ("source: {path: a.jsonl}\nembedding: {provider: local}\nrun:\n  on_deleted: keep\n"
            "sink: {path: out}\nrun:\n  poll_interval_s: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value) == (f"{tmp_path / 'job.yaml'}:6:1: invalid YAML: run: given twice (first on line 3); "
                               "YAML would keep only this one: merge the two into one")
    nested = "source: {path: a.jsonl, path: b.jsonl}\nembedding: {provider: local}\nsink: {path: out}\n"
    with pytest.raises(ConfigError, match="source.path: given twice"):
        load_config(write(tmp_path, nested))


def test_a_set_flag_without_a_value_is_shown_as_typed() -> None:
    """``--set nokey`` (no "="): the error shows the flag as typed, not ``nokey=***`` as if a secret had a
    value (found by a tryout); a secret's value given with "=" is still masked."""
    from pipeline.config_yaml import parse_override

    with pytest.raises(ConfigError) as bare:
        parse_override("nokey")
    assert str(bare.value).startswith("--set nokey: expected KEY=VALUE")
    with pytest.raises(ConfigError) as secret:
        parse_override("embedding.api_key..=s3cr3t")
    assert "s3cr3t" not in str(secret.value) and "--set embedding.api_key..=***" in str(secret.value)
