#!/usr/bin/env bash
# The distributions as users get them: build every wheel and sdist into dist/
# (scripts/build_dists.sh), check what each wheel holds (tests/integration/test_wheels.py), then install one
# plugin *from the wheels* into a fresh virtual environment -- mlx-zoo and the plugin from dist/
# only, never from this checkout; their third-party dependencies from the registry, torch as the
# CPU wheel requirements-test.txt pins -- and run that plugin's own tests against the install.
#
#   bash scripts/test_wheels.sh [PLUGIN]     PLUGIN: a directory name in plugins/ (default:
#                                            mlx-hunyuan once it has tests/, else mlx-llama)
# Environment: WHEEL_VENV (the venv to create, default $TMPDIR/mlx-zoo-wheel-venv), NO_BUILD=1
# (reuse dist/ as it is), PYTHON (the interpreter for the venvs). Extra arguments after PLUGIN
# go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ "$#" -gt 0 ]; then
    PLUGIN=$1; shift
elif [ -d plugins/mlx-hunyuan/tests ]; then
    PLUGIN=mlx-hunyuan
else
    PLUGIN=mlx-llama
fi
[ -f "plugins/$PLUGIN/pyproject.toml" ] || { echo "test_wheels: no plugins/$PLUGIN" >&2; exit 2; }
[ -d "plugins/$PLUGIN/tests" ] || { echo "test_wheels: plugins/$PLUGIN has no tests/" >&2; exit 2; }
VENV=${WHEEL_VENV:-${TMPDIR:-/tmp}/mlx-zoo-wheel-venv}
start=$SECONDS

[ "${NO_BUILD:-0}" = 1 ] || bash scripts/build_dists.sh >/dev/null
echo "test_wheels: built in $((SECONDS - start)) s; installing $PLUGIN from dist/ into $VENV"
"$PYTHON" -m venv --clear "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check install --quiet)
# 1. the project's own distributions from dist/ alone (no index: nothing else can provide them)
"${PIP[@]}" --no-index --no-deps --find-links dist mlx-zoo "$PLUGIN"
# 2. the rest of "$PLUGIN[test]" from the registry; mlx-zoo stays the wheel installed above
"${PIP[@]}" --find-links dist -c requirements-test.txt "$PLUGIN[test]"
# the installed copies are the ones imported, not this checkout's sources
module=$(echo "$PLUGIN" | tr '-' '_')
(cd "${TMPDIR:-/tmp}" && "$VENV/bin/python" - "$VENV" "$module" <<'PY'
import importlib, sys
from pathlib import Path
venv, module = Path(sys.argv[1]).resolve(), sys.argv[2]
for name in ("mlx_zoo", module):
    path = Path(importlib.import_module(name).__file__).resolve()
    assert venv in path.parents, f"{name} imported from {path}, not from the wheel in {venv}"
    print(f"test_wheels: {name} from {path.parent}")
PY
)
echo "test_wheels: installed in $((SECONDS - start)) s"
MLX_ZOO_DIST="$PWD/dist" "$VENV/bin/python" -m pytest -p no:cacheprovider \
    tests/integration/test_wheels.py "plugins/$PLUGIN/tests" "$@"
echo "test_wheels: done in $((SECONDS - start)) s"
