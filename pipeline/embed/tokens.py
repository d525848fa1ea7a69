"""Token counts known before a call: a rough estimate, corrected later against ``usage``."""

from __future__ import annotations


def estimate_tokens(text: str) -> int:
    """A rough token count before the call (learned against ``usage`` later)."""
    return len(text) // 4 + 1
