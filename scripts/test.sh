#!/usr/bin/env bash
# Set up a fresh virtual environment (.venv) with the core, every plugin and the test
# dependencies, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv --clear .venv
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
.venv/bin/python -m pip install --quiet --no-build-isolation \
    ./core ./plugins/mlx-qwen2 ./plugins/mlx-hunyuan ./plugins/mlx-llama4 \
    "./core[generate]" -r requirements-test.txt
.venv/bin/python -m pytest "$@"
