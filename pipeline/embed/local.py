"""``provider: local``: the embedded wordllama model, fully offline.

The weights and tokenizer ship inside the ``wordllama`` wheel; loading them
from the package directory with downloads disabled never touches the network.
:class:`LocalModel` is the model (``pipeline serve`` uses it too);
:class:`LocalEmbedder` is the embedder of the run.
"""

from __future__ import annotations

import os
import threading
from functools import cache

import anyio
import numpy as np

from pipeline.config import EmbeddingConfig
from pipeline.embed import vectors
from pipeline.config import LOCAL_MODEL
from pipeline.embed.limits import Budget
from pipeline.embed.tokens import estimate_tokens
from pipeline.types import Batch, EmbeddedBatch, Usage

DIMENSIONS = 256
MODEL_NAME = LOCAL_MODEL


class LocalModel:
    """wordllama's ``l2_supercat`` 256-dimension model, thread-safe to call."""

    dimensions = DIMENSIONS

    def __init__(self) -> None:
        import wordllama  # imported lazily: only the local provider needs it

        try:
            self._model = wordllama.WordLlama.load(
                cache_dir=os.path.dirname(wordllama.__file__), disable_download=True
            )
        except Exception as exc:  # a broken install; say so in one line
            raise RuntimeError(f"cannot load the local wordllama model: {exc}") from exc
        self._lock = threading.Lock()

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text as the model's tokenizer counts them (padding excluded), at least one."""
        with self._lock:
            encodings = self._model.tokenizer.encode_batch(texts)
        return [max(1, sum(e.attention_mask)) for e in encodings]

    def vectors(self, texts: list[str]) -> np.ndarray:
        """Float32 vectors, one L2-normalised row per text."""
        with self._lock:
            return np.asarray(self._model.embed(texts, norm=True), dtype=np.float32)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Float32 vectors (one row per text, L2-normalised) and the token count."""
        return self.vectors(texts), sum(self.count_tokens(texts))


@cache
def shared_model() -> LocalModel:
    """One model per process (loading takes a fraction of a second and 16 MB)."""
    return LocalModel()


class LocalEmbedder:
    """Embeds batches with the in-process wordllama model (no network)."""

    def __init__(self, cfg: EmbeddingConfig, *, budget: Budget | None = None) -> None:
        """Load the packaged model; ``budget`` counts its tokens like the API's."""
        self.cfg = cfg
        self._budget = budget
        self._model = shared_model()
        self.dimensions = vectors.width(cfg.embedding_type, self._model.dimensions)
        self.reported_model: str | None = MODEL_NAME  # the model that answers, whatever embedding.model says

    async def __aenter__(self) -> LocalEmbedder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def embed(self, batch: Batch) -> EmbeddedBatch:
        """Vectors for every chunk, computed in a worker thread."""
        if not batch.chunks:
            empty = np.empty((0, self.dimensions), dtype=vectors.DTYPES[self.cfg.embedding_type])
            return EmbeddedBatch.answering(batch, batch.chunks, empty, Usage())
        texts = [c.text for c in batch.chunks]
        estimate = sum(estimate_tokens(t) for t in texts)
        held = self._budget.reserve(estimate) if self._budget is not None else 0
        floats, tokens = await anyio.to_thread.run_sync(self._model.embed, texts)
        if self._budget is not None:
            self._budget.settle(held, estimate, tokens)
        matrix = vectors.quantize(floats, self.cfg.embedding_type)
        usage = Usage(requests=1, prompt_tokens=tokens, total_tokens=tokens)
        return EmbeddedBatch.answering(batch, batch.chunks, matrix, usage)
