"""The start-up hook (``mlx_zoo_blas.pth`` + ``_mlx_zoo_blas_hook``): on the Linux CPU, MLX's
``cblas_sgemm`` binds to the fast BLAS whatever the program imports first, from the core's wheel
installed into a fresh virtual environment (editable installs do not install the hook); a
program that never imports ``mlx.core`` opens, compiles and writes nothing; the opt-outs opt out.
Checked by what the dynamic linker binds (glibc's ``LD_DEBUG=bindings``), in fresh interpreters.

The fresh environment holds the core's wheel only; its third-party dependencies (mlx, the
OpenBLAS wheel) come from this test run's environment, through a path entry that ``site`` does
not treat as a site directory (so that environment's own ``.pth`` files, an editable mlx_zoo's
included, are not read there)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mlx_zoo import blas

REPO = Path(__file__).resolve().parents[2]
LINUX = sys.platform.startswith("linux")
CC = shutil.which(os.environ.get("CC", "cc"))
PIP_BLAS = blas._scipy_openblas32() if LINUX else []
MATMUL = "a = mx.ones((64, 64)); mx.eval(a @ a)"
STATUS = ("import json, mlx_zoo; s = mlx_zoo.blas.blas_status(); "
          "print(json.dumps([s.fast, s.reason, mlx_zoo.blas is sys.modules['mlx_zoo.blas']]))")
ORDERS = {  # what the program imports first
    "mlx.core first": f"import sys, mlx.core as mx; {MATMUL}; {STATUS}",
    "mlx.nn first": f"import sys, mlx.nn, mlx.core as mx; {MATMUL}; {STATUS}",
    "mlx_zoo first": f"import sys, mlx_zoo, mlx.core as mx; {MATMUL}; {STATUS}",
}
HOOK_ENVS = ("MLX_ZOO_BLAS_HOOK", blas.BLAS_ENV, blas.SHIM_ENV, "LD_PRELOAD", "PYTHONPATH")

pytestmark = pytest.mark.skipif(not (LINUX and PIP_BLAS and CC),
                                reason="the hook serves MLX's Linux CPU wheel: needs Linux, the "
                                       "scipy-openblas32 wheel and a C compiler")


def core_wheel(tmp: Path) -> Path:
    """The core's wheel: from ``$MLX_ZOO_DIST`` (scripts/test_wheels.sh builds it), else built
    here from a clean copy of core/ (no stale build/ directory), without build isolation."""
    if os.environ.get("MLX_ZOO_DIST"):
        return next(Path(os.environ["MLX_ZOO_DIST"]).glob("mlx_zoo-*.whl"))
    source = tmp / "core"
    shutil.copytree(REPO / "core", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "-w", str(tmp / "dist"),
                    str(source)], check=True, capture_output=True, timeout=300)
    return next((tmp / "dist").glob("mlx_zoo-*.whl"))


def fresh_venv(root: Path, wheel: Path | None) -> Path:
    """A new virtual environment with ``wheel`` installed (None: without mlx-zoo), whose
    third-party packages are this environment's. Returns its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    if wheel is not None:
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                        "--quiet", "--no-deps", "--no-index", "--disable-pip-version-check",
                        str(wheel)], check=True, capture_output=True, timeout=300)
    Path(purelib, "zz_mlx_zoo_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hook")
    python = fresh_venv(tmp / "venv", core_wheel(tmp))
    where = subprocess.run([str(python), "-c", "import mlx_zoo, _mlx_zoo_blas_hook as h; "
                            "print(mlx_zoo.__file__); print(h.__file__)"], check=True,
                           capture_output=True, text=True, cwd=tmp).stdout.split()
    assert all(Path(w).is_relative_to(tmp / "venv") for w in where), where  # the wheel's copies
    return python


def run(python: Path, code: str, tmp: Path, **env: str) -> tuple[str, dict, str]:
    """Run ``code`` with ``python`` in a fresh process outside the checkout; returns the
    library libmlx.so's ``cblas_sgemm`` was bound to ('' if mlx.core was not loaded), the
    process's last stdout line as JSON, and its stderr."""
    log = tmp / "ld"
    environ = {k: v for k, v in os.environ.items() if k not in HOOK_ENVS}
    environ.update(LD_DEBUG="bindings", LD_DEBUG_OUTPUT=str(log), **env)
    try:
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                              env=environ, cwd=tmp, timeout=120)
        assert done.returncode == 0, done.stderr
        bound = [line.split(" to ")[1].split(" [")[0] for f in tmp.glob("ld.*")
                 for line in f.read_text().splitlines()
                 if "libmlx.so" in line.split(" to ")[0] and "`cblas_sgemm'" in line]
    finally:
        for f in tmp.glob("ld.*"):
            f.unlink()
    assert len(bound) <= 1, bound
    return (bound or [""])[0], json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def is_reference_blas(library: str) -> bool:
    """MLX's bundled netlib BLAS (``mlx_cpu.libs/libblas-*``)."""
    return Path(library).name.startswith("libblas-") and ".libs" in Path(library).parent.name


@pytest.mark.parametrize("order", ORDERS)
def test_fast_blas_whatever_the_import_order(venv, tmp_path, order):
    bound, (fast, reason, one_module), stderr = run(venv, ORDERS[order], tmp_path)
    assert "gemv_shim" in bound, bound
    assert fast and one_module, reason  # one mlx_zoo.blas, one status per process
    assert ("start-up hook" in reason) == (order != "mlx_zoo first"), reason
    assert "Warning" not in stderr, stderr


def test_matmuls_through_the_hook_are_right(venv, tmp_path):
    code = ("import sys, json, numpy as np, mlx.core as mx; "
            "a = mx.random.normal((300, 200)); b = mx.random.normal((200, 100)); "
            "x = mx.random.normal((1, 200)); "
            "ref = lambda p, q: np.array(p, np.float64) @ np.array(q, np.float64); "
            "err = [float(np.abs(np.array(p @ q) - ref(p, q)).max()) "
            "       for p, q in ((a, b), (x, b))]; "
            "print(json.dumps(err))")
    bound, errors, _ = run(venv, code, tmp_path)
    assert "gemv_shim" in bound and max(errors) < 1e-3, (bound, errors)


NOTHING = ("import sys, json; w = [f for f in sys.meta_path if 'Watcher' in type(f).__name__]; "
           "maps = open('/proc/self/maps').read(); "
           "print(json.dumps([sorted(m for m in sys.modules if 'mlx' in m or m == 'ctypes'), "
           "[repr(f) for f in w], 'blas' in maps or 'gemv_shim' in maps]))")


def quiet_env(tmp: Path) -> tuple[dict, Path, Path]:
    """An empty cache directory, a home that does not exist and a compiler that records being
    run: nothing may appear."""
    (tmp / "cache").mkdir()
    marker, fake_cc = tmp / "cc-ran", tmp / "cc"
    fake_cc.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake_cc.chmod(0o755)
    env = {"XDG_CACHE_HOME": str(tmp / "cache"), "CC": str(fake_cc), "HOME": str(tmp / "home")}
    return env, tmp / "cache", marker


def test_a_program_that_never_imports_mlx_opens_compiles_and_writes_nothing(venv, tmp_path):
    env, cache, marker = quiet_env(tmp_path)
    bound, (modules, watchers, blas_mapped), _ = run(venv, NOTHING, tmp_path, **env)
    assert modules == ["_mlx_zoo_blas_hook"] and not bound and not blas_mapped
    assert watchers == ["<MlxCoreWatcher of mlx_zoo: waiting>"]
    assert list(cache.iterdir()) == [] and not marker.exists()
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("opt_out", ["MLX_ZOO_BLAS_HOOK=0", "MLX_ZOO_BLAS=reference"])
def test_opt_out_really_opts_out(venv, tmp_path, opt_out):
    key, value = opt_out.split("=")
    env, cache, marker = quiet_env(tmp_path)
    _, (modules, watchers, _), _ = run(venv, NOTHING, tmp_path, **env, **{key: value})
    assert watchers == [] and modules == ([] if key == "MLX_ZOO_BLAS_HOOK"
                                          else ["_mlx_zoo_blas_hook"])
    bound, (fast, reason, _), stderr = run(venv, ORDERS["mlx.core first"], tmp_path, **env,
                                           **{key: value})
    assert is_reference_blas(bound) and not fast, (bound, reason)
    assert list(cache.iterdir()) == [] and not marker.exists()
    if key == "MLX_ZOO_BLAS_HOOK":  # the import order matters again, and mlx_zoo says so
        assert "MLX_ZOO_BLAS_HOOK=0" in reason and "RuntimeWarning" in stderr, (reason, stderr)


def test_without_mlx_zoo_no_hook(tmp_path):
    """The environment the start-up cost is compared with (bench/bench_import_hook.py):
    the same packages, no mlx-zoo, so no hook."""
    python = fresh_venv(tmp_path / "venv", None)
    _, (modules, watchers, _), _ = run(python, NOTHING, tmp_path)
    assert modules == [] and watchers == []
