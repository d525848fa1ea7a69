"""Where records are cut: make every text fit the API's ``max_chars`` limit.

:func:`split_text` cuts a long text at the strongest boundary that keeps a
piece within the limit: a blank line, then a sentence end, then whitespace,
and inside a word only when the word alone is too long. :class:`Chunker`
applies ``chunking.strategy`` to a :class:`~pipeline.types.Record` and stamps
each :class:`~pipeline.types.Chunk` with its :func:`content_hash`.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections.abc import Callable

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from pipeline.config import ChunkingConfig
from pipeline.types import Chunk, Failure, FileEnd, Piece, Record

__all__ = ["Chunker", "chunk_stage", "content_hash", "make_hasher", "split_spans", "split_text"]

_SEP = b"\x1f"


def make_hasher(model: str, input_type: str | None, embedding_type: str) -> Callable[[str], str]:
    """Return ``text -> content_hash(model, input_type, embedding_type, text)``.

    The three fixed fields are hashed once; each call only hashes the text.
    """
    prefix = hashlib.sha256(_SEP.join(f.encode("utf-8") for f in (model, input_type or "", embedding_type)) + _SEP)
    copy = prefix.copy

    def content_hash_of(text: str) -> str:
        h = copy()
        h.update(text.encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    return content_hash_of


def content_hash(model: str, input_type: str | None, embedding_type: str, text: str) -> str:
    """Hex SHA-256 of the four fields' UTF-8 bytes joined by ``\\x1f`` (``None`` as empty)."""
    return make_hasher(model, input_type, embedding_type)(text)


# --------------------------------------------------------------------------- splitting

# A blank line: a whitespace run holding at least two newlines, matched from
# the start of the run only (the lookbehind), so each run is scanned once.
_PARAGRAPH = re.compile(r"(?<!\s)(?:[^\S\n]*+\n){2,}+\s*+")
# A sentence end: . ! ? … । ؟ (then optional closing quotes or brackets)
# followed by whitespace, or a CJK full stop followed by anything. Group 1 is
# the whitespace after it (empty after a CJK stop with no space).
_CLOSERS = "\"'”’»」』）)\\]"
_SENTENCE = re.compile(rf"(?:[.!?…।؟][{_CLOSERS}]*+(?=\s)|[。！？｡][{_CLOSERS}]*+)(\s*+)")
_SPACE = re.compile(r"\s+")
_NONSPACE = re.compile(r"\S")


class _Boundaries:
    """Cut points of one text, found once: ``cuts[i]`` ends a piece, ``starts[i]`` begins the next."""

    __slots__ = ("cuts", "starts")

    def __init__(self, cuts: list[int], starts: list[int]) -> None:
        self.cuts = cuts
        self.starts = starts

    def last(self, low: int, high: int) -> int:
        """Index of the last cut in ``(low, high]``, or -1."""
        i = bisect_right(self.cuts, high) - 1
        return i if i >= 0 and self.cuts[i] > low else -1


def _paragraphs(text: str) -> _Boundaries:
    cuts, starts = [], []
    for m in _PARAGRAPH.finditer(text):
        if m.start() > 0:
            cuts.append(m.start())
            starts.append(m.end())
    return _Boundaries(cuts, starts)


def _sentences(text: str, max_chars: int) -> _Boundaries:
    cuts, starts = [], []
    n = len(text)
    words: _Words | None = None
    for m in _SENTENCE.finditer(text):
        cut, start = m.start(1), m.end(1)
        if start >= n:
            break
        if cut == start:
            # A CJK stop with no space after it sits inside a whitespace-delimited
            # word; cut there only when that word cannot fit whole anyway, so
            # that words which fit are never split.
            if words is None:
                words = _Words(text)
            if words.length_at(cut) <= max_chars:
                continue
        cuts.append(cut)
        starts.append(start)
    return _Boundaries(cuts, starts)


class _Words:
    """The whitespace runs of a text, to find the extent of the word at a position."""

    __slots__ = ("ends", "n", "starts")

    def __init__(self, text: str) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        for m in _SPACE.finditer(text):
            self.starts.append(m.start())
            self.ends.append(m.end())
        self.n = len(text)

    def length_at(self, pos: int) -> int:
        """Length of the word holding ``pos`` (``text[pos]`` is not whitespace)."""
        i = bisect_right(self.ends, pos) - 1
        begin = self.ends[i] if i >= 0 else 0
        end = self.starts[i + 1] if i + 1 < len(self.starts) else self.n
        return end - begin


def _last_space(text: str, low: int, high: int) -> tuple[int, int] | None:
    """The last whitespace run that starts after a word in ``(low, high]``: ``(cut, next start)``."""
    best = None
    for m in _SPACE.finditer(text, low + 1, high + 1):
        if not text[m.start() - 1].isspace():
            best = m.start()
    if best is None:
        return None
    return best, _SPACE.match(text, best).end()


def _skip_space(text: str, pos: int) -> int:
    m = _NONSPACE.search(text, pos)
    return m.start() if m else len(text)


def _rstrip_to(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def split_spans(text: str, max_chars: int, overlap_chars: int = 0) -> list[tuple[int, int]]:
    """The ``(start, end)`` offsets of :func:`split_text`'s chunks in ``text``.

    ``text[start:end]`` is the chunk exactly: it starts and ends with a
    non-whitespace character and is at most ``max_chars`` long.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    if not 0 <= overlap_chars < max_chars:
        raise ValueError("overlap_chars must be at least 0 and below max_chars")
    text_end = _rstrip_to(text, 0, len(text))
    start = _skip_space(text, 0)
    if start >= text_end:
        return []
    if text_end - start <= max_chars:
        return [(start, text_end)]

    paragraphs = _paragraphs(text)
    sentences = _sentences(text, max_chars)

    def cut_from(start: int, low: int) -> tuple[int, int, bool]:
        """Best ``(end, next start, found)`` for a chunk at ``start`` that ends after ``low``."""
        high = start + max_chars
        for bounds in (paragraphs, sentences):
            i = bounds.last(low, high)
            if i >= 0:
                return bounds.cuts[i], bounds.starts[i], True
        space = _last_space(text, low, high)
        if space is not None:
            return space[0], space[1], True
        return high, high, False  # one word longer than max_chars: cut inside it

    spans: list[tuple[int, int]] = []
    prev_end = -1
    while True:
        if text_end - start <= max_chars:
            spans.append((start, text_end))
            return spans
        if prev_end < 0:
            end, after, _ = cut_from(start, start)
        else:
            end, after, found = cut_from(start, prev_end)
            if not found:
                # Nothing fits after the overlap: drop the overlap if that lets
                # the next word stay whole, else cut inside it, overlap kept.
                plain = _skip_space(text, prev_end)
                p_end, p_after, p_found = cut_from(plain, plain)
                if p_found or plain > prev_end:
                    start, end, after = plain, p_end, p_after
                if text_end - start <= max_chars:
                    spans.append((start, text_end))
                    return spans
        end = _rstrip_to(text, start, end)
        spans.append((start, end))
        if overlap_chars:
            start = _overlap_start(text, spans[-1], overlap_chars)
            prev_end = end
        else:
            start = _skip_space(text, after)
            if start >= text_end:
                return spans


def _overlap_start(text: str, span: tuple[int, int], overlap_chars: int) -> int:
    """Where the next chunk starts: within the last ``overlap_chars`` of ``span``, at a word if possible."""
    start, end = span
    lo = max(start, end - overlap_chars)
    if lo == start or text[lo - 1].isspace():
        return _skip_space(text, lo)
    m = _SPACE.search(text, lo, end)
    if m is not None:
        return m.end()
    return lo  # no word starts in the overlap: start mid-word (CJK, long words)


def split_text(text: str, max_chars: int, overlap_chars: int = 0) -> list[str]:
    """Cut ``text`` into stripped, non-empty chunks of at most ``max_chars`` characters.

    Boundaries are preferred in this order: blank line, sentence end,
    whitespace; a word is cut only when it alone is over ``max_chars``. Each
    chunk holds as many whole units as fit. With ``overlap_chars``, each chunk
    after the first starts with (up to) that many trailing characters of the
    previous one, from a word start when there is one. A text that fits comes
    back as ``[text.strip()]``; a blank text as ``[]``.
    """
    if len(text) <= max_chars:
        stripped = text.strip()
        return [stripped] if stripped else []
    return [text[a:b] for a, b in split_spans(text, max_chars, overlap_chars)]


def truncate_text(text: str, max_chars: int) -> str:
    """The first ``max_chars`` characters of ``text`` (stripped), not ending inside a word if avoidable.

    The cut moves back to the last whitespace when there is one in the last
    10% of the piece.
    """
    text = text.strip()
    if len(text) <= max_chars:
        return text
    if not text[max_chars].isspace():
        floor = max_chars - max(1, max_chars // 10)
        for i in range(max_chars - 1, floor - 1, -1):
            if text[i].isspace():
                return text[:i].rstrip()
    return text[:max_chars].rstrip()


# --------------------------------------------------------------------------- chunker


class Chunker:
    """Apply ``chunking.strategy`` to records: ``chunker(record) -> list[Chunk] | Failure``."""

    def __init__(
        self,
        cfg: ChunkingConfig,
        *,
        model: str,
        input_type: str | None,
        embedding_type: str,
    ) -> None:
        self.cfg = cfg
        self.hash = make_hasher(model, input_type, embedding_type)

    def __call__(self, record: Record) -> list[Chunk] | Failure:
        """Cut one record; a record that cannot be embedded becomes a :class:`Failure`."""
        max_chars = self.cfg.max_chars
        text = record.text
        strategy = self.cfg.strategy
        if len(text) <= max_chars:
            pieces = [text.strip()]
        elif strategy == "split":
            pieces = split_text(text, max_chars, self.cfg.overlap_chars)
        elif strategy == "truncate":
            pieces = [truncate_text(text, max_chars)]
        else:
            stripped = text.strip()
            if len(stripped) > max_chars:
                return self._failure(
                    record,
                    "too_long",
                    f"text is {len(stripped)} characters, over chunking.max_chars={max_chars}",
                )
            pieces = [stripped]
        if not pieces or not pieces[0]:
            return self._failure(record, "empty_text", "text is empty or only whitespace")
        doc_id = record.doc_id
        if len(pieces) == 1:
            return [self._chunk(record, doc_id, 0, pieces[0])]
        return [self._chunk(record, f"{doc_id}#{i}", i, piece) for i, piece in enumerate(pieces)]

    def _chunk(self, record: Record, chunk_id: str, index: int, text: str) -> Chunk:
        return Chunk(
            id=chunk_id,
            doc_id=record.doc_id,
            chunk_index=index,
            text=text,
            source=record.source,
            location=record.location,
            content_hash=self.hash(text),
            metadata=record.metadata,
            part=record.part,
        )

    @staticmethod
    def _failure(record: Record, error_type: str, message: str) -> Failure:
        return Failure.of(record, error_type, message)

    def cut(self, block: list[Record | Failure | FileEnd]) -> list[Piece]:
        """Each record of a block as its chunks (or its failure); failures and ends pass through."""
        out: list[Piece] = []
        for item in block:
            if isinstance(item, Record):
                result = self(item)
                out.append(result if isinstance(result, Failure) else tuple(result))
            else:
                out.append(item)
        return out


async def chunk_stage(
    receive: ObjectReceiveStream[list[Record | Failure | FileEnd]],
    send: ObjectSendStream[list[Piece]],
    *,
    chunker: Chunker,
    cpu: anyio.CapacityLimiter,
) -> None:
    """Cut each block of records into chunks, in a worker thread."""
    async with receive, send:
        async for block in receive:
            await send.send(await anyio.to_thread.run_sync(chunker.cut, block, limiter=cpu))
