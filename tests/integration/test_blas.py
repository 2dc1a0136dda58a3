"""mlx_zoo.blas: OpenBLAS for MLX's Linux CPU wheel (checked by what the dynamic linker binds,
not by timing); nothing compiled or written where it cannot help or is not wanted."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_zoo import blas

LINUX = sys.platform.startswith("linux")
MATMUL = "import mlx.core as mx; a = mx.ones((64, 64)); mx.eval(a @ a)"


def sgemm_binding(code: str, **env: str) -> str:
    """The library the dynamic linker bound libmlx.so's ``cblas_sgemm`` to while running
    ``code`` in a fresh interpreter (from glibc's LD_DEBUG=bindings trace)."""
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    log = log_dir / f"mlx_zoo_ld_{os.getpid()}"
    environ = {**os.environ, "LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": str(log), **env}
    try:
        subprocess.run([sys.executable, "-c", code], env=environ, check=True, timeout=60,
                       capture_output=True)
        lines = [line for f in log_dir.glob(log.name + ".*") for line in f.read_text().splitlines()
                 if "libmlx.so" in line.split(" to ")[0] and "`cblas_sgemm'" in line]
    finally:
        for f in log_dir.glob(log.name + ".*"):
            f.unlink()
    assert len(lines) == 1, lines
    return lines[0].split(" to ")[1].split(" [")[0]


def is_reference_blas(library: str) -> bool:
    """MLX's bundled netlib BLAS (``mlx_cpu.libs/libblas-*``, ``mlx_cuda_13.libs/...``)."""
    return Path(library).name.startswith("libblas-") and ".libs" in Path(library).parent.name


CC = shutil.which(os.environ.get("CC", "cc"))
PIP_BLAS = blas._scipy_openblas32()  # the scipy-openblas32 wheel, a core dependency on Linux


def blas_prefix(path: str) -> str | None:
    try:
        return blas.blas_prefix(ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL))
    except OSError:
        return None


CANDIDATES = blas.find_fast_blas() if LINUX else []  # as $MLX_ZOO_BLAS says, if set
UNPREFIXED_BLAS = [p for p in CANDIDATES if blas_prefix(p) == ""]
"""System (or cmeel) OpenBLAS libraries that load here and export the plain cblas_sgemm."""
RENAMED_BLAS = [p for p in CANDIDATES if blas_prefix(p)]

needs_linux = pytest.mark.skipif(not LINUX, reason="MLX's reference BLAS is the Linux CPU wheel's")
needs_fast_blas = pytest.mark.skipif(not (UNPREFIXED_BLAS or (RENAMED_BLAS and CC)),
                                     reason="needs Linux and an OpenBLAS MLX can bind to")
needs_cc = pytest.mark.skipif(not CC, reason="needs a C compiler for the gemv shim")
needs_system_openblas = pytest.mark.skipif(not UNPREFIXED_BLAS,
                                           reason="needs a system OpenBLAS (libopenblas0-pthread)")


@needs_linux
def test_pip_dependencies_provide_an_openblas(monkeypatch):
    # scipy-openblas32 is a core dependency on Linux: the fast path needs nothing from the system
    # but a C compiler.
    monkeypatch.delenv(blas.BLAS_ENV, raising=False)
    assert PIP_BLAS and blas.find_fast_blas()[-1] == PIP_BLAS[-1]
    assert blas_prefix(PIP_BLAS[-1]) == "scipy_"


@needs_linux
@needs_cc
def test_pip_openblas_alone_serves_mlx_through_the_shim():
    # Forced, so that it is checked even where a system OpenBLAS would come first.
    env = {blas.BLAS_ENV: PIP_BLAS[0]}
    assert "gemv_shim" in sgemm_binding("import mlx_zoo; " + MATMUL, **env)
    status = "import mlx_zoo; s = mlx_zoo.blas.blas_status(); print(s.library, s.shim)"
    out = subprocess.run([sys.executable, "-c", status], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}).stdout.split()
    assert out[0] == PIP_BLAS[0] and "gemv_shim" in out[1]


@needs_fast_blas
def test_importing_mlx_zoo_first_binds_mlx_to_openblas():
    # By default: through the gemv shim where a C compiler exists, else a system OpenBLAS itself.
    bound = sgemm_binding("import mlx_zoo; " + MATMUL)
    assert "gemv_shim" in bound or ("openblas" in bound and not CC)


@needs_system_openblas
def test_system_openblas_serves_without_the_shim():
    bound = sgemm_binding("import mlx_zoo; " + MATMUL, **{blas.SHIM_ENV: "0"})
    assert "openblas" in bound and not is_reference_blas(bound)


def reference_with_reason(**env: str) -> str:
    """With only the pip OpenBLAS (renamed symbols) and ``env``: MLX must keep its reference
    BLAS, and the status must say why. Returns the reason."""
    env = {blas.BLAS_ENV: PIP_BLAS[0], **env}
    assert is_reference_blas(sgemm_binding("import mlx_zoo; " + MATMUL, **env))
    code = "import mlx_zoo; s = mlx_zoo.blas.blas_status(); assert not s.fast; print(s.reason)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, **env}).stdout


@needs_linux
def test_renamed_blas_without_the_shim_keeps_reference_and_says_why():
    reason = reference_with_reason(**{blas.SHIM_ENV: "0"})
    assert "scipy_cblas_sgemm" in reason and f"{blas.SHIM_ENV}=0" in reason


@needs_linux
def test_renamed_blas_without_a_compiler_keeps_reference_and_says_why(tmp_path):
    # An empty cache (no shim built before) and no compiler.
    reason = reference_with_reason(CC=str(tmp_path / "no-such-cc"), XDG_CACHE_HOME=str(tmp_path))
    assert "needs a C compiler" in reason and "no-such-cc" in reason


SHIM_CASES = """
import numpy as np, mlx_zoo, mlx.core as mx
assert mlx_zoo.blas.blas_status().shim, mlx_zoo.blas.blas_status()
rng = np.random.default_rng(0)
W = mx.array(rng.standard_normal((300, 200)).astype(np.float32))
x = mx.array(rng.standard_normal((1, 200)).astype(np.float32))
bias = mx.array(rng.standard_normal(300).astype(np.float32))
Wn, xn, bn = (np.array(a, np.float64) for a in (W, x, bias))
cases = [  # every operand layout of a matrix-vector product (M == 1 or N == 1), and a real gemm
    (x @ W.T, xn @ Wn.T), (x @ mx.contiguous(W.T), xn @ Wn.T), (W @ x.T, Wn @ xn.T),
    (mx.contiguous(W.T).T @ x.T, Wn @ xn.T), (mx.addmm(bias, x, W.T), bn + xn @ Wn.T),
    (mx.contiguous(x.T).T @ W.T, xn @ Wn.T),
    (W @ mx.contiguous(mx.concatenate([x, 2 * x]).T)[:, :1], Wn @ xn.T),
    (mx.contiguous(mx.concatenate([x, 2 * x]).T).T[:1] @ W.T, xn @ Wn.T),
    (mx.concatenate([x] * 5) @ W.T, np.concatenate([xn] * 5) @ Wn.T),
]
for i, (ours, ref) in enumerate(cases):
    err = np.abs(np.array(ours, np.float64) - ref).max() / np.abs(ref).max()
    assert ours.shape == ref.shape and err < 1e-6, (i, err)
"""

SHIM_LIBRARIES = PIP_BLAS[:1] + UNPREFIXED_BLAS[:1]


@needs_linux
@needs_cc
@pytest.mark.parametrize("library", SHIM_LIBRARIES or [None], ids=lambda p: Path(p or "").name)
def test_gemv_shim_computes_every_layout(library):
    if library is None:
        pytest.skip("no OpenBLAS")
    subprocess.run([sys.executable, "-c", SHIM_CASES], check=True, timeout=60,
                   env={**os.environ, blas.BLAS_ENV: library})


NO_HOOK = {"MLX_ZOO_BLAS_HOOK": "0"}
"""The installed core's start-up hook (tests/integration/test_blas_hook.py) off: without it the
import order matters (editable installs have no hook; a wheel install has)."""


@needs_fast_blas
def test_too_late_after_mlx_and_says_so():
    # The order matters: once mlx.core is loaded its symbols are bound to the reference BLAS.
    code = "import mlx.core; import mlx_zoo; print(mlx_zoo.blas.blas_status().reason); "
    assert is_reference_blas(sgemm_binding(code + MATMUL, **NO_HOOK))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, **NO_HOOK})
    assert "imported before mlx_zoo" in out.stdout


@needs_fast_blas
def test_environment_keeps_reference_blas():
    code = "import mlx_zoo; " + MATMUL
    assert is_reference_blas(sgemm_binding(code, **{blas.BLAS_ENV: "reference"}))


@needs_fast_blas
def test_openblas_matmul_matches_numpy():
    code = ("import mlx_zoo, mlx.core as mx, numpy as np;"
            "assert mlx_zoo.blas.blas_status().fast;"
            "a = mx.random.normal((300, 200)); b = mx.random.normal((200, 100));"
            "err = np.abs(np.array(a @ b) - np.array(a, np.float64) @ np.array(b, np.float64));"
            "assert err.max() < 1e-3, err.max()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_find_fast_blas_follows_environment(monkeypatch):
    monkeypatch.setenv(blas.BLAS_ENV, "off")
    assert blas.find_fast_blas() == []
    monkeypatch.setenv(blas.BLAS_ENV, "/opt/my/libopenblas.so.0")
    assert blas.find_fast_blas() == ["/opt/my/libopenblas.so.0"]


def test_unusable_library_is_reported_not_raised(monkeypatch, tmp_path):
    bogus = tmp_path / "libnotblas.so"
    bogus.write_bytes(b"not an ELF file")
    monkeypatch.setattr(blas, "find_fast_blas", lambda: [str(bogus)])
    monkeypatch.delenv(blas.BLAS_ENV, raising=False)
    monkeypatch.setattr(sys, "modules", {k: v for k, v in sys.modules.items() if k != "mlx.core"})
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    status = blas._preload()
    assert not status.fast and str(bogus) in status.reason


# -- nothing compiled or written where the fast path cannot help or is not wanted ----------------

QUIET_IMPORT = ("import json, mlx_zoo, mlx.core as mx; mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8)));"
                " s = mlx_zoo.blas.blas_status(); print(json.dumps([s.fast, s.reason]))")


def fake_cuda_install(root: Path) -> Path:
    """A directory that, on ``PYTHONPATH``, makes ``mlx-cuda-13`` look installed (what
    ``pip install "mlx[cuda13]"`` adds: mlx's ``cuda13`` extra requires it)."""
    info = root / "site" / "mlx_cuda_13-0.32.4.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlx-cuda-13\nVersion: 0.32.4\n")
    return root / "site"


@needs_linux
@pytest.mark.parametrize("case", ["cuda", "reference", "shim-off", "not-linux"])
def test_import_compiles_and_writes_nothing_where_not_wanted(case, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    marker = tmp_path / "cc-ran"
    fake_cc = tmp_path / "cc"  # a compiler that records being run
    fake_cc.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake_cc.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in (blas.BLAS_ENV, blas.SHIM_ENV, "LD_PRELOAD", "PYTHONPATH")}
    env.update(XDG_CACHE_HOME=str(cache), CC=str(fake_cc), HOME=str(tmp_path / "home"))
    prelude, expected = "", {"cuda": "CUDA backend is installed (mlx-cuda-13)",
                             "reference": "kept the reference BLAS", "shim-off": "SHIM=0",
                             "not-linux": "not Linux (darwin)"}[case]
    if case == "cuda":
        env["PYTHONPATH"] = str(fake_cuda_install(tmp_path))
    elif case == "reference":
        env[blas.BLAS_ENV] = "reference"
    elif case == "shim-off":
        if not PIP_BLAS:
            pytest.skip("needs scipy-openblas32")
        env.update({blas.BLAS_ENV: PIP_BLAS[0], blas.SHIM_ENV: "0"})
    else:
        prelude = "import sys; sys.platform = 'darwin'; "
    out = subprocess.run([sys.executable, "-c", prelude + QUIET_IMPORT], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    fast, reason = json.loads(out.stdout.splitlines()[-1])
    assert not fast and expected in reason, reason
    assert list(cache.iterdir()) == [] and not marker.exists()
    assert not (tmp_path / "home").exists()


def test_cuda_backend_is_found_without_importing_mlx_core(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(fake_cuda_install(tmp_path)))
    assert blas.cuda_backend() == "mlx-cuda-13"


@needs_fast_blas
def test_late_import_warns_once_with_the_fix():
    code = ("import warnings; warnings.simplefilter('always'); import mlx.core; import mlx_zoo; "
            "import mlx_qwen2; mlx_zoo.blas.preload_fast_blas(); mlx_zoo.blas.blas_status()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**{k: v for k, v in os.environ.items() if k != blas.BLAS_ENV},
                              **NO_HOOK})
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("RuntimeWarning") == 1, out.stderr
    assert "import mlx_zoo before mlx.core, or start Python with LD_PRELOAD=" in out.stderr
    # Imported first: no warning.
    out = subprocess.run([sys.executable, "-W", "always", "-c", "import mlx_zoo, mlx.core"],
                         capture_output=True, text=True, timeout=60)
    assert "Warning" not in out.stderr, out.stderr
