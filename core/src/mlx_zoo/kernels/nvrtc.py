"""CUDA C++ to a cubin with NVRTC, for ``mx.fast.precompiled_cuda_kernel``.

Why not ``mx.fast.cuda_kernel``: that function rebuilds the kernel's whole source string on every
call and MLX hashes it again at every evaluation, which costs a decode step several microseconds
of host time per custom kernel (docs/benchmarks.md, "Host overhead per decode token on CUDA");
decode on MLX's CUDA backend is bound by exactly that host time. A precompiled kernel is
compiled once here, and each call only hands MLX the binary.

NVRTC is the library MLX's own CUDA backend compiles its kernels with (the ``mlx-cuda`` wheel
depends on ``nvidia-cuda-nvrtc``), so it is present wherever MLX runs on CUDA. It is found in
this order: already loaded in the process (MLX links it), ``$MLX_ZOO_NVRTC`` (a path), the
``nvidia`` pip packages' ``lib`` directories, then the system's library path.

Compiling needs no GPU: the target architecture is an argument (``sm_90`` for H100/H200).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import threading
from functools import lru_cache

from ..errors import MlxZooError

NVRTC_ENV = "MLX_ZOO_NVRTC"
"""Environment variable: the path of the NVRTC library to use (``libnvrtc.so.13``)."""

SONAMES = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so")
"""NVRTC's sonames, newest first (MLX's CUDA 13 wheel uses 13, its CUDA 12 wheel 12)."""


class NvrtcError(MlxZooError):
    """NVRTC is missing, or refused a kernel's source (the message carries its log)."""


def _loaded_path() -> str | None:
    """The NVRTC library this process has already loaded (by MLX), from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(" ", 1)[-1].strip()
                if os.path.basename(path).startswith("libnvrtc.so"):
                    return path
    except OSError:
        pass
    return None


def _candidates() -> list[str]:
    found = [p for p in (_loaded_path(), os.environ.get(NVRTC_ENV)) if p]
    for entry in sys.path:  # pip's nvidia-cuda-nvrtc: nvidia/cu13/lib or nvidia/cuda_nvrtc/lib
        for pattern in ("nvidia/cu*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*"):
            found += sorted(glob.glob(os.path.join(entry, pattern)), reverse=True)
    found += list(SONAMES)
    system = ctypes.util.find_library("nvrtc")
    if system:
        found.append(system)
    return [p for p in found if "builtins" not in os.path.basename(p)]


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """NVRTC, opened once; :class:`NvrtcError` when it is nowhere (see the module's docstring)."""
    tried = []
    for path in dict.fromkeys(_candidates()):
        try:
            lib = ctypes.CDLL(path)
            lib.nvrtcVersion  # noqa: B018 (a library of that name that is not NVRTC fails here)
        except (OSError, AttributeError) as e:
            tried.append(f"{path}: {e}")
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        return lib
    raise NvrtcError("NVRTC (libnvrtc.so) was not found: it comes with MLX's CUDA wheel "
                     f"(nvidia-cuda-nvrtc); set {NVRTC_ENV} to its path. Tried: "
                     + "; ".join(tried))


def available() -> bool:
    """Whether NVRTC can be opened."""
    try:
        library()
    except NvrtcError:
        return False
    return True


def version() -> tuple[int, int]:
    """NVRTC's (major, minor)."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(library().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def _check(result: int, call: str) -> None:
    if result != 0:
        message = library().nvrtcGetErrorString(result).decode(errors="replace")
        raise NvrtcError(f"{call} failed: {message} (NVRTC error {result})")


_COMPILE_LOCK = threading.Lock()
"""One compile at a time: two threads that first meet one kernel compile it once (with
:func:`compile_cubin`'s cache) instead of racing."""


def compile_cubin(source: str, name: str, arch: str) -> bytes:
    """``source`` (CUDA C++ defining ``extern "C" __global__`` kernels) compiled for ``arch``
    (``"sm_90"``) to a cubin; cached per (source, name, arch) for the life of the process.
    ``name`` names the program in NVRTC's messages. :class:`NvrtcError` with NVRTC's log when
    the source does not compile."""
    with _COMPILE_LOCK:
        return _compile(source, name, arch)


# a model needs a few dozen kernel configurations at most (its shapes x rows of x x epilogues)
@lru_cache(maxsize=256)
def _compile(source: str, name: str, arch: str) -> bytes:
    lib = library()
    prog = ctypes.c_void_p()
    _check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(),
                                  0, None, None), "nvrtcCreateProgram")
    try:
        options = [f"--gpu-architecture={arch}", "-std=c++17", "--extra-device-vectorization"]
        argv = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        result = lib.nvrtcCompileProgram(prog, len(options), argv)
        if result != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value + 1)
            lib.nvrtcGetProgramLog(prog, log)
            raise NvrtcError(f"NVRTC could not compile the kernel {name} for {arch}:\n"
                             + log.value.decode(errors="replace").strip())
        size = ctypes.c_size_t()
        _check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
