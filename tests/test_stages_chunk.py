"""Cutting records (pipeline.stages.chunk): splitting, the three strategies, content hashes."""

from __future__ import annotations

import hashlib
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stages.chunk import Chunker, content_hash, make_hasher, split_spans, split_text, truncate_text
from pipeline.config import ChunkingConfig
from pipeline.types import Chunk, Failure, Record

_WS = re.compile(r"\s+")

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHéèüñçßøå日本語中文字テキスト한국어😀👍🏽🎉"
PUNCT = ".!?。！？,;:\"'”)"
SPACES = [" ", " ", " ", "\n", "\n\n", "\t", "\r\n", "\u3000", " \n \n", "  "]

words = st.text(alphabet=LETTERS + PUNCT, min_size=1, max_size=12)
spaces = st.sampled_from(SPACES)


@st.composite
def texts(draw: st.DrawFn) -> str:
    """Words of mixed scripts separated by random whitespace, sometimes with whitespace at the ends."""
    parts = draw(st.lists(st.tuples(words, spaces), min_size=0, max_size=80))
    lead = draw(st.sampled_from(["", " ", "\n\n", "\t "]))
    return lead + "".join(w + s for w, s in parts)


any_text = st.one_of(texts(), st.text(alphabet=LETTERS + PUNCT + " \n\t\u3000", max_size=300))


def nows(s: str) -> str:
    return _WS.sub("", s)


def check_chunks(chunks: list[str], max_chars: int) -> None:
    for c in chunks:
        assert 0 < len(c) <= max_chars
        assert c == c.strip()


# --------------------------------------------------------------------------- properties


@settings(max_examples=400, deadline=None)
@given(text=any_text, max_chars=st.integers(1, 60))
def test_split_chunks_fit_are_stripped_and_lose_nothing(text: str, max_chars: int) -> None:
    """Without overlap, chunks are non-empty, ≤ max_chars, stripped, and hold every non-space character in order."""
    chunks = split_text(text, max_chars)
    check_chunks(chunks, max_chars)
    assert nows("".join(chunks)) == nows(text)


@settings(max_examples=400, deadline=None)
@given(text=texts(), max_chars=st.integers(12, 60))
def test_split_keeps_words_whole_when_they_fit(text: str, max_chars: int) -> None:
    """Without overlap, joining chunks with spaces gives back the text's words when no word is over max_chars."""
    chunks = split_text(text, max_chars)
    if all(len(w) <= max_chars for w in text.split()):
        assert " ".join(chunks).split() == text.split()


@settings(max_examples=400, deadline=None)
@given(text=any_text, max_chars=st.integers(2, 60), data=st.data())
def test_split_overlap_is_a_suffix_of_the_previous_chunk(text: str, max_chars: int, data: st.DataObject) -> None:
    """With overlap, each chunk starts within the previous one's last overlap_chars, fits, and nothing is skipped."""
    overlap = data.draw(st.integers(1, max_chars - 1))
    chunks = split_text(text, max_chars, overlap)
    spans = split_spans(text, max_chars, overlap) if len(text) > max_chars else None
    check_chunks(chunks, max_chars)
    if spans is None:
        return
    assert [text[a:b] for a, b in spans] == chunks
    if spans:
        assert not text[: spans[0][0]].strip()
        assert not text[spans[-1][1] :].strip()
    for i, ((a0, b0), (a1, b1)) in enumerate(zip(spans, spans[1:])):
        assert b1 > b0  # progress
        assert not text[b0:a1].strip()  # no content skipped between chunks
        if a1 < b0:  # an overlap: a suffix of the previous chunk, at most overlap long
            assert a1 >= a0 and b0 - a1 <= overlap
            assert chunks[i].endswith(text[a1:b0]) and chunks[i + 1].startswith(text[a1:b0])


@settings(max_examples=200, deadline=None)
@given(text=any_text, max_chars=st.integers(1, 80))
def test_split_text_that_fits_is_returned_stripped(text: str, max_chars: int) -> None:
    """A text within max_chars comes back whole as [text.strip()] (or [] when blank)."""
    if len(text) <= max_chars:
        assert split_text(text, max_chars) == ([text.strip()] if text.strip() else [])


# --------------------------------------------------------------------------- worked examples


def test_split_prefers_paragraph_over_sentence() -> None:
    """A blank line inside the window wins over a later sentence end."""
    text = "Intro line.\n\nA sentence. Another sentence that goes on and on."
    assert split_text(text, 30)[0] == "Intro line."


def test_split_prefers_sentence_over_word() -> None:
    """A sentence end inside the window wins over a later space."""
    assert split_text("One two three. Four five six seven eight", 25) == [
        "One two three.",
        "Four five six seven eight",
    ]


def test_split_packs_as_many_units_as_fit() -> None:
    """Greedy packing: several short paragraphs share a chunk when they fit."""
    text = "aa.\n\nbb.\n\ncc.\n\n" + "dd " * 20
    assert split_text(text, 20)[0] == "aa.\n\nbb.\n\ncc."


def test_split_falls_back_to_whitespace_then_hard_cut() -> None:
    """Words are kept whole when they fit; only a word longer than max_chars is cut inside."""
    assert split_text("alpha beta gamma delta", 12) == ["alpha beta", "gamma delta"]
    assert split_text("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    assert split_text("ab abcdefghij", 4) == ["ab", "abcd", "efgh", "ij"]


def test_split_cjk_at_full_stops_without_spaces() -> None:
    """CJK text without spaces is cut after 。！？."""
    expected = ["今日は晴れです。", "明日は雨です。"]
    assert split_text("今日は晴れです。明日は雨です。", 10) == expected
    assert split_text("这是第一句！这是第二句？", 8) == ["这是第一句！", "这是第二句？"]


def test_split_does_not_cut_a_word_that_fits_at_a_cjk_stop() -> None:
    """A CJK stop inside a space-delimited word that fits whole is not used as a cut."""
    assert split_text("xx 晴れです。雨です yy", 10) == ["xx", "晴れです。雨です", "yy"]


def test_split_counts_code_points_not_bytes() -> None:
    """max_chars counts Python characters: multi-byte characters count once."""
    text = "😀" * 10
    assert split_text(text, 4) == ["😀" * 4, "😀" * 4, "😀" * 2]


def test_split_overlap_starts_at_a_word() -> None:
    """With overlap, the next chunk repeats the previous chunk's last words, starting at a word."""
    chunks = split_text("one two three four five six seven eight nine ten", 20, 10)
    assert chunks[0] == "one two three four"
    assert chunks[1].startswith("three four ")
    assert all(len(c) <= 20 for c in chunks)
    assert chunks[-1].endswith("ten")


def test_split_overlap_in_cjk_without_spaces() -> None:
    """Without spaces to start at, the overlap starts mid-text, still within max_chars."""
    text = "あいうえおかきくけこさしすせそ"
    chunks = split_text(text, 6, 2)
    assert chunks[0] == "あいうえおか"
    assert chunks[1].startswith("おか")
    assert all(len(c) <= 6 for c in chunks)


def test_split_rejects_bad_arguments() -> None:
    """overlap_chars must be below max_chars."""
    with pytest.raises(ValueError):
        split_spans("x" * 100, 10, 10)


def test_split_one_megabyte_is_fast() -> None:
    """A 1 MB document splits in well under a second (the split is linear)."""
    sentence = "The quick brown fox jumps over the lazy dog near the river bank. "
    text = "\n\n".join(sentence * 7 for _ in range(2300))
    assert len(text) > 1_000_000
    t = time.perf_counter()
    chunks = split_text(text, 2048, 200)
    assert time.perf_counter() - t < 1.0
    check_chunks(chunks, 2048)
    cjk = "日本語のテキストを分割します。" * 70_000
    t = time.perf_counter()
    split_text(cjk, 2048)
    assert time.perf_counter() - t < 1.0


def test_truncate_does_not_cut_a_word() -> None:
    """Truncation moves back to a space in the last 10% and strips."""
    assert truncate_text("  hello world", 100) == "hello world"
    assert truncate_text("aaaaaaaaa bbbbbbbbbb", 12) == "aaaaaaaaa bb"  # no space in the last 10%
    assert truncate_text("a" * 95 + " " + "b" * 20, 100) == "a" * 95
    assert truncate_text("x" * 50, 10) == "x" * 10


# --------------------------------------------------------------------------- chunker


def record(text: str, doc_id: str = "d1") -> Record:
    return Record(doc_id=doc_id, text=text, source="s3://b/f.jsonl", location=7, metadata={"lang": "en"})


def chunker(strategy: str = "split", max_chars: int = 20, overlap: int = 0) -> Chunker:
    cfg = ChunkingConfig(strategy=strategy, max_chars=max_chars, overlap_chars=overlap)
    return Chunker(cfg, model="m", input_type="search_document", embedding_type="float")


def test_chunker_unsplit_record_keeps_doc_id() -> None:
    """A record that fits becomes one chunk whose id is the doc_id, index 0, stripped text."""
    out = chunker()(record("  short text \n"))
    assert out == [
        Chunk(
            id="d1",
            doc_id="d1",
            chunk_index=0,
            text="short text",
            source="s3://b/f.jsonl",
            location=7,
            content_hash=content_hash("m", "search_document", "float", "short text"),
            metadata={"lang": "en"},
        )
    ]


def test_chunker_split_record_numbers_chunks() -> None:
    """A record cut in n pieces gives ids doc_id#0..n-1 with matching chunk_index and own hashes."""
    out = chunker()(record("alpha beta gamma. delta epsilon zeta. eta theta iota."))
    assert isinstance(out, list) and len(out) == 3
    assert [c.id for c in out] == ["d1#0", "d1#1", "d1#2"]
    assert [c.chunk_index for c in out] == [0, 1, 2]
    assert all(c.doc_id == "d1" and c.source == "s3://b/f.jsonl" and c.location == 7 for c in out)
    assert all(c.metadata == {"lang": "en"} for c in out)
    assert all(c.content_hash == content_hash("m", "search_document", "float", c.text) for c in out)


def test_chunker_truncate_gives_one_chunk() -> None:
    """truncate keeps only the first max_chars characters, as one chunk with the doc_id."""
    out = chunker("truncate")(record("alpha beta gamma de fgh ijk"))
    assert isinstance(out, list) and len(out) == 1
    assert out[0].id == "d1" and out[0].chunk_index == 0 and out[0].text == "alpha beta gamma de"


def test_chunker_reject_makes_a_too_long_failure() -> None:
    """reject turns a text over max_chars into a too_long Failure naming both lengths."""
    out = chunker("reject")(record("x" * 25))
    assert isinstance(out, Failure)
    assert out.error_type == "too_long"
    assert out.message == "text is 25 characters, over chunking.max_chars=20"
    assert (out.id, out.doc_id, out.chunk_index, out.source, out.location) == ("d1", "d1", 0, "s3://b/f.jsonl", 7)
    assert out.text == "x" * 25 and out.status is None and out.attempts == 0
    assert isinstance(chunker("reject")(record("x" * 20)), list)


def test_chunker_blank_text_is_a_failure() -> None:
    """A whitespace-only text becomes an empty_text Failure rather than an empty chunk."""
    out = chunker()(record(" " * 30))
    assert isinstance(out, Failure) and out.error_type == "empty_text"


# --------------------------------------------------------------------------- content_hash


def test_content_hash_is_sha256_of_fields_joined() -> None:
    """content_hash is the hex SHA-256 of the UTF-8 fields joined by \\x1f, None as empty."""
    expected = hashlib.sha256("m\x1fsearch_document\x1ffloat\x1fhéllo 日本".encode()).hexdigest()
    assert content_hash("m", "search_document", "float", "héllo 日本") == expected
    assert content_hash("m", None, "float", "t") == hashlib.sha256(b"m\x1f\x1ffloat\x1ft").hexdigest()
    hasher = make_hasher("m", "search_document", "float")
    assert hasher("héllo 日本") == expected
    assert hasher("héllo 日本") == expected  # the prefix is copied, not consumed


def test_content_hash_differs_when_any_field_differs() -> None:
    """Changing the model, input_type, embedding_type or text changes the hash."""
    base = ("m", "search_document", "float", "text")
    variants = [
        ("m2", "search_document", "float", "text"),
        ("m", "search_query", "float", "text"),
        ("m", None, "float", "text"),
        ("m", "search_document", "int8", "text"),
        ("m", "search_document", "float", "text "),
        ("m", "search_documen", "tfloat", "text"),
    ]
    hashes = {content_hash(*base)} | {content_hash(*v) for v in variants}
    assert len(hashes) == len(variants) + 1
