"""mlx_zoo.backend: OpenBLAS for MLX's Linux CPU wheel (checked by what the dynamic linker binds,
not by timing), and the dense-float32 load path (``load(dequantize=..., dtype="auto")``)."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from parity import rel_err

import mlx_zoo
from mlx_zoo import backend
from mlx_zoo.layers import QuantizedSwitchLinear, SwitchLinear

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
PIP_BLAS = backend._scipy_openblas32()  # the scipy-openblas32 wheel, a core dependency on Linux


def blas_prefix(path: str) -> str | None:
    try:
        return backend.blas_prefix(ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL))
    except OSError:
        return None


CANDIDATES = backend.find_fast_blas() if LINUX else []  # as $MLX_ZOO_BLAS says, if set
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
    monkeypatch.delenv(backend.BLAS_ENV, raising=False)
    assert PIP_BLAS and backend.find_fast_blas()[-1] == PIP_BLAS[-1]
    assert blas_prefix(PIP_BLAS[-1]) == "scipy_"


@needs_linux
@needs_cc
def test_pip_openblas_alone_serves_mlx_through_the_shim():
    # Forced, so that it is checked even where a system OpenBLAS would come first.
    env = {backend.BLAS_ENV: PIP_BLAS[0]}
    assert "gemv_shim" in sgemm_binding("import mlx_zoo; " + MATMUL, **env)
    status = "import mlx_zoo; s = mlx_zoo.backend.blas_status(); print(s.library, s.shim)"
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
    bound = sgemm_binding("import mlx_zoo; " + MATMUL, **{backend.SHIM_ENV: "0"})
    assert "openblas" in bound and not is_reference_blas(bound)


def reference_with_reason(**env: str) -> str:
    """With only the pip OpenBLAS (renamed symbols) and ``env``: MLX must keep its reference
    BLAS, and the status must say why. Returns the reason."""
    env = {backend.BLAS_ENV: PIP_BLAS[0], **env}
    assert is_reference_blas(sgemm_binding("import mlx_zoo; " + MATMUL, **env))
    code = "import mlx_zoo; s = mlx_zoo.backend.blas_status(); assert not s.fast; print(s.reason)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, **env}).stdout


@needs_linux
def test_renamed_blas_without_the_shim_keeps_reference_and_says_why():
    reason = reference_with_reason(**{backend.SHIM_ENV: "0"})
    assert "scipy_cblas_sgemm" in reason and f"{backend.SHIM_ENV}=0" in reason


@needs_linux
def test_renamed_blas_without_a_compiler_keeps_reference_and_says_why(tmp_path):
    # An empty cache (no shim built before) and no compiler.
    reason = reference_with_reason(CC=str(tmp_path / "no-such-cc"), XDG_CACHE_HOME=str(tmp_path))
    assert "needs a C compiler" in reason and "no-such-cc" in reason


SHIM_CASES = """
import numpy as np, mlx_zoo, mlx.core as mx
assert mlx_zoo.backend.blas_status().shim, mlx_zoo.backend.blas_status()
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
                   env={**os.environ, backend.BLAS_ENV: library})


@needs_fast_blas
def test_too_late_after_mlx_and_says_so():
    # The order matters: once mlx.core is loaded its symbols are bound to the reference BLAS.
    code = "import mlx.core; import mlx_zoo; print(mlx_zoo.backend.blas_status().reason); "
    assert is_reference_blas(sgemm_binding(code + MATMUL))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "imported before mlx_zoo" in out.stdout


@needs_fast_blas
def test_environment_keeps_reference_blas():
    code = "import mlx_zoo; " + MATMUL
    assert is_reference_blas(sgemm_binding(code, **{backend.BLAS_ENV: "reference"}))


@needs_fast_blas
def test_openblas_matmul_matches_numpy():
    code = ("import mlx_zoo, mlx.core as mx, numpy as np;"
            "assert mlx_zoo.backend.blas_status().fast;"
            "a = mx.random.normal((300, 200)); b = mx.random.normal((200, 100));"
            "err = np.abs(np.array(a @ b) - np.array(a, np.float64) @ np.array(b, np.float64));"
            "assert err.max() < 1e-3, err.max()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_find_fast_blas_follows_environment(monkeypatch):
    monkeypatch.setenv(backend.BLAS_ENV, "off")
    assert backend.find_fast_blas() == []
    monkeypatch.setenv(backend.BLAS_ENV, "/opt/my/libopenblas.so.0")
    assert backend.find_fast_blas() == ["/opt/my/libopenblas.so.0"]


def test_unusable_library_is_reported_not_raised(monkeypatch, tmp_path):
    bogus = tmp_path / "libnotblas.so"
    bogus.write_bytes(b"not an ELF file")
    monkeypatch.setattr(backend, "find_fast_blas", lambda: [str(bogus)])
    monkeypatch.setattr(sys, "modules", {k: v for k, v in sys.modules.items() if k != "mlx.core"})
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    status = backend._preload()
    assert not status.fast and str(bogus) in status.reason


def test_fits_in_memory(monkeypatch):
    monkeypatch.setattr(backend, "available_memory", lambda: 1000)
    assert backend.fits_in_memory(600) and not backend.fits_in_memory(601)
    monkeypatch.setattr(backend, "available_memory", lambda: None)
    assert not backend.fits_in_memory(1)


# -- dense float32 loading ------------------------------------------------------------------

HIDDEN, VOCAB, GROUP = 64, 96, 32


@pytest.fixture
def quantized_checkpoint(tmp_path, testplugin) -> Path:
    """A zoo_tiny checkpoint saved 4-bit by mlx_zoo.quantize/save."""
    src = tmp_path / "dense"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "zoo_tiny", "vocab_size": VOCAB,
                                                 "hidden_size": HIDDEN}))
    mx.random.seed(1)
    mx.save_safetensors(str(src / "model.safetensors"), {
        "embed.weight": mx.random.normal((VOCAB, HIDDEN)),
        "qkv.weight": mx.random.normal((3 * HIDDEN, HIDDEN)) * 0.3,
        "out.weight": mx.random.normal((VOCAB, HIDDEN)) * 0.3})
    model, config = mlx_zoo.load(src)
    mlx_zoo.quantize(model, config, bits=4, group_size=GROUP)
    return mlx_zoo.save(model, config, tmp_path / "q4")


def logits(model) -> mx.array:
    return model(mx.array([[3, 1, 4, 1, 5, 9, 2, 6]]))


def quantized_layers(model) -> list[str]:
    return [p for p, m in model.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]


def test_dequantized_load_is_dense_and_computes_the_same(quantized_checkpoint, tmp_path):
    quantized, _ = mlx_zoo.load(quantized_checkpoint)
    assert len(quantized_layers(quantized)) == 3
    dense, config = mlx_zoo.load(quantized_checkpoint, dequantize=True, dtype="float32")
    assert quantized_layers(dense) == []
    assert dense.qkv.weight.dtype == mx.float32 and dense.qkv.weight.shape == (3 * HIDDEN, HIDDEN)
    assert rel_err(logits(dense), logits(quantized)) < 1e-5
    # Saved again, it is a dense checkpoint (no stale "quantization" entry).
    mlx_zoo.save(dense, config, tmp_path / "dense-again")
    assert "quantization" not in json.loads((tmp_path / "dense-again/config.json").read_text())
    again, _ = mlx_zoo.load(tmp_path / "dense-again")
    assert quantized_layers(again) == [] and rel_err(logits(again), logits(quantized)) < 1e-5


def test_dense_nbytes_estimates_the_float32_model(quantized_checkpoint):
    dense, _ = mlx_zoo.load(quantized_checkpoint, dequantize=True, dtype="float32")
    actual = sum(a.nbytes for _, a in tree_flatten(dense.parameters()))
    assert backend.dense_nbytes(quantized_checkpoint, bits=4) == actual


@pytest.mark.parametrize("fast, fits, dense", [(True, True, True), (True, False, False),
                                               (False, True, False)])
def test_auto_policy(quantized_checkpoint, monkeypatch, fast, fits, dense):
    monkeypatch.setattr(backend, "prefers_dense_float32", lambda: fast)
    monkeypatch.setattr(backend, "fits_in_memory", lambda nbytes: fits)
    model, _ = mlx_zoo.load(quantized_checkpoint, dequantize="auto", dtype="auto")
    assert (quantized_layers(model) == []) is dense
    if dense:
        assert model.out.weight.dtype == mx.float32


def test_bad_dequantize_value(quantized_checkpoint):
    with pytest.raises(ValueError, match="dequantize"):
        mlx_zoo.load(quantized_checkpoint, dequantize="yes")


def test_switch_linear_dequantizes():
    mx.random.seed(2)
    layer = SwitchLinear(64, 32, num_experts=4)
    q = QuantizedSwitchLinear.from_switch_linear(layer, group_size=32, bits=8)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = q

    holder = Holder()
    assert backend.dequantize_model(holder, mx.float32) == 1
    assert isinstance(holder.experts, SwitchLinear)
    x, idx = mx.random.normal((5, 1, 1, 64)), mx.array([[0], [3], [1], [2], [3]])
    assert rel_err(holder.experts(x, idx), q(x, idx)) < 1e-5


def test_biased_layers_dequantize_without_a_dtype():
    """``dtype=None`` (``load(dequantize=True)`` alone): the bias follows the scales' dtype, as
    the weight does (a biased layer -- Qwen2's q/k/v -- used to raise)."""
    mx.random.seed(3)
    linear = nn.Linear(64, 16, bias=True)
    linear.set_dtype(mx.bfloat16)
    switch = SwitchLinear(64, 16, num_experts=2, bias=True)
    switch.set_dtype(mx.bfloat16)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.QuantizedLinear.from_linear(linear, 32, 8)
            self.experts = QuantizedSwitchLinear.from_switch_linear(switch, 32, 8)

    holder = Holder()
    assert backend.dequantize_model(holder) == 2
    for layer in (holder.linear, holder.experts):
        assert layer.weight.dtype == layer.bias.dtype == mx.bfloat16
