"""pipeline.embed: the Embedder seam and the one factory that builds http, local and reusing embedders."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest
from conftest import ROOT

from pipeline.config import EmbeddingConfig
from pipeline.embed import Embedder, make_embedder
from pipeline.embed.http import HttpEmbedder
from pipeline.embed.limits import RateLimiter
from pipeline.embed.local import LocalEmbedder
from pipeline.embed.reuse import ReusingEmbedder


def test_factory_builds_each_provider() -> None:
    """provider: http gives an HttpEmbedder with the given limiter, provider: local a LocalEmbedder."""
    limiter = RateLimiter(60, None)
    http = make_embedder(EmbeddingConfig(url="http://127.0.0.1:9"), None, limiter=limiter)
    assert isinstance(http, HttpEmbedder) and http.retrying.limiter is limiter
    assert isinstance(make_embedder(EmbeddingConfig(provider="local"), None), LocalEmbedder)


@pytest.mark.anyio
async def test_factory_wraps_for_reuse() -> None:
    """Given a reuse index the factory wraps the provider's embedder; entering it enters the inner one."""
    index = object()
    embedder: Embedder = make_embedder(
        EmbeddingConfig(provider="local"), None, reuse=index, cpu_limiter=anyio.CapacityLimiter(1)  # type: ignore[arg-type]
    )
    assert isinstance(embedder, ReusingEmbedder) and isinstance(embedder.inner, LocalEmbedder)
    assert embedder.index is index and embedder.dimensions == 256
    async with embedder:
        pass


def test_importing_the_seam_is_cheap() -> None:
    """Importing pipeline.embed (and its codecs) loads neither httpx nor the dataset modules."""
    code = (
        "import sys, pipeline.embed, pipeline.embed.vectors; "
        "print(sorted(m for m in ('httpx', 'pipeline.embed.http', 'pipeline.dataset.reuse_index') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
