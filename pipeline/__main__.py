"""``python -m pipeline``."""

from .cli import run

run()
