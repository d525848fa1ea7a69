"""Embed: one of ``embedding.concurrency`` workers sending batches to the embedder.

What a request sends, how it is retried and paced, lives in
:mod:`pipeline.embed`; this stage only moves batches to the embedder and
answers to the writer. Once ``run.max_tokens`` is spent, batches are not
sent: a :class:`Skipped` tells the writer to stop at the first one missing.
"""

from __future__ import annotations

from typing import Callable

from anyio.abc import ObjectReceiveStream, ObjectSendStream

from pipeline.embed.http import Embedder
from pipeline.errors import BudgetExhausted
from pipeline.types import Batch, EmbeddedBatch, Skipped


class BudgetGate:
    """Closes for good the first time a request would pass ``run.max_tokens``."""

    def __init__(self, on_close: Callable[[str], None] = lambda _: None) -> None:
        self.closed = False
        self._on_close = on_close

    def close(self, reason: str) -> None:
        """No batch is sent from now on; ``on_close`` hears why, once."""
        if not self.closed:
            self.closed = True
            self._on_close(reason)


async def embed_stage(
    receive: ObjectReceiveStream[Batch],
    send: ObjectSendStream[EmbeddedBatch | Skipped],
    *,
    embedder: Embedder,
    gate: BudgetGate,
) -> None:
    """Embed batches as they come; skip them once the budget gate is closed."""
    async with receive, send:
        async for batch in receive:
            if gate.closed:
                await send.send(Skipped(batch.seq))
                continue
            try:
                answer: EmbeddedBatch | Skipped = await embedder.embed(batch)
            except BudgetExhausted as exc:
                gate.close(str(exc))
                answer = Skipped(batch.seq)
            await send.send(answer)
