"""The Linux CPU fast path: OpenBLAS instead of the reference BLAS MLX's Linux CPU wheel ships.

This module has one job. It runs once, when it is imported -- ``mlx_zoo/__init__.py`` imports it
first thing, so ``import mlx_zoo`` (and ``import mlx_qwen2`` &c., which import mlx_zoo) triggers
it -- and :func:`blas_status` says afterwards what it did.

**When it acts.** Only where it can help: Linux, with MLX's CPU wheel (``mlx-cpu``). It does
nothing at all -- no compiler run, no file written, no library opened -- on macOS and every other
non-Linux platform (MLX uses Metal and Accelerate there), on installs with MLX's CUDA backend
(``pip install "mlx[cuda13]"`` / ``mlx[cuda12]`` / ``mlx[cuda]`` install the ``mlx-cuda-13`` /
``mlx-cuda-12`` distributions, recognised from their metadata or an ``mlx_cuda*`` entry beside
the ``mlx`` package, without importing ``mlx.core``: matmuls run on the GPU there), and when the
environment opts out (below).

**What it does.** MLX's ``libmlx.so`` imports the unversioned ``cblas_sgemm`` (float32
matmuls); the reference BLAS runs a 2048x2048 matmul at ~5 GFLOP/s on a 2-core VM, OpenBLAS at
100-300. The dynamic linker binds that symbol to the first library *in the global scope* that
defines it, and Python loads extension modules with ``RTLD_NOW``, so every symbol of
``libmlx.so`` is bound when ``mlx.core`` is imported: a BLAS must be opened with ``RTLD_GLOBAL``
**before** that. Which library, in :func:`find_fast_blas`'s order: ``$MLX_ZOO_BLAS``, a system
OpenBLAS, the ``cmeel-openblas`` wheel, the ``scipy-openblas32`` wheel (a core dependency on
Linux, so the fast path is there by default). That wheel renames its symbols
(``scipy_cblas_sgemm``); a 50-line C shim (:data:`GEMV_SHIM_SOURCE`) provides the plain
``cblas_sgemm`` in front of it, and also sends matrix-vector products (decoding one token) to
``cblas_sgemv``, 2-2.5x faster than OpenBLAS's sgemm with one row. Only ``cblas_sgemm`` goes
through the shim: float64/complex matmuls and LAPACK stay with the reference libraries when the
renamed library serves.

**What it writes, where.** The shim is compiled once, with ``$CC`` or ``cc``, into
``$XDG_CACHE_HOME/mlx_zoo``, else ``~/.cache/mlx_zoo``, else a per-uid private directory in the
temporary directory (:func:`_shim_cache_dir`), as ``gemv_shim-<machine>-<digest>.so``
(:func:`shim_file_name`); a cached file that does not load is rebuilt once. Nothing else is
written. Without a compiler or a cache directory MLX keeps its reference BLAS and
:func:`blas_status` says why; importing never raises.

**Opting out.** ``MLX_ZOO_BLAS=reference`` (or ``off``, ``none``, ``0``) keeps MLX's own BLAS:
nothing is opened, compiled or written. ``MLX_ZOO_BLAS_SHIM=0`` skips the shim (a system
OpenBLAS exporting the plain ``cblas_sgemm`` still serves; the renamed pip wheel then cannot,
and nothing is compiled). ``MLX_ZOO_BLAS=/path/libopenblas.so.0`` picks a library.

**Import order.** MLX binds its BLAS when ``mlx.core`` is imported, for the life of the process.
An installed core (from its wheel) runs this module then too, whatever the program imports
first: ``mlx_zoo_blas.pth`` installs a start-up hook (the top-level ``_mlx_zoo_blas_hook``) that
loads this module alone -- not the ``mlx_zoo`` package -- just before ``mlx.core`` is imported,
and a later ``import mlx_zoo`` uses it. A process that never imports ``mlx.core`` runs nothing of
it. ``MLX_ZOO_BLAS_HOOK=0`` switches the hook off, editable installs and ``python -S`` lack it;
a program that imports ``mlx.core`` before ``mlx_zoo`` there is too late: ``import mlx_zoo``
then warns once (:data:`LATE_IMPORT_WARNING`) with the fix -- import mlx_zoo first, or start the
interpreter with ``LD_PRELOAD`` of an OpenBLAS exporting ``cblas_sgemm`` -- and
``mlx_zoo.load``'s ``"auto"`` settings keep the checkpoint's dtype (float32 through the
reference BLAS is slower than MLX's half-precision kernels for prefill).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BLAS_ENV = "MLX_ZOO_BLAS"
"""Environment variable: a BLAS library file to preload, or ``reference`` (also ``off``,
``none``) to keep MLX's bundled reference BLAS."""

KEEP_REFERENCE = ("reference", "off", "none", "0")

SYMBOL = "cblas_sgemm"
"""The symbol libmlx.so needs from a BLAS for float32 matmuls (unversioned, unprefixed)."""

PREFIXES = ("", "scipy_")
"""Name prefixes a BLAS may put on its symbols: none (a system OpenBLAS, ``cmeel-openblas``) or
``scipy_`` (the ``scipy-openblas32`` wheel; only the gemv shim can forward to it)."""

SYSTEM_OPENBLAS = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",   # Debian/Ubuntu (alternatives link)
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",                  # Fedora/RHEL
    "/usr/lib/libopenblas.so.0",                    # Arch, Alpine
)
"""Where distributions put OpenBLAS when ``ctypes.util.find_library`` does not see it."""

@dataclass
class BlasStatus:
    """What :func:`preload_fast_blas` did: ``library`` is the file now serving ``cblas_sgemm``
    for MLX (None: MLX's reference BLAS), ``reason`` says why in words."""

    library: str | None
    reason: str
    shim: str | None = None  # the gemv shim in front of the library's cblas_sgemm, if built
    too_late: bool = False  # a fast BLAS was there, but mlx.core had been imported first
    threads: str = ""  # the thread policy in force, in words (:func:`apply_thread_policy`)

    @property
    def fast(self) -> bool:
        return self.library is not None


_status: BlasStatus | None = None


def _is_linux_cpu_wheel() -> bool:
    """True where MLX ships the reference BLAS: Linux (macOS uses Accelerate)."""
    return sys.platform.startswith("linux")


CUDA_DISTRIBUTIONS = ("mlx-cuda-13", "mlx-cuda-12", "mlx-cuda")
"""Distributions of MLX's CUDA backend (``mlx[cuda13]``, ``mlx[cuda12]``, ``mlx[cuda]``)."""


def cuda_backend() -> str | None:
    """The installed distribution (or file) of MLX's CUDA backend, None if there is none. Found
    without importing ``mlx.core``: by distribution metadata, then by an ``mlx_cuda*`` entry
    (``mlx_cuda_13.libs``, a later ``mlx_cuda_14-*.dist-info``) beside the ``mlx`` package."""
    import importlib.util
    from importlib import metadata

    for name in CUDA_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # a broken dist-info: still an installed CUDA backend
            pass
        return name
    try:
        spec = importlib.util.find_spec("mlx")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or ()) if spec else ():
        try:
            found = sorted(Path(location).parent.glob("mlx_cuda*"))
        except OSError:
            continue
        if found:
            return str(found[0])
    return None


LATE_IMPORT_WARNING = (
    "mlx.core was imported before mlx_zoo, so MLX keeps its slow reference BLAS on this Linux "
    "CPU (float32 matmuls ~40x slower; mlx_zoo.load keeps the checkpoint's dtype). Fix: import "
    "mlx_zoo before mlx.core, or start Python with LD_PRELOAD={library}, or install mlx-zoo "
    "from its wheel (not editable) and leave MLX_ZOO_BLAS_HOOK unset: its start-up hook "
    "serves any import order")
"""Warned once, at ``import mlx_zoo``, where the fast path would have served but came too late."""

_LD_PRELOAD_HINT = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0 (apt install libopenblas0-pthread)"


def _warn_too_late(candidates: list[str]) -> None:
    import warnings

    plain = [p for p in candidates if _prefix_of(p) == ""]
    warnings.warn(LATE_IMPORT_WARNING.format(library=plain[0] if plain else _LD_PRELOAD_HINT),
                  RuntimeWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """The stack level of the first frame outside importlib and mlx_zoo: the user's import."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name.startswith(("mlx_zoo", "importlib", "mlx_qwen2", "mlx_hunyuan", "mlx_llama4"))
                or frame.f_code.co_filename.startswith("<frozen")):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def _prefix_of(path: str) -> str | None:
    try:
        return blas_prefix(ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL))
    except OSError:
        return None


def _cmeel_openblas() -> list[str]:
    """``libopenblas.so.0`` of the ``cmeel-openblas`` wheel, if installed (found without
    importing anything: the wheel has no Python package)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("cmeel-openblas")
    except metadata.PackageNotFoundError:
        return []
    return [str(dist.locate_file(f)) for f in dist.files or ()
            if f.name == "libopenblas.so.0"]


def _scipy_openblas32() -> list[str]:
    """``libscipy_openblas*.so`` of the ``scipy-openblas32`` wheel, if installed (found without
    importing its package: ``find_spec`` only locates it)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("scipy_openblas32")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(str(f) for d in spec.submodule_search_locations
                  for f in (Path(d) / "lib").glob("libscipy_openblas*.so*"))


def blas_prefix(lib: ctypes.CDLL) -> str | None:
    """The prefix (one of :data:`PREFIXES`) of the library's ``cblas_sgemm``; None if it has
    none."""
    return next((p for p in PREFIXES if hasattr(lib, p + SYMBOL)), None)


def find_fast_blas() -> list[str]:
    """Candidate BLAS libraries in order: ``$MLX_ZOO_BLAS``, a system OpenBLAS, the
    ``cmeel-openblas`` wheel, the ``scipy-openblas32`` wheel. Empty where the environment asks
    for the reference BLAS."""
    chosen = os.environ.get(BLAS_ENV, "").strip()
    if chosen.lower() in KEEP_REFERENCE:
        return []
    if chosen:
        return [chosen]
    candidates = []
    found = ctypes.util.find_library("openblas")
    if found:
        candidates.append(found)
    candidates += [p for p in SYSTEM_OPENBLAS if Path(p).exists()]
    candidates += _cmeel_openblas()
    candidates += _scipy_openblas32()
    return list(dict.fromkeys(candidates))


def _preloaded_by_environment() -> str | None:
    """A BLAS in ``LD_PRELOAD`` that exports the plain ``cblas_sgemm`` (it is bound already)."""
    for entry in os.environ.get("LD_PRELOAD", "").replace(":", " ").split():
        if "blas" in Path(entry).name:
            try:
                if blas_prefix(ctypes.CDLL(entry, mode=ctypes.RTLD_LOCAL)) == "":
                    return entry
            except OSError:
                continue
    return None


def preload_fast_blas() -> BlasStatus:
    """Open a fast BLAS with ``RTLD_GLOBAL`` so that MLX's ``cblas_sgemm`` binds to it. Must run
    before ``mlx.core`` is imported; safe to call again (returns the first result). Never raises:
    a library that cannot be opened, or lacks ``cblas_sgemm``, is skipped."""
    global _status
    if _status is not None:
        return _status
    try:
        _status = _preload()
        if _status.fast:
            _status.threads = apply_thread_policy()
    except Exception as e:  # runs at import of mlx_zoo: a surprise here must not stop it
        _status = BlasStatus(None, f"kept the reference BLAS: preloading failed with "
                             f"{type(e).__name__}: {e}")
    log.debug("BLAS for MLX: %s (%s)", _status.library or "reference", _status.reason)
    if _status.too_late:  # once: the status is computed once per process
        _warn_too_late(find_fast_blas())
    return _status


def _by_whom() -> str:
    """Who preloads: ``import mlx_zoo`` (the package is being imported), else the start-up hook
    (``_mlx_zoo_blas_hook`` loads this module alone, as ``mlx.core`` is about to be imported)."""
    return "" if "mlx_zoo" in sys.modules else " by the start-up hook (mlx_zoo_blas.pth)"


def _preload() -> BlasStatus:
    if not _is_linux_cpu_wheel():
        return BlasStatus(None, f"not Linux ({sys.platform}): MLX uses the platform's BLAS")
    cuda = cuda_backend()
    if cuda:
        return BlasStatus(None, f"MLX's CUDA backend is installed ({cuda}): matmuls run on the "
                          f"GPU, MLX's CPU BLAS is left alone")
    if os.environ.get(BLAS_ENV, "").strip().lower() in KEEP_REFERENCE:
        return BlasStatus(None, f"kept the reference BLAS ({BLAS_ENV}="
                          f"{os.environ[BLAS_ENV].strip()})")
    preloaded = _preloaded_by_environment()
    if preloaded:
        return BlasStatus(preloaded, "LD_PRELOAD")
    candidates = find_fast_blas()
    if "mlx.core" in sys.modules:
        return BlasStatus(None, "mlx.core was imported before mlx_zoo, without the start-up "
                          "hook (MLX_ZOO_BLAS_HOOK=0, an editable install or python -S): its "
                          "BLAS is bound already (import mlx_zoo first, or set LD_PRELOAD)",
                          too_late=bool(candidates))
    if not candidates:
        return BlasStatus(None, f"no OpenBLAS found (install scipy-openblas32, a dependency of "
                          f"mlx-zoo on Linux, or libopenblas0-pthread, or set {BLAS_ENV})")
    failures = []
    spin = THREAD_TIMEOUT_ENV not in os.environ  # read by OpenBLAS when it loads, below
    if spin:
        os.environ[THREAD_TIMEOUT_ENV] = THREAD_TIMEOUT
    try:
        return _load_first(candidates, failures)
    finally:
        if spin:  # this process's children choose for themselves
            os.environ.pop(THREAD_TIMEOUT_ENV, None)


def _load_first(candidates: list[str], failures: list[str]) -> BlasStatus:
    """The first of ``candidates`` that can serve MLX, preloaded (``failures``: why the others
    did not)."""
    for path in candidates:
        try:
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        except OSError as e:
            failures.append(f"{path}: {e}")
            continue
        prefix = blas_prefix(lib)
        if prefix is None:
            failures.append(f"{path}: no {SYMBOL} symbol")
            continue
        # The shim goes first in the global scope: its cblas_sgemm wins.
        shim, why_not = _load_gemv_shim(path, prefix)
        if prefix:
            if shim is None:  # a renamed library: MLX cannot bind to it without the shim
                failures.append(f"{path}: exports {prefix}{SYMBOL}, not {SYMBOL}, so MLX "
                                f"reaches it only through the gemv shim, and {why_not}")
                continue
            return BlasStatus(path, f"preloaded before mlx.core{_by_whom()} through the gemv "
                              f"shim ({prefix}{SYMBOL})", shim)
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # every other BLAS/LAPACK symbol
        reason = f"preloaded before mlx.core{_by_whom()}" + (f"; {why_not}" if why_not else "")
        return BlasStatus(path, reason, shim)
    return BlasStatus(None, "kept the reference BLAS: " + "; ".join(failures))


# -- matrix-vector products ---------------------------------------------------------------------

SHIM_ENV = "MLX_ZOO_BLAS_SHIM"
"""Environment variable: ``0`` skips the gemv shim (plain OpenBLAS ``cblas_sgemm`` for all; a
library with renamed symbols, such as ``scipy-openblas32``'s, then cannot serve)."""

GEMV_SHIM_SOURCE = r"""
/* mlx-zoo: cblas_sgemm in front of OpenBLAS that sends matrix-vector products (M == 1 or
   N == 1, row-major, as MLX issues them when decoding one token) to cblas_sgemv. OpenBLAS's
   sgemm packs the whole matrix even for one row: 2.5x slower than its sgemv, which streams the
   matrix once. Everything else goes to OpenBLAS's own cblas_sgemm. The library's symbols may
   carry a prefix (scipy-openblas32: scipy_cblas_sgemm): this shim is then what gives MLX the
   plain cblas_sgemm.
   Threads (mlx_zoo_blas_policy): a fixed count, or adaptive -- each product shape (m, n, k)
   large enough to be split is timed on one thread and on `ceiling` threads (the cores this
   process may use), twice each, then runs on the faster -- `ceiling` only where it measured
   1.25x faster than one thread (the noise of a shared machine must not buy the costlier
   choice) -- and times the other again after
   EXPLORE calls of the shape -- after twice as many each time the other loses again, up to
   EXPLORE_MAX (on a busy machine one look at `ceiling` threads can cost 10x a call: the
   threads wait for each other; docs/benchmarks.md, "Under load"). */
#include <dlfcn.h>
#include <stdio.h>
#include <time.h>
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
enum { SLOTS = 128, EXPLORE = 32, EXPLORE_MAX = 1024, WARMUP = 4 };
#define MARGIN 0.8
typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *,
                         int, float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
typedef void (*threads_fn)(int);
static sgemm_fn real_sgemm;
static sgemv_fn real_sgemv;
static threads_fn set_threads;
static int adaptive, ceiling = 1, current;
struct shape { int m, n, k, calls, tried, next, interval; double ns[2]; };
static struct shape shapes[SLOTS];

int mlx_zoo_gemv_shim_init(const char *path, const char *prefix) {
  char name[128];
  void *blas = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!blas) return 0;
  snprintf(name, sizeof name, "%scblas_sgemm", prefix);
  real_sgemm = (sgemm_fn)dlsym(blas, name);
  snprintf(name, sizeof name, "%scblas_sgemv", prefix);
  real_sgemv = (sgemv_fn)dlsym(blas, name);
  snprintf(name, sizeof name, "%sopenblas_set_num_threads", prefix);
  set_threads = (threads_fn)dlsym(blas, name);
  return real_sgemm && real_sgemv;
}

static void use_threads(int t) {
  if (t != current && set_threads) { set_threads(t); current = t; }
}

/* fixed > 0: that many threads; else adaptive between 1 and max_threads (> 1), else leave the
   library's own count. Returns 0 where the library cannot set its threads. */
int mlx_zoo_blas_policy(int fixed, int max_threads) {
  if (!set_threads) return 0;
  adaptive = fixed < 1 && max_threads > 1;
  ceiling = max_threads > 1 ? max_threads : 1;
  if (fixed > 0) use_threads(fixed);
  return 1;
}

int mlx_zoo_blas_threads_now(void) { return current; }

static struct shape *lookup(int m, int n, int k, int add) {
  unsigned h = (unsigned)m * 2654435761u ^ (unsigned)n * 40503u ^ (unsigned)k * 97u;
  for (int i = 0; i < SLOTS; i++) {
    struct shape *s = &shapes[(h + i) % SLOTS];
    if (s->m == m && s->n == n && s->k == k) return s;
    if (!s->m) {
      if (!add) return 0;
      s->m = m; s->n = n; s->k = k;
      return s;
    }
  }
  return 0;  /* full: such a call runs on the ceiling, untimed */
}

/* Bit 0: the shape was timed on one thread, bit 1: on the ceiling; -1: never seen. */
int mlx_zoo_blas_tried(int m, int n, int k) {
  struct shape *s = lookup(m, n, k, 0);
  return s ? s->tried : -1;
}

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static void product(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                    const float *a, int lda, const float *b, int ldb, float beta, float *c,
                    int ldc) {
  int ta = trans_a != NO_TRANS, tb = trans_b != NO_TRANS;
  if (order == ROW_MAJOR && m == 1 && n > 1) {
    /* c[0, :] = alpha * x op(B) + beta c; x = op(A)[0, :] has stride lda when A is transposed */
    if (tb)   /* B stored n x k: c = B x */
      real_sgemv(ROW_MAJOR, NO_TRANS, n, k, alpha, b, ldb, a, ta ? lda : 1, beta, c, 1);
    else      /* B stored k x n: c = B^T x */
      real_sgemv(ROW_MAJOR, TRANS, k, n, alpha, b, ldb, a, ta ? lda : 1, beta, c, 1);
    return;
  }
  if (order == ROW_MAJOR && n == 1 && m > 1) {
    /* c[:, 0] (stride ldc) = alpha * op(A) y + beta c; y = op(B)[:, 0] */
    if (ta)   /* A stored k x m: c = A^T y */
      real_sgemv(ROW_MAJOR, TRANS, k, m, alpha, a, lda, b, tb ? 1 : ldb, beta, c, ldc);
    else      /* A stored m x k: c = A y */
      real_sgemv(ROW_MAJOR, NO_TRANS, m, k, alpha, a, lda, b, tb ? 1 : ldb, beta, c, ldc);
    return;
  }
  real_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c,
                 int ldc) {
  /* OpenBLAS runs products under ~64k multiply-adds on one thread whatever it is told */
  struct shape *s = adaptive && (double)m * n * k >= 65536.0 ? lookup(m, n, k, 1) : 0;
  if (!s) {
    if (adaptive) use_threads(ceiling);
    product(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  int best = s->ns[1] < MARGIN * s->ns[0], pick;
  if (s->calls < WARMUP) pick = !(s->calls & 1);          /* ceiling, one, ceiling, one */
  else pick = s->calls >= s->next ? !best : best;
  use_threads(pick ? ceiling : 1);
  double start = now_ns();
  product(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  double took = now_ns() - start;
  if (s->calls < WARMUP || !(s->tried >> pick & 1)) {
    s->ns[pick] = (s->tried >> pick & 1) && s->ns[pick] < took ? s->ns[pick] : took;
    s->interval = EXPLORE;
    s->next = WARMUP + EXPLORE;
  } else if (pick != best) {                              /* a fresh look at the other */
    s->ns[pick] = took;
    int lost = pick ? took >= MARGIN * s->ns[0] : MARGIN * took >= s->ns[1];
    s->interval = lost ? (s->interval < EXPLORE_MAX ? 2 * s->interval : EXPLORE_MAX) : EXPLORE;
    s->next = s->calls + s->interval;
  } else {
    s->ns[pick] += 0.25 * (took - s->ns[pick]);
  }
  s->tried |= 1 << pick;
  s->calls++;
}
"""


CACHE_SUBDIR = "mlx_zoo"
"""The gemv shim's directory inside the user's cache directory (``~/.cache/mlx_zoo``)."""

PRIVATE_DIR_MODE = 0o700
"""Mode of the per-uid fallback cache directory in the shared temporary directory: only its
owner may put a library there that this process would then load."""


def _shim_cache_dir() -> tuple[Path | None, str]:
    """Where the compiled gemv shim is cached, or None and why there is nowhere. Never raises.

    In order: ``$XDG_CACHE_HOME/mlx_zoo`` (an absolute path, as the XDG spec requires), then
    ``~/.cache/mlx_zoo`` if the home directory is known (``$HOME``, else the passwd entry), else
    ``<tempdir>/mlx_zoo-<uid>`` -- containers often run a uid that has neither, and
    ``Path.home()`` then raises. The temporary fallback is used only as a directory of this uid
    that no one else may write to, since a library found there is loaded into the process."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / CACHE_SUBDIR, ""
    try:
        return Path.home() / ".cache" / CACHE_SUBDIR, ""
    except (RuntimeError, KeyError, OSError):  # no $HOME and no passwd entry for this uid
        pass
    import stat
    import tempfile

    try:
        uid = os.geteuid()  # the owner of the files this process creates
        private = Path(tempfile.gettempdir()) / f"{CACHE_SUBDIR}-{uid}"
        private.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        info = private.lstat()
    except (OSError, AttributeError) as e:  # no usable temporary directory; os.getuid: POSIX
        return None, f"the gemv shim has no cache directory (no home directory, and {e})"
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != uid
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        return None, (f"the gemv shim has no cache directory (no home directory, and {private} "
                      f"is not a directory of uid {uid} closed to other users)")
    return private, ""


def shim_file_name(blas_path: str) -> str:
    """The cached shim's file name: ``gemv_shim-<machine>-<digest>.so``. The digest covers the
    shim's source, the operating system, the machine architecture and the BLAS library's path,
    so that a home directory shared by x86_64 and aarch64 hosts (or by two BLAS libraries) never
    serves one a library built for the other. The compiler is not part of it: the C ABI of the
    platform, not the compiler, decides whether a library loads and works."""
    import hashlib
    import platform

    machine = re.sub(r"[^A-Za-z0-9_]", "_", platform.machine() or "unknown")
    key = "\0".join((GEMV_SHIM_SOURCE, sys.platform, machine, str(blas_path)))
    return f"gemv_shim-{machine}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _build_gemv_shim(blas_path: str = "", rebuild: bool = False) -> tuple[Path | None, str]:
    """Compile :data:`GEMV_SHIM_SOURCE` once (C compiler ``$CC`` or ``cc``), cached under
    :func:`shim_file_name`; ``rebuild`` replaces a cached file (one that failed to load).
    Returns the library, or None and why not."""
    import shutil
    import subprocess
    import tempfile

    cache_dir, why_not = _shim_cache_dir()
    if cache_dir is None:
        return None, why_not
    target = cache_dir / shim_file_name(blas_path)
    if target.exists() and not rebuild:
        return target, ""
    cc = os.environ.get("CC", "cc")
    compiler = shutil.which(cc)
    if compiler is None:
        return None, (f"the gemv shim needs a C compiler, and there is none ({cc!r} not "
                      f"found: install gcc, or set CC)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "gemv_shim.c"
            source.write_text(GEMV_SHIM_SOURCE)
            built = Path(tmp) / target.name
            subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(built), str(source),
                            "-ldl"], check=True, capture_output=True, timeout=60)
            os.replace(built, target)  # atomic: concurrent builders agree
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        return None, f"{compiler} failed to build the gemv shim: {detail[-1] if detail else e}"
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"the gemv shim was not built: {e}"
    return target, ""


def _load_gemv_shim(blas_path: str, prefix: str = "") -> tuple[str | None, str]:
    """Build and open the gemv shim in front of ``blas_path``'s ``{prefix}cblas_sgemm``, and put
    it in the global scope. Returns its path, or None and why not (never raises)."""
    if os.environ.get(SHIM_ENV, "").strip() == "0":
        return None, f"the gemv shim is off ({SHIM_ENV}=0)"
    failed = ""  # why a cached shim did not load
    for rebuild in (False, True):  # a cached file that does not load is built again, once
        shim, why_not = _build_gemv_shim(blas_path, rebuild=rebuild)
        if shim is None:
            why_not = f"{failed}; building it again: {why_not}" if failed else why_not
            break
        try:
            lib = ctypes.CDLL(str(shim), mode=ctypes.RTLD_LOCAL)
            lib.mlx_zoo_gemv_shim_init.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        except (OSError, AttributeError) as e:  # truncated, corrupt, another architecture
            why_not = failed = f"the gemv shim {shim} did not load: {e}"
            continue
        if lib.mlx_zoo_gemv_shim_init(blas_path.encode(), prefix.encode()):
            ctypes.CDLL(str(shim), mode=ctypes.RTLD_GLOBAL)  # only now may MLX bind to it
            global _shim
            _shim = lib
            return str(shim), ""
        return None, f"the gemv shim found no {prefix}cblas_sgemm/sgemv in {blas_path}"
    log.debug("gemv shim not loaded: %s", why_not)
    return None, why_not


def blas_status() -> BlasStatus:
    """The BLAS serving MLX's CPU float32 matmuls in this process (``.fast``: a fast library
    serves; ``.reason``: why, or why not)."""
    return preload_fast_blas()


# -- threads ------------------------------------------------------------------------------------

THREADS_ENV = "MLX_ZOO_BLAS_THREADS"
"""Environment variable: a fixed thread count for the fast BLAS, or ``auto`` (the default: the
adaptive policy of :func:`apply_thread_policy`)."""

THREAD_TIMEOUT_ENV = "OPENBLAS_THREAD_TIMEOUT"
THREAD_TIMEOUT = "20"
"""How long OpenBLAS's idle threads spin before they sleep, as log2 of CPU cycles (OpenBLAS reads
it when the library loads; set only where the user has not). OpenBLAS's own 28 (~0.1 s) keeps a
core busy after every multi-threaded product -- taken from the other processes on a busy machine,
and from this one when the policy runs a shape on one thread; 2^20 cycles (~0.4 ms) still spans
the gaps between one decode step's products."""

_shim: ctypes.CDLL | None = None  # the gemv shim, once loaded: it carries the thread policy


def _cgroup_cpu_limit() -> float | None:
    """The CPU quota of this process's cgroup, in cores (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``); None where there is none or it cannot be read."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        try:
            if controllers == "":  # v2: "max 100000" or "200000 100000"
                for directory in (Path("/sys/fs/cgroup", path.lstrip("/")), Path("/sys/fs/cgroup")):
                    if (directory / "cpu.max").exists():
                        quota, period = (directory / "cpu.max").read_text().split()[:2]
                        return None if quota == "max" else int(quota) / int(period)
            elif "cpu" in controllers.split(","):
                root = Path("/sys/fs/cgroup", controllers)
                quota = int((root / "cpu.cfs_quota_us").read_text())
                period = int((root / "cpu.cfs_period_us").read_text())
                return None if quota < 0 else quota / period
        except (OSError, ValueError, ZeroDivisionError):
            continue
    return None


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by its cgroup's quota."""
    import math

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(limit))) if limit else max(1, cores)


def apply_thread_policy() -> str:
    """Set the fast BLAS's threads; returns the policy in words (:attr:`BlasStatus.threads`).

    In order: ``MLX_ZOO_BLAS_THREADS=N`` fixes N threads; a user's ``OPENBLAS_NUM_THREADS``
    stands (OpenBLAS applied it); with the gemv shim, the **adaptive** policy: each product
    shape runs on one thread or on :func:`available_cores` threads, whichever its own calls
    measured faster (the cores only if 1.25x faster), looking again at the other after 32
    calls, after twice as many each time it loses again, up to 1024 (:data:`GEMV_SHIM_SOURCE`). A
    decode step's products are memory-bound and short: when another process wants a core,
    OpenBLAS's threads wait for each other and one thread is 2-3x faster than two; idle, two
    are faster (docs/benchmarks.md, "Under load"). Without the shim: OpenBLAS's own count."""
    requested = os.environ.get(THREADS_ENV, "").strip()
    if requested.lower() not in ("", "auto"):
        count = int(requested) if requested.isdigit() else 0
        if count < 1:
            return (f"{THREADS_ENV}={requested!r} is not a positive integer or 'auto': "
                    f"{_adaptive()}")
        done = set_blas_threads(count)
        return f"{count} ({THREADS_ENV})" if done else "OpenBLAS's own: it cannot set threads"
    if os.environ.get("OPENBLAS_NUM_THREADS", "").strip():
        return f"OpenBLAS's own (OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']})"
    return _adaptive()


def _adaptive() -> str:
    if _shim is None:
        return "OpenBLAS's own (one per core): the adaptive policy lives in the gemv shim"
    cores = available_cores()
    if not _shim.mlx_zoo_blas_policy(0 if cores > 1 else 1, cores):
        return "OpenBLAS's own: it has no openblas_set_num_threads"
    return (f"adaptive: 1 or {cores} per product shape, whichever runs faster" if cores > 1
            else "1 (one core available)")


def set_blas_threads(count: int) -> bool:
    """Run the fast BLAS serving MLX (:func:`blas_status`) on ``count`` threads from now on
    (the adaptive policy stops), through OpenBLAS's ``openblas_set_num_threads`` (any of
    :data:`PREFIXES`, 32- or 64-bit integer builds). False when no fast BLAS serves or it has no
    such function. OpenBLAS's idle threads spin: where other threads or processes share the
    cores (a server's event loop and clients, parallel ranks on one host) fewer BLAS threads
    run faster (docs/benchmarks.md, "Serving", "Parallel" and "Under load"). Callers leave a
    user's ``OPENBLAS_NUM_THREADS`` alone."""
    library = blas_status().library
    if not library or count < 1:
        return False
    if _shim is not None and _shim.mlx_zoo_blas_policy(count, count):
        _status.threads = f"{count} (set_blas_threads)"
        return True
    try:
        lib = ctypes.CDLL(library)
    except OSError:
        return False
    for prefix in PREFIXES:
        for name in (f"{prefix}openblas_set_num_threads", f"{prefix}openblas_set_num_threads64_"):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(count))
                if _status is not None:
                    _status.threads = f"{count} (set_blas_threads)"
                return True
    return False


# At import: mlx_zoo/__init__.py imports this module before anything imports mlx.core.
preload_fast_blas()
