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

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Float32 vectors (one row per text, L2-normalised) and the token count."""
        with self._lock:
            vectors = self._model.embed(texts, norm=True)
            tokens = sum(sum(e.attention_mask) for e in self._model.tokenizer.encode_batch(texts))
        return np.asarray(vectors, dtype=np.float32), tokens


@cache
def shared_model() -> LocalModel:
    """One model per process (loading takes a fraction of a second and 16 MB)."""
    return LocalModel()
