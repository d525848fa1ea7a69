"""``python -m pipeline.serve``: the same server as ``pipeline serve``."""

import argparse
import sys

from pipeline.errors import ConfigError
from pipeline.serve.app import add_arguments, main

parser = argparse.ArgumentParser(prog="python -m pipeline.serve", description="A local embeddings API server.")
add_arguments(parser)
namespace = parser.parse_args()
try:
    sys.exit(main(namespace))
except ConfigError as exc:
    parser.error(str(exc))
