#!/usr/bin/env bash
# Set up a fresh virtual environment (.venv) with the core and every plugin, list what is
# installed, and generate text with the qwen2 demo checkpoint mlx-qwen2 ships (offline).
# Extra arguments go to `mlx-zoo generate` (e.g. --model demo:llama4 --prompt "...").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
.venv/bin/mlx-zoo list
.venv/bin/mlx-zoo generate "$@"
