#!/usr/bin/env bash
# Build the release artefacts: a wheel and an sdist of the core (mlx-zoo) and of every plugin in
# plugins/, into dist/ (git-ignored), with PyPA's `build` -- each wheel built from its sdist, in
# an isolated build environment, as a user's `pip install` from PyPI would see it. The `build`
# tool lives in its own virtual environment ($BUILD_VENV, kept between runs). Extra arguments
# name the projects to build (default: core and every plugin), e.g. `core plugins/mlx-llama`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUILD_VENV=${BUILD_VENV:-${TMPDIR:-/tmp}/mlx-zoo-build-venv}
OUT=${DIST_DIR:-dist}
if [ ! -x "$BUILD_VENV/bin/python" ] || ! "$BUILD_VENV/bin/python" -m build --version >/dev/null 2>&1; then
    "$PYTHON" -m venv --clear "$BUILD_VENV"
    "$BUILD_VENV/bin/python" -m pip install --quiet "build>=1.2"
fi
if [ "$#" -gt 0 ]; then projects=("$@"); else projects=(core plugins/mlx-*); fi
mkdir -p "$OUT"
for project in "${projects[@]}"; do
    [ -f "$project/pyproject.toml" ] || { echo "build_dists: $project has no pyproject.toml" >&2; exit 2; }
    name=$(basename "$project")
    # the artefacts of an earlier build of this project go first: pip must not pick a stale one
    norm=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$project/pyproject.toml" | head -1 | tr '-' '_')
    rm -f "$OUT/$norm"-*.whl "$OUT/$norm"-*.tar.gz
    echo "build_dists: $project"
    "$BUILD_VENV/bin/python" -m build --outdir "$OUT" "$project" >"$OUT/.build-$name.log" 2>&1 \
        || { cat "$OUT/.build-$name.log" >&2; exit 1; }
done
ls -l "$OUT"
