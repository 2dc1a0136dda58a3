#!/usr/bin/env bash
# Set up a fresh virtual environment (.venv) with the core and every plugin, list what is
# installed, and generate text with the embedded qwen2 demo checkpoint (offline).
# Extra arguments go to `mlx-zoo generate` (e.g. --model demo:llama4 --prompt "...").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv --clear .venv
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
.venv/bin/python -m pip install --quiet --no-build-isolation \
    "./core[generate]" ./plugins/mlx-qwen2 ./plugins/mlx-hunyuan ./plugins/mlx-llama4
.venv/bin/mlx-zoo list
.venv/bin/mlx-zoo generate "$@"
