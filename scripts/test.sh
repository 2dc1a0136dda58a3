#!/usr/bin/env bash
# Set up a fresh virtual environment (.venv) with the core, every plugin and the test
# dependencies, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh -r requirements-test.txt
.venv/bin/python -m pytest "$@"
