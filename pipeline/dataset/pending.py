"""What the writer has taken since its last commit: accounting, resume marks, and the sources of its rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.types import Counts, EmbeddedBatch


def records_by_source(batch: EmbeddedBatch) -> dict[str, int]:
    """The records ``batch`` completes, by source url.

    A record is complete in the batch whose mark for its file reaches its
    location (its last chunk or its failure is there); the rows of one
    record share a location, so completed records are distinct locations.
    """
    marks = dict(batch.marks)
    completed = {(item.source, item.part, item.location) for item in (*batch.chunks, *batch.failures)
                 if (mark := marks.get(item.source + item.part)) is not None and item.location <= mark}
    return dict(Counter(source for source, _, _ in completed))  # (one set, not one a source: many small files)


@dataclass
class Pending:
    """Accounting of the batches written since the last commit."""

    counts: Counts = field(default_factory=Counts)
    marks: dict[str, int] = field(default_factory=dict)
    #: key → the location of the last record of these batches' rows
    last: dict[str, int] = field(default_factory=dict)
    #: url → records completed; and the sources of the data and of the errors rows (dicts as ordered sets:
    #: in read order, which is the listing's, sorting them for the shard entry is one pass, not n log n)
    records: dict[str, int] = field(default_factory=dict)
    data_sources: dict[str, None] = field(default_factory=dict)
    error_sources: dict[str, None] = field(default_factory=dict)

    def add(self, batch: EmbeddedBatch) -> None:
        self.counts += Counts.of(batch)
        for url, location in batch.marks:
            if location > self.marks.get(url, -1):
                self.marks[url] = location
        for item in (*batch.chunks, *batch.failures):
            key = item.source + item.part
            if item.location > self.last.get(key, -1):
                self.last[key] = item.location
        for url, n in records_by_source(batch).items():
            self.records[url] = self.records.get(url, 0) + n
        self.data_sources.update(dict.fromkeys(c.source for c in batch.chunks))
        self.error_sources.update(dict.fromkeys(f.source for f in batch.failures))

    def entry_fields(self, kind: str, owner: bool) -> dict[str, Any]:
        """What a shard entry of ``kind`` records of these batches (rows are the shard's own).

        The owner entry (the data shard when there is one) carries the
        accounting; ``sources`` lists every source with rows in the shard
        (and, on the owner, every source with records), for replacing them.
        """
        c = self.counts if owner else Counts()
        rows_of = self.data_sources if kind == "data" else self.error_sources
        sources = {url: 0 for url in rows_of}
        if owner:
            sources.update(self.records)
        return {
            "requests": c.requests,
            "retries": c.retries,
            "prompt_tokens": c.prompt_tokens,
            "total_tokens": c.total_tokens,
            "records": c.records_read,
            "rows_reused": c.rows_reused,
            "marks": dict(sorted(self.marks.items())) if owner else {},
            "sources": dict(sorted(sources.items())),
        }
