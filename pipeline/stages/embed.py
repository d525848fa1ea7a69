"""Embed: one of ``embedding.concurrency`` workers sending batches to the embedder.

What a request sends, how it is retried and paced, lives in
:mod:`pipeline.embed`; this stage only moves batches to the embedder and
answers to the writer. Once the :class:`SendGate` closes (``run.max_tokens``
is spent, or a signal asked the run to stop), batches are not sent: a
:class:`Skipped` tells the writer to stop at the first one missing, and
their records are read again by the next run.
"""

from __future__ import annotations

from typing import Callable

from anyio.abc import ObjectReceiveStream, ObjectSendStream

from pipeline.embed import Embedder
from pipeline.errors import BudgetExhausted
from pipeline.types import Batch, EmbeddedBatch, Skipped


class SendGate:
    """Once closed, no batch is sent any more."""

    def __init__(self, on_budget_spent: Callable[[str], None] = lambda _: None) -> None:
        self.closed = False
        self.budget_spent = False  # closed because the next request would pass run.max_tokens
        self._on_budget_spent = on_budget_spent

    def close(self) -> None:
        """Send nothing more (a signal asked the run to stop)."""
        self.closed = True

    def budget_exhausted(self, reason: str) -> None:
        """Send nothing more: the budget is spent; ``on_budget_spent`` hears why, once."""
        if not self.budget_spent:
            self.budget_spent = self.closed = True
            self._on_budget_spent(reason)


async def embed_stage(
    receive: ObjectReceiveStream[Batch],
    send: ObjectSendStream[EmbeddedBatch | Skipped],
    *,
    embedder: Embedder,
    gate: SendGate,
) -> None:
    """Embed batches as they come; skip them once the gate is closed."""
    async with receive, send:
        async for batch in receive:
            if gate.closed:
                await send.send(Skipped(batch.seq))
                continue
            try:
                answer: EmbeddedBatch | Skipped = await embedder.embed(batch)
            except BudgetExhausted as exc:
                gate.budget_exhausted(str(exc))
                answer = Skipped(batch.seq)
            await send.send(answer)
