"""The embedded model for ``provider: local``: wordllama, fully offline.

The weights and tokenizer ship inside the ``wordllama`` wheel; loading them
from the package directory with downloads disabled never touches the network.
"""

from __future__ import annotations

import os
import threading
from functools import cache

import numpy as np

DIMENSIONS = 256
MODEL_NAME = "wordllama-l2-supercat-256"


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
