#!/usr/bin/env bash
# Set up a fresh virtual environment (.venv) with the core, every plugin and the test
# dependencies, then run the test suite (extra arguments go to pytest), then install a plugin
# from freshly built wheels into another fresh venv and run its own tests there -- the path
# `pip install mlx-hunyuan` takes (scripts/test_wheels.sh; skipped when pytest gets arguments,
# i.e. when running a subset).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh -r requirements-test.txt
.venv/bin/python -m pytest "$@"
if [ "$#" -eq 0 ]; then
    bash scripts/test_wheels.sh
fi
