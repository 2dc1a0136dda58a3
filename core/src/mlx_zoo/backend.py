"""MLX's Linux CPU backend: a fast BLAS, and when to compute in dense float32.

MLX's Linux CPU wheel (``mlx-cpu``) links the netlib *reference* BLAS (``mlx_cpu.libs/libblas``):
its ``cblas_sgemm`` runs a 2048x2048 float32 matmul at ~5 GFLOP/s on a 2-core VM, where
OpenBLAS reaches 100-300 GFLOP/s. ``libmlx.so`` asks the dynamic linker for the unversioned
symbol ``cblas_sgemm`` (and ``cblas_dgemm``, ``cblas_cgemm``, LAPACK's ``*_``); the linker binds
it to the first library *in the global scope* that defines it. So a BLAS opened with
``RTLD_GLOBAL`` **before** ``mlx.core`` is imported takes the place of the reference BLAS; one
opened afterwards does nothing (the bindings are already made -- measured, see
docs/benchmarks.md). :func:`preload_fast_blas` does this, and ``mlx_zoo/__init__.py`` calls it
first thing, so ``import mlx_zoo`` (or ``mlx-zoo generate``) before ``import mlx.core`` gives the
fast path with no environment variable. ``LD_PRELOAD=/path/libopenblas.so.0`` works too, for
programs that import MLX first.

Which library, in :func:`find_fast_blas`'s order: ``MLX_ZOO_BLAS`` (a library file, or
``reference`` to keep MLX's own), a system OpenBLAS (Debian/Ubuntu ``libopenblas0-pthread``,
Fedora ``openblas``), the ``cmeel-openblas`` wheel (it needs the system's ``libgfortran5``), then
the ``scipy-openblas32`` wheel -- numpy/scipy's own OpenBLAS build, a core dependency on Linux, so
the fast path is there by default. That last one names its symbols ``scipy_cblas_sgemm`` &c., which
MLX cannot bind to by itself; the shim below provides the plain ``cblas_sgemm`` in front of it.

MLX multiplies a single row (decoding one token) with ``cblas_sgemm`` too, and OpenBLAS's sgemm
packs the whole matrix even then: 2-2.5x slower than its ``cblas_sgemv``. Where a C compiler
exists, a 50-line shim (:data:`GEMV_SHIM_SOURCE`, compiled once into ``~/.cache/mlx_zoo`` or a
fallback, see :func:`_shim_cache_dir`) is put first in the global scope: its ``cblas_sgemm`` sends
matrix-vector products to the library's ``[prefix]cblas_sgemv`` and all else to its
``[prefix]cblas_sgemm``. ``MLX_ZOO_BLAS_SHIM=0`` turns it off; without it (or without a compiler)
only a library exporting the plain ``cblas_sgemm`` can serve, and :func:`blas_status` says why MLX
kept its reference BLAS otherwise. Only ``cblas_sgemm`` (MLX's float32 matmuls) goes through the
shim: float64/complex matmuls and LAPACK stay with the reference libraries when the renamed library
serves.

Even with OpenBLAS, MLX's CPU kernels for 4-bit quantized matmuls and for bfloat16/float16
matmuls are slow paths (a Qwen2-0.5B shape decodes ~4x slower in bf16 than in float32, and
~6x slower in 4-bit), so on this backend :func:`prefers_dense_float32` is true and
``mlx_zoo.load(..., dtype="auto", dequantize="auto")`` computes in dense float32 when
:func:`fits_in_memory` says the float32 weights fit.
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

MEMORY_FRACTION = 0.6
"""Share of available memory that dense float32 weights may take for the "auto" load policy:
the rest is for the KV cache, activations and the half-precision copy held while converting."""


@dataclass
class BlasStatus:
    """What :func:`preload_fast_blas` did: ``library`` is the file now serving ``cblas_sgemm``
    for MLX (None: MLX's reference BLAS), ``reason`` says why in words."""

    library: str | None
    reason: str
    shim: str | None = None  # the gemv shim in front of the library's cblas_sgemm, if built

    @property
    def fast(self) -> bool:
        return self.library is not None


_status: BlasStatus | None = None


def _is_linux_cpu_wheel() -> bool:
    """True where MLX ships the reference BLAS: Linux (macOS uses Accelerate)."""
    return sys.platform.startswith("linux")


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
    except Exception as e:  # runs at import of mlx_zoo: a surprise here must not stop it
        _status = BlasStatus(None, f"kept the reference BLAS: preloading failed with "
                             f"{type(e).__name__}: {e}")
    log.debug("BLAS for MLX: %s (%s)", _status.library or "reference", _status.reason)
    return _status


def _preload() -> BlasStatus:
    if not _is_linux_cpu_wheel():
        return BlasStatus(None, f"not Linux ({sys.platform}): MLX uses the platform's BLAS")
    preloaded = _preloaded_by_environment()
    if preloaded:
        return BlasStatus(preloaded, "LD_PRELOAD")
    candidates = find_fast_blas()
    if "mlx.core" in sys.modules:
        return BlasStatus(None, "mlx.core was imported before mlx_zoo: its BLAS is bound "
                          "already (import mlx_zoo first, or set LD_PRELOAD)")
    if not candidates:
        return BlasStatus(None, f"no OpenBLAS found (install scipy-openblas32, a dependency of "
                          f"mlx-zoo on Linux, or libopenblas0-pthread, or set {BLAS_ENV})")
    failures = []
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
            return BlasStatus(path, f"preloaded before mlx.core through the gemv shim "
                              f"({prefix}{SYMBOL})", shim)
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # every other BLAS/LAPACK symbol
        reason = "preloaded before mlx.core" + (f"; {why_not}" if why_not else "")
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
   plain cblas_sgemm. */
#include <dlfcn.h>
#include <stdio.h>
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *,
                         int, float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
static sgemm_fn real_sgemm;
static sgemv_fn real_sgemv;

int mlx_zoo_gemv_shim_init(const char *path, const char *prefix) {
  char name[128];
  void *blas = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!blas) return 0;
  snprintf(name, sizeof name, "%scblas_sgemm", prefix);
  real_sgemm = (sgemm_fn)dlsym(blas, name);
  snprintf(name, sizeof name, "%scblas_sgemv", prefix);
  real_sgemv = (sgemv_fn)dlsym(blas, name);
  return real_sgemm && real_sgemv;
}

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
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
            return str(shim), ""
        return None, f"the gemv shim found no {prefix}cblas_sgemm/sgemv in {blas_path}"
    log.debug("gemv shim not loaded: %s", why_not)
    return None, why_not


def blas_status() -> BlasStatus:
    """The BLAS serving MLX's CPU float32 matmuls in this process."""
    return preload_fast_blas()


def is_linux_cpu() -> bool:
    """True when MLX computes on its Linux CPU backend (no GPU device is the default)."""
    import mlx.core as mx

    return _is_linux_cpu_wheel() and mx.default_device() == mx.cpu


def prefers_dense_float32() -> bool:
    """Whether dense float32 is the fast way to compute here: on MLX's Linux CPU backend its
    quantized and half-precision matmul kernels are slow paths next to float32 BLAS."""
    return is_linux_cpu()


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits_in_memory(nbytes: int, fraction: float = MEMORY_FRACTION) -> bool:
    """Whether ``nbytes`` of weights fit in ``fraction`` of the available memory."""
    available = available_memory()
    return available is not None and nbytes <= fraction * available



# -- dense weights for the CPU fast path ------------------------------------------------------

SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U64": 8, "I32": 4,
                        "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}
"""Bytes per element of the safetensors dtype names."""

PACKED_BITS = 32
"""Quantized weights are packed into uint32 words: ``32 / bits`` values per element."""


def dense_nbytes(model_dir: Path, bits: int | None, itemsize: int = 4) -> int:
    """Bytes the checkpoint's weights take as dense arrays of ``itemsize`` bytes (float32 by
    default), read from the safetensors headers only: a packed quantized ``X.weight`` (uint32,
    with an ``X.scales`` beside it) holds ``32 / bits`` values per element; its scales and biases
    disappear once dequantized."""
    from .weights import read_safetensors_header, weight_files

    entries: dict[str, dict] = {}
    for path in weight_files(Path(model_dir)):
        entries.update({k: v for k, v in read_safetensors_header(path).items()
                        if k != "__metadata__"})
    total = 0
    for name, entry in entries.items():
        count = 1
        for dim in entry["shape"]:
            count *= dim
        stem = name.rsplit(".", 1)[0]
        quantized = bits and f"{stem}.scales" in entries
        if quantized and name.endswith(".weight"):
            total += count * PACKED_BITS // bits * itemsize
        elif quantized:
            continue  # scales / biases
        else:
            total += count * max(itemsize, SAFETENSORS_ITEMSIZE.get(entry["dtype"], itemsize))
    return total


def _dense_linear(layer, dtype):
    import mlx.core as mx
    import mlx.nn as nn

    weight = _dequantized_weight(layer, dtype)
    out_dims, in_dims = weight.shape
    dense = nn.Linear(in_dims, out_dims, bias="bias" in layer)
    dense.weight = weight
    if "bias" in layer:
        dense.bias = layer.bias.astype(weight.dtype)
    mx.eval(dense.parameters())
    return dense


def _dense_embedding(layer, dtype):
    import mlx.core as mx
    import mlx.nn as nn

    weight = _dequantized_weight(layer, dtype)
    dense = nn.Embedding(*weight.shape)
    dense.weight = weight
    mx.eval(dense.parameters())
    return dense


def _dense_switch_linear(layer, dtype):
    import mlx.core as mx

    from .layers import SwitchLinear

    weight = _dequantized_weight(layer, dtype)
    experts, out_dims, in_dims = weight.shape
    dense = SwitchLinear(in_dims, out_dims, experts, bias="bias" in layer)
    dense.weight = weight
    if "bias" in layer:
        dense.bias = layer.bias.astype(weight.dtype)
    mx.eval(dense.parameters())
    return dense


def _dequantized_weight(layer, dtype):
    import mlx.core as mx

    weight = mx.dequantize(layer["weight"], layer["scales"], layer.get("biases"),
                           group_size=layer.group_size, bits=layer.bits,
                           mode=getattr(layer, "mode", "affine"))
    return weight.astype(dtype or layer["scales"].dtype)


def dequantize_model(model, dtype=None) -> int:
    """Replace every quantized layer of ``model`` (``QuantizedLinear``, ``QuantizedEmbedding``,
    :class:`~mlx_zoo.layers.QuantizedSwitchLinear`) by its dense counterpart holding the
    dequantized weights, in ``dtype`` (default: the dtype of its scales). Layer by layer, so
    that at most one dense copy is in flight. Returns the number of layers replaced."""
    import mlx.nn as nn
    from mlx.utils import tree_unflatten

    from .layers import QuantizedSwitchLinear

    converters = ((nn.QuantizedLinear, _dense_linear), (nn.QuantizedEmbedding, _dense_embedding),
                  (QuantizedSwitchLinear, _dense_switch_linear))
    replaced = []
    for path, module in model.named_modules():
        for cls, convert in converters:
            if isinstance(module, cls):
                replaced.append((path, convert(module, dtype)))
                break
    if replaced:
        model.update_modules(tree_unflatten(replaced))
    return len(replaced)


# At import: mlx_zoo/__init__.py imports this module before anything imports mlx.core.
preload_fast_blas()
