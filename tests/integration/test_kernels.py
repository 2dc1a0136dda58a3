"""mlx_zoo.kernels: the CUDA quantized matvec and its dispatch.

Everywhere: ``quantized_matmul`` is exactly ``mx.quantized_matmul`` off CUDA, ``use_fast_kernels``
changes nothing off CUDA (and, forced, keeps the layers ``nn.QuantizedLinear`` with the same
parameter names and outputs), and the shape gate. With nvcc: the kernel source compiles for
sm_90. On a CUDA default device: the kernel against MLX's ``quantized_matmul`` and a float32 CPU
reference over every plugin's projection shapes, 4 and 8 bits, group sizes 32/64/128, 1 to 8
rows, bfloat16/float16/float32 inputs (each case prints its errors: ``pytest -s`` for the table).
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from mlx_zoo import kernels
from mlx_zoo.kernels import cuda_qmv, nvrtc

ON_CUDA = cuda_qmv.ready()
needs_cuda = pytest.mark.skipif(not ON_CUDA, reason="no CUDA device: MLX's CUDA backend is "
                                "needed to run the kernel (CPU/Metal use mx.quantized_matmul)")


def quantized(n: int, k: int, bits: int, group_size: int, dtype=mx.bfloat16, seed: int = 0):
    key = mx.random.key(seed)
    w = (mx.random.normal((n, k), key=key) * 0.02 + 0.003).astype(dtype)
    return mx.quantize(w, group_size=group_size, bits=bits)


def inputs(m: int | tuple, k: int, dtype, seed: int = 1) -> mx.array:
    shape = (m, k) if isinstance(m, int) else (*m, k)
    return (mx.random.normal(shape, key=mx.random.key(seed)) + 0.1).astype(dtype)


# -- everywhere -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits,group_size,m", [(4, 64, 1), (8, 32, 3), (4, 128, 8), (4, 64, 20)])
def test_fallback_is_mlx(bits, group_size, m):
    if ON_CUDA:
        pytest.skip("on CUDA the kernel runs: compared in the CUDA tests")
    w, s, b = quantized(40, 256, bits, group_size)
    x = inputs(m, 256, mx.bfloat16)
    ours = kernels.quantized_matmul(x, w, s, b, group_size=group_size, bits=bits)
    mlx = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=group_size, bits=bits)
    assert ours.dtype == mlx.dtype and ours.shape == mlx.shape
    assert mx.array_equal(ours, mlx).item()


def test_supported_gate():
    w, s, b = quantized(64, 256, 4, 64)
    x = inputs(1, 256, mx.bfloat16)
    assert cuda_qmv.supported(x, w, s, b, 64, 4)
    assert cuda_qmv.supported(inputs((2, 4), 256, mx.float32), w, s, b, 64, 4)  # 8 rows
    assert not cuda_qmv.supported(inputs(9, 256, mx.bfloat16), w, s, b, 64, 4)  # too many rows
    assert not cuda_qmv.supported(x, w, s, b, 64, 4, transpose=False)
    assert not cuda_qmv.supported(x, w, s, None, 64, 4)
    assert not cuda_qmv.supported(x, w, s, b, 64, 4, mode="mxfp4")
    assert not cuda_qmv.supported(inputs(1, 128, mx.bfloat16), w, s, b, 64, 4)  # wrong K
    assert not cuda_qmv.supported(x, w, s, b, 32, 4)  # scales shape of another group size
    w3, s3, b3 = mx.quantize(mx.random.normal((64, 256)), group_size=64, bits=3)
    assert not cuda_qmv.supported(x, w3, s3, b3, 64, 3)


def tiny_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32, bias=False),
                          nn.Linear(32, 16))
    nn.quantize(model, group_size=32, bits=4)
    model.layers[3] = nn.QuantizedLinear(32, 16, group_size=32, bits=4, mode="mxfp4")
    mx.eval(model.parameters())
    return model


def test_use_fast_kernels_leaves_non_cuda_alone():
    if ON_CUDA:
        pytest.skip("on CUDA use_fast_kernels switches the layers")
    model = tiny_model()
    before = [type(m) for _, m in model.named_modules()]
    assert kernels.use_fast_kernels(model) == 0
    assert [type(m) for _, m in model.named_modules()] == before


def test_use_fast_kernels_forced_keeps_layers_and_outputs(tmp_path):
    model = tiny_model()
    x = inputs(2, 128, mx.float32)
    y0 = model(x)
    names = [k for k, _ in tree_flatten(model.parameters())]
    assert kernels.use_fast_kernels(model, force=True) == 2  # the mxfp4 layer is not affine
    assert type(model.layers[0]) is kernels.FastQuantizedLinear
    assert type(model.layers[3]) is nn.QuantizedLinear
    assert all(isinstance(model.layers[i], nn.QuantizedLinear) for i in (0, 2, 3))
    assert [k for k, _ in tree_flatten(model.parameters())] == names
    y1 = model(x)
    tol = 0.0 if not ON_CUDA else 1e-4
    assert (mx.abs(y1 - y0).max() <= tol * mx.abs(y0).max()).item()
    model.save_weights(str(tmp_path / "w.safetensors"))
    twin = tiny_model()
    twin.load_weights(str(tmp_path / "w.safetensors"), strict=True)
    assert mx.allclose(twin(x), y0, atol=1e-4).item()
    assert kernels.use_fast_kernels(model, force=True) == 0  # already switched


def test_use_fast_kernels_on_fused_qwen2(tmp_path):
    """A real plugin model, fused as load() gives it: every projection is switched, the
    checkpoint keys stay, and the logits match (exactly off CUDA)."""
    import mlx_zoo
    from mlx_zoo import registry

    config = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2,
              "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 96, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "tie_word_embeddings": False}
    arch = registry.resolve("qwen2")
    args = arch.config_class.from_dict(dict(config), tmp_path)
    model = arch.model_class(args)
    mlx_zoo.quantize(model, args, bits=4, group_size=32)
    mlx_zoo.fuse_projections(model)
    mx.eval(model.parameters())
    tokens = mx.array([[1, 5, 9, 3]])
    ref = model(tokens)
    keys = sorted(k for k, _ in tree_flatten(model.parameters()))
    count = kernels.use_fast_kernels(model, force=True)
    # per layer: qkv, o, gate_up, down, and the SwiGLU; plus lm_head
    assert count == 2 * 5 + 1
    assert sorted(k for k, _ in tree_flatten(model.parameters())) == keys
    out = model(tokens)
    err = (mx.linalg.norm((out - ref).astype(mx.float32)) / mx.linalg.norm(ref.astype(mx.float32)))
    assert err.item() <= (0.0 if not ON_CUDA else 5e-3)
    path = mlx_zoo.save(model, args, tmp_path / "ckpt")
    loaded, _ = mlx_zoo.load(path, fuse=True, dtype=None, dequantize=False)
    assert sorted(k for k, _ in tree_flatten(loaded.parameters())) == keys


@pytest.mark.skipif(not nvrtc.available(), reason="no NVRTC (libnvrtc) to compile the kernel: "
                    "it comes with MLX's CUDA wheel, or set MLX_ZOO_NVRTC")
@pytest.mark.parametrize("config", [
    (2, 2, 2, 2, 1, 4608, 3584, 64, 4, 4, 4, 1),     # Qwen2-7B fused q/k/v, its bias added
    (2, 2, 2, 2, 1, 37888, 3584, 64, 4, 2, 4, 2),    # Qwen2-7B fused gate/up and SwiGLU
    (2, 2, 2, 2, 1, 152064, 3584, 64, 4, 8, 4, 0),   # Qwen2-7B lm_head
    (0, 2, 0, 0, 8, 1000, 2880, 32, 8, 2, 2, 0),     # float32 x, bfloat16 scales, 8 rows
    (1, 1, 1, 1, 3, 7, 640, 128, 4, 1, 1, 0),        # float16, odd sizes
    (2, 2, 2, 2, 8, 64, 128, 32, 4, 8, 1, 0),        # more outputs than one warp
], ids=lambda c: "_".join(map(str, c)))
def test_kernel_source_compiles(config):
    """Every epilogue and dtype of the kernel compiles for sm_90 with NVRTC, as it is compiled on
    a GPU (catches errors in the source on machines without one)."""
    cfg = cuda_qmv.Config(*config)
    cubin = nvrtc.compile_cubin(cfg.source, cfg.name, "sm_90")
    assert cubin[:4] == b"\x7fELF" and cfg.name.encode() in cubin


def test_nvrtc_reports_compile_errors():
    if not nvrtc.available():
        pytest.skip("no NVRTC")
    with pytest.raises(nvrtc.NvrtcError, match="bad_kernel.*sm_90"):
        nvrtc.compile_cubin('extern "C" __global__ void k() { undeclared(); }', "bad_kernel",
                            "sm_90")


# -- on CUDA --------------------------------------------------------------------------------------

# (out, in) of every plugin's projections: Qwen2-0.5B (q/o, k/v, gate/up, down, fused qkv,
# fused gate_up), Qwen2-7B (q/o, k/v, gate/up, down, lm_head), odd sizes.
SHAPES = [(896, 896), (128, 896), (4864, 896), (896, 4864), (1152, 896), (9728, 896),
          (3584, 3584), (512, 3584), (18944, 3584), (3584, 18944), (4608, 3584),
          (1000, 2880), (2880, 640), (7, 2880), (300, 4096)]
CASES = []  # (n, k, bits, group_size, m, x dtype, scales dtype)
for _n, _k in SHAPES:
    for _bits in (4, 8):
        for _gs in (32, 64, 128):
            CASES.append((_n, _k, _bits, _gs, 1, "bfloat16", "bfloat16"))
for _n, _k in [(3584, 3584), (3584, 18944), (1000, 2880), (896, 896)]:
    for _bits in (4, 8):
        for _m in (2, 4, 8):
            CASES.append((_n, _k, _bits, 64, _m, "bfloat16", "bfloat16"))
CASES += [(1000, 2880, 4, 128, 3, "bfloat16", "bfloat16"),
          (7, 2880, 8, 32, 5, "bfloat16", "bfloat16")]
for _dt in ("float16", "float32"):
    for _bits in (4, 8):
        for _m in (1, 4):
            CASES.append((1000, 2880, _bits, 32 if _m == 1 else 128, _m, _dt, _dt))
            CASES.append((3584, 3584, _bits, 64, _m, _dt, _dt))
CASES += [(3584, 3584, 4, 64, 1, "float32", "bfloat16"),
          (896, 4864, 8, 64, 2, "float32", "bfloat16"),
          (152064, 3584, 4, 64, 1, "bfloat16", "bfloat16"),  # Qwen2-7B lm_head
          (37888, 3584, 4, 64, 1, "bfloat16", "bfloat16"),  # Qwen2-7B fused gate_up
          (37888, 3584, 8, 64, 1, "bfloat16", "bfloat16")]

CASES = [c for c in CASES if c[1] % c[3] == 0]
if os.environ.get("MLX_ZOO_QMV_QUICK"):  # a GPU session short of time: every 5th case
    CASES = list(dict.fromkeys(CASES[::5] + [c for c in CASES[1::5] if c[5] != "bfloat16"]
                               + [c for c in CASES if c[5] != c[6]]))

TOL = {"bfloat16": 8e-3, "float16": 1e-3, "float32": 1e-5}
"""Relative error (Frobenius) allowed against the float32 reference, by output dtype: the
output's rounding (bf16 keeps 8 bits: ~4e-3 seen for MLX's kernel and this one alike)."""


def rel(a: mx.array, b: mx.array) -> float:
    a, b = a.astype(mx.float32), b.astype(mx.float32)
    return (mx.linalg.norm(a - b) / mx.linalg.norm(b)).item()


def case_errors(n, k, bits, gs, m, xdt, sdt, seed=0):
    """(ours vs reference, MLX vs reference, ours vs MLX, max-element error / max |reference|)."""
    w, s, b = quantized(n, k, bits, gs, getattr(mx, sdt), seed=seed)
    x = inputs(m, k, getattr(mx, xdt), seed=seed + 1)
    ours = cuda_qmv.qmv(x, w, s, b, gs, bits)
    mlx = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=gs, bits=bits)
    dense = mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), group_size=gs, bits=bits,
                          stream=mx.cpu)
    ref = mx.matmul(x.astype(mx.float32), dense.T, stream=mx.cpu)
    mx.eval(ours, mlx, ref)
    assert ours.shape == mlx.shape and ours.dtype == mlx.dtype
    assert not mx.any(mx.isnan(ours)).item()
    worst = (mx.abs(ours.astype(mx.float32) - ref).max() / mx.abs(ref).max()).item()
    return rel(ours, ref), rel(mlx, ref), rel(ours, mlx), worst


@needs_cuda
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernel_matches_mlx(case):
    n, k, bits, gs, m, xdt, sdt = case
    seed = CASES.index(case) * 2
    ours_ref, mlx_ref, ours_mlx, worst = case_errors(n, k, bits, gs, m, xdt, sdt, seed)
    print(f"\nQMV n={n} k={k} bits={bits} gs={gs} m={m} x={xdt} s={sdt}: ours/ref {ours_ref:.2e} "
          f"mlx/ref {mlx_ref:.2e} ours/mlx {ours_mlx:.2e} max-elt {worst:.2e}")
    out_dtype = cuda_qmv._out_dtype(getattr(mx, xdt), getattr(mx, sdt))
    tol = TOL[str(out_dtype).split(".")[-1]]
    assert ours_ref <= tol
    assert worst <= 4 * tol
    assert ours_mlx <= 2 * tol


@needs_cuda
def test_dispatch_on_cuda():
    w, s, b = quantized(512, 1024, 4, 64)
    x = inputs((1, 1), 1024, mx.bfloat16)  # (1, 1, K): a decode step's activations
    y = kernels.quantized_matmul(x, w, s, b, group_size=64, bits=4)
    assert y.shape == (1, 1, 512)
    big = inputs(16, 1024, mx.bfloat16)  # prefill-sized: MLX's kernel
    y16 = kernels.quantized_matmul(big, w, s, b, group_size=64, bits=4)
    ref = mx.quantized_matmul(big, w, s, b, transpose=True, group_size=64, bits=4)
    assert mx.array_equal(y16, ref).item()


@needs_cuda
@pytest.mark.parametrize("bits,m,dtype", [(4, 1, "bfloat16"), (8, 3, "bfloat16"),
                                          (4, 2, "float16"), (4, 1, "float32")])
def test_bias_epilogue_matches_mlx(bits, m, dtype):
    """The bias added in the kernel (Qwen2's fused q/k/v) against MLX's product + bias."""
    dt = getattr(mx, dtype)
    w, s, b = quantized(1152, 896, bits, 64, dt, seed=bits)
    x = inputs((1, m), 896, dt, seed=3)
    bias = (mx.random.normal((1152,), key=mx.random.key(5)) * 0.5).astype(dt)
    assert cuda_qmv.fuses_bias(x, s, bias)
    ours = cuda_qmv.qmv(x, w, s, b, 64, bits, bias=bias)
    mlx = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=64, bits=bits) + bias
    assert ours.shape == mlx.shape == (1, m, 1152) and ours.dtype == mlx.dtype
    assert rel(ours, mlx) <= 2 * TOL[dtype]


@needs_cuda
@pytest.mark.parametrize("n,k,bits,m,dtype", [(4864, 896, 4, 1, "bfloat16"),
                                              (18944, 3584, 4, 1, "bfloat16"),
                                              (1000, 640, 8, 3, "bfloat16"),
                                              (300, 2880, 4, 2, "float16"),
                                              (7, 640, 4, 1, "float32")])
def test_swiglu_epilogue_matches_mlx(n, k, bits, m, dtype):
    """silu(gate) * up from the fused [gate; up] weight against MLX's ops on the same arrays."""
    from mlx_zoo.layers import swiglu

    dt = getattr(mx, dtype)
    w, s, b = quantized(2 * n, k, bits, 64, dt, seed=n)
    x = inputs((1, m), k, dt, seed=7)
    ours = cuda_qmv.qmv_swiglu(x, w, s, b, 64, bits)
    both = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=64, bits=bits)
    mlx = swiglu(both[..., :n], both[..., n:])
    assert ours.shape == mlx.shape == (1, m, n) and ours.dtype == mlx.dtype
    assert rel(ours, mlx) <= 2 * TOL[dtype]


@needs_cuda
def test_unaligned_views():
    """An x or a weight that is a view starting mid-buffer, off a 16-byte boundary: the right
    values, no misaligned-address fault (compared with a float32 product on the CPU)."""
    w, s, b = quantized(641, 1024, 4, 64)

    def cpu(x, w):  # float32 on the CPU (MLX's own bfloat16 kernel is ~3e-2 off here)
        dense = mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), group_size=64,
                              bits=4, stream=mx.cpu)
        return mx.matmul(x.astype(mx.float32), dense.T, stream=mx.cpu)

    x = inputs(1, 1024 + 3, mx.bfloat16)[:, 3:]  # starts 6 bytes into its buffer
    ours = cuda_qmv.qmv(x, w, s, b, 64, 4)
    mx.eval(ours)
    assert rel(ours, cpu(x, w)) <= 2 * TOL["bfloat16"]
    # packed weights starting 4 bytes into their buffer
    shifted = mx.concatenate([mx.zeros((1,), mx.uint32), w.reshape(-1)])[1:].reshape(w.shape)
    x = inputs(1, 1024, mx.bfloat16)
    ours = cuda_qmv.qmv(x, shifted, s, b, 64, 4)
    mx.eval(ours)
    assert rel(ours, cpu(x, w)) <= 2 * TOL["bfloat16"]
