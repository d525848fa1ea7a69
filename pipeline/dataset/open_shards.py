"""The shard files a file dataset's next commit will publish, and this rank's names for new ones.

A writer keeps at most one open shard per kind (``data``, ``errors``). A
new one takes the rank's next sequence number; after the lease was lost
and taken back (``fenced``), a name another writer may have used meanwhile
is skipped, never overwritten.
"""

from __future__ import annotations

from typing import Callable

import fsspec
import pyarrow as pa

from pipeline.dataset.shard_writer import ShardWriter
from pipeline.errors import CommitFailed
from pipeline.storage import join


class OpenShards:
    """The open shard of each kind, since when one is open, and how new ones are named."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        root: str,
        *,
        shown: str,
        rank: int,
        next_seq: dict[str, int],
        fmt: str,
        compression: str | None,
        dictionary_fields: list[str],
        fenced: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        self.fs, self.root, self.shown, self.rank = fs, root, shown, rank
        self._next_seq = dict(next_seq)
        self._fmt = fmt
        self._ext = ".arrow" if fmt == "arrow" else ".parquet"
        self._compression = compression
        self._dictionary_fields = dictionary_fields
        self._fenced = fenced
        self._clock = clock
        #: kind → its open shard
        self.files: dict[str, ShardWriter] = {}
        #: when the first of them was opened (the clock's time), None when none is
        self.opened_at: float | None = None

    def must_roll(self, kind: str, table: pa.Table | None, shard_rows: int) -> bool:
        """Whether ``table`` cannot join the open shard of ``kind`` (too many rows, or another schema)."""
        shard = self.files.get(kind)
        if shard is None or table is None:
            return False
        return shard.rows + table.num_rows > shard_rows or table.schema != shard.schema

    def open(self, kind: str, schema: pa.Schema) -> ShardWriter:
        """The open shard of ``kind``, opened now when there is none."""
        shard = self.files.get(kind)
        if shard is None:
            shard = self.files[kind] = self.new(kind, schema)
            if self.opened_at is None:
                self.opened_at = self._clock()
        return shard

    def new(self, kind: str, schema: pa.Schema) -> ShardWriter:
        """A new shard file of ``kind``, under this rank's next name for it (not counted as open)."""
        seq = self._next_seq[kind]
        rel = f"{kind}/part-{self.rank:05d}-{seq:06d}{self._ext}"
        while self._fenced() and self.fs.exists(join(self.root, rel)):
            # taken by a writer that lost the lease after we opened: never overwrite it
            seq += 1
            rel = f"{kind}/part-{self.rank:05d}-{seq:06d}{self._ext}"
        self._next_seq[kind] = seq + 1
        # not worth it for unique strings and vectors
        dictionary: list[str] | bool = self._dictionary_fields if kind == "data" else True
        try:
            return ShardWriter(self.fs, self.root, rel, schema, fmt=self._fmt,
                               compression=self._compression, dictionary=dictionary)
        except (OSError, pa.ArrowException) as exc:
            raise CommitFailed(f"cannot create {join(self.shown, rel)}: {exc}") from exc

    def published(self) -> None:
        """The open shards went out with a commit: none is open now."""
        self.files.clear()
        self.opened_at = None

    def discard(self) -> None:
        """Delete the open shards' files (a failed commit, or a close after one)."""
        for shard in self.files.values():
            shard.discard()
        self.published()
