"""Progress of a run: counters, a logfmt line every 10 s, or a live line on a terminal."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from pipeline.logs import LogSetup, format_duration, get_logger
from pipeline.sources.listed import Inputs
from pipeline.types import END_OF_FILE, Counts, EmbeddedBatch, FileEnd, InputFile

PROGRESS_EVERY_S = 10.0


@dataclass
class Progress:
    """Counters of this run, for progress lines and the summary."""

    started: float = field(default_factory=time.monotonic)
    counts: Counts = field(default_factory=Counts)
    files: int = 0
    shards: int = 0
    throttled: int = 0  # requests answered 429
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of each input still to finish
    bytes_total: int = 0
    bytes_done: int = 0
    reading: dict[str, int] = field(default_factory=dict)  # bytes read so far of inputs not finished
    failed_in: dict[str, int] = field(default_factory=dict)  # failed rows counted, by input url
    # inputs were expected all at once (expect_all): each one's size is kept from when its reading starts
    _sized_on_start: bool = False
    # of inputs not finished: the first and the latest location read (this run), and the latest written
    _read_span: dict[str, list[int]] = field(default_factory=dict)
    _written_at: dict[str, int] = field(default_factory=dict)

    def read_bytes(self, inp: InputFile, n: int) -> None:
        """``n`` more bytes of ``inp`` were read (called from reader threads)."""
        key = inp.key
        size = self.sizes.get(key)
        if size is None:
            if not self._sized_on_start:
                return
            size = self.sizes[key] = _bytes_of(inp)  # (opened)
        reading = self.reading
        reading[key] = min(reading.get(key, 0) + n, size)

    def expect(self, inp: InputFile) -> None:
        """Count ``inp`` (a file or a piece of one) among the bytes this run has to read."""
        size = _bytes_of(inp)
        self.bytes_total += size - self.sizes.get(inp.key, 0)
        self.sizes[inp.key] = size

    def expect_all(self, inputs: Inputs) -> None:
        """Count every one of ``inputs`` among the bytes to read, at once: a run of a million inputs keeps
        no entry for each; an input's own size is kept only from when its reading starts (:meth:`opened`)."""
        self.bytes_total += inputs.bytes_to_read()
        self._sized_on_start = True

    def opened(self, inp: InputFile) -> None:
        """The reading of ``inp`` started: keep its size until it is finished."""
        if self._sized_on_start and inp.key not in self.sizes:
            self.sizes[inp.key] = _bytes_of(inp)

    def read_items(self, block: list[Any]) -> None:
        """A block of items was read: note the locations of its inputs' first and latest records."""
        spans, source, part, span = self._read_span, None, None, None
        for item in block:
            if isinstance(item, FileEnd):
                continue
            if item.source is not source or item.part is not part:
                source, part = item.source, item.part
                span = spans.setdefault(source + part, [item.location, item.location])
            span[1] = item.location  # type: ignore[index]

    def add(self, batch: EmbeddedBatch) -> None:
        """Count a batch handed to the sink (committed with the next commit, the run's last at the latest)."""
        for key, location in batch.marks:
            if location >= END_OF_FILE:
                self._read_span.pop(key, None)
                self._written_at.pop(key, None)
                if key in self.sizes:
                    self.bytes_done += self.sizes.pop(key)
                    self.reading.pop(key, None)
            else:
                self._written_at[key] = max(location, self._written_at.get(key, location))
        self.counts += Counts.of(batch)
        for failure in batch.failures:
            self.failed_in[failure.source] = self.failed_in.get(failure.source, 0) + 1

    def read_again(self, url: str) -> None:
        """Input ``url`` changed and is read again whole: its failed rows counted so far are replaced by
        those of this reading (a bad line still there is one failure, as in the dataset, not one a round)."""
        self.counts += Counts(rows_failed=-self.failed_in.pop(url, 0))

    def done_bytes(self) -> float:
        """The bytes of this run's input that are done: of files whose rows were all handed to the sink, all;
        of the others, those read up to the last record handed to it (by location, between the first and the
        latest read). Bytes read ahead and never written (a run cut short) do not count."""
        done = float(self.bytes_done)
        for key, n in list(self.reading.items()):  # (reader threads add to it meanwhile)
            span, written = self._read_span.get(key), self._written_at.get(key)
            if span is not None and written is not None and written >= span[0]:
                done += n * min(1.0, (written - span[0] + 1) / (span[1] - span[0] + 1))
        return done

    @property
    def fraction(self) -> float | None:
        """How much of this run's input is done (:meth:`done_bytes`), as a share of its bytes."""
        if not self.bytes_total:
            return None
        return min(1.0, self.done_bytes() / self.bytes_total)

    def fields(self) -> dict[str, Any]:
        """The counters and rates, as log fields."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        fraction = self.fraction
        eta = elapsed * (1 - fraction) / fraction if fraction else None
        c = self.counts
        return {
            "records": c.records_read,
            "rows": c.rows_embedded,
            # rows whose vector came from the dataset itself or run.reuse_from, not from the API
            **({"reused": c.rows_reused} if c.rows_reused else {}),
            "failed": c.rows_failed,
            "requests": c.requests,
            "retries": c.retries,
            "throttled": self.throttled,
            "tokens": c.total_tokens,
            "rows_per_s": round(c.rows_embedded / elapsed, 1),
            "tokens_per_min": round(c.total_tokens / elapsed * 60),
            "elapsed": format_duration(elapsed),
            # a run with nothing to read shows neither (not "done_pct= eta=?")
            **({"done_pct": round(fraction * 100, 1), "eta": format_duration(eta)} if fraction is not None else {}),
        }


def _bytes_of(inp: InputFile) -> int:
    """The bytes reading ``inp`` means: a JSONL piece its range, anything else its file's size
    (:meth:`Inputs.bytes_to_read` counts the same way)."""
    return (inp.end or 0) - inp.start if inp.part.startswith("#bytes") else inp.size or 0


async def report_progress(progress: Progress, logs: LogSetup | None) -> None:
    """Report ``progress`` until cancelled: a live line on a terminal, else a line every 10 s."""
    live = logs.console if logs and logs.live else None
    log = get_logger()
    every = 0.5 if live else PROGRESS_EVERY_S
    throttled = 0
    while True:
        await anyio.sleep(every)
        fields = progress.fields()
        if progress.throttled > throttled and live is None:  # one summary line, not one per 429
            log.info("rate_limited", answered_429=progress.throttled - throttled, in_last_s=every,
                     hint="the endpoint's rate limit is binding; requests wait and are retried")
            throttled = progress.throttled
        if live is not None:
            fraction = progress.fraction or 0.0
            bar = "█" * int(fraction * 20) + "·" * (20 - int(fraction * 20))
            live.show(
                f"[{bar}] {fraction * 100:5.1f}%  eta {fields.get('eta', '?')}  "
                f"records {fields['records']:,}  rows {fields['rows']:,}  failed {fields['failed']:,}  "
                f"tokens {fields['tokens']:,}  {fields['rows_per_s']:,.0f} rows/s  "
                f"retries {fields['retries']}  429s {fields['throttled']}  {fields['elapsed']}"
            )
        else:
            log.info("progress", **fields)
