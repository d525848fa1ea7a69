#!/usr/bin/env bash
# Regenerates the pinned requirement files from pyproject.toml.
# requirements.txt is what Heroku's Python buildpack installs (pip); the
# trailing "-e ." installs the package itself, with its console script.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-uv}
"$uv" pip compile pyproject.toml --python-version 3.11 --no-header -q -o requirements.txt
echo "-e ." >> requirements.txt
"$uv" pip compile pyproject.toml --python-version 3.11 --no-header -q --extra test --extra ray -o requirements-dev.txt
echo "-e .[test,ray]" >> requirements-dev.txt
