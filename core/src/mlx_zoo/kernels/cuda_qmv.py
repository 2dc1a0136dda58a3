"""A batch-1 / small-batch quantized matrix-vector product for MLX's CUDA backend.

``quantized_matmul(x, w, scales, biases, group_size, bits)`` computes what
``mx.quantized_matmul(x, w, scales, biases, transpose=True, group_size=..., bits=...)`` does, for
MLX's affine group-quantized layout (``mx.quantize``: ``w`` is ``(out, in * bits / 32)`` uint32
with the values packed least-significant bits first, ``scales`` and ``biases`` are
``(out, in / group_size)``, and the dequantized weight is ``scale * q + bias``). When the default
device is a CUDA GPU and the shape qualifies (at most :data:`MAX_ROWS` rows of ``x``, 4 or 8
bits, group size 32, 64 or 128, floating ``x``) it runs the kernel below; otherwise it calls
``mx.quantized_matmul`` itself, so CPU and Metal results are exactly MLX's. Two variants fuse
what follows the product in a decoder layer: a bias vector (Qwen2's q/k/v), and SwiGLU over a
fused ``[gate; up]`` weight (:func:`qmv_swiglu`) -- one kernel launch instead of two each.

The kernel is written for host time first, then bandwidth: decode on MLX's CUDA backend is bound
by the host time each op costs (docs/benchmarks.md, "Host overhead per decode token on CUDA"), and
MLX copies a precompiled kernel's binary and hashes it at every call, so that cost grows with the
binary's size. So its loops stay rolled (a cubin of ~8-12 KB; a fully unrolled version was
19-25 KB and cost 12 us of Python per call on 7B shapes against 2 us for MLX's own matvec):

* one warp per output column (for SwiGLU: the gate row and the up row together), ``W`` warps per
  block; the 32 lanes stride over the row's 16-byte chunks of packed weights (32 4-bit or 16
  8-bit values, always inside one quantization group);
* each 4-bit or 8-bit value becomes an exact float with one byte permute (``0x4B0000qq`` is
  ``2**23 + q``) and one subtraction; per chunk a lane accumulates ``sum(x * q)`` for every row
  of x and ``sum(x)``, then adds ``scale * sum(x * q) + bias * sum(x)``: two FMAs per chunk
  instead of dequantizing each value;
* float32 accumulation; a warp-shuffle reduction; the output rounded once to the output dtype
  (the epilogues round where MLX's separate ops would).

Each configuration (dtypes, rows of x, shape, group size, bits, epilogue) is compiled once per
process to a cubin with NVRTC (:mod:`mlx_zoo.kernels.nvrtc`, ~0.2 s each; a model has a handful)
and run through ``mx.fast.precompiled_cuda_kernel``: ``mx.fast.cuda_kernel`` rebuilds the whole
source string at every call. No gradient is defined for the kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache

import mlx.core as mx

from .nvrtc import available as nvrtc_available
from .nvrtc import compile_cubin

MAX_ROWS = 8
"""Largest number of rows of ``x`` (product of its leading dimensions) the kernel takes."""

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
FLOAT_TYPES = (mx.bfloat16, mx.float16, mx.float32)

SOURCE = r"""
// Storage types by dtype code: 0 float32, 1 float16, 2 bfloat16 (16-bit values as raw bits, so
// that no CUDA header is needed).
typedef unsigned int u32;
typedef unsigned short u16;
template <int C> struct Store { typedef u16 type; };
template <> struct Store<0> { typedef float type; };
template <int C> __device__ __forceinline__ float to_float(typename Store<C>::type v);
template <> __device__ __forceinline__ float to_float<0>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<1>(u16 v) {
  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v)); return f;
}
template <> __device__ __forceinline__ float to_float<2>(u16 v) {
  return __uint_as_float(((u32)v) << 16);
}
template <int C> __device__ __forceinline__ typename Store<C>::type from_float(float f);
template <> __device__ __forceinline__ float from_float<0>(float f) { return f; }
template <> __device__ __forceinline__ u16 from_float<1>(float f) {
  u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
}
template <> __device__ __forceinline__ u16 from_float<2>(float f) {  // round to nearest even
  u32 u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (u16)(u >> 16);
}
// f rounded to dtype C, back as a float: what an MLX op with an output of dtype C leaves.
template <int C> __device__ __forceinline__ float rnd(float f) {
  return to_float<C>(from_float<C>(f));
}

// v[0..V) = V consecutive values of x at p as floats. Value by value: x is small and read
// from cache, and a load per value works at any alignment (a view may start anywhere).
template <int C, int V>
__device__ __forceinline__ void load_x(const typename Store<C>::type* p, float* v) {
#pragma unroll
  for (int i = 0; i < V; ++i) v[i] = to_float<C>(p[i]);
}

// The 32 / B values of one packed word, least significant bits first, as exact floats:
// byte-permute each value into the low byte of 0x4B000000 (the float 2^23), subtract 2^23.
template <int B>
__device__ __forceinline__ void unpack(u32 w, float* q) {
  if constexpr (B == 4) {
    const u32 lo = w & 0x0f0f0f0fu;         // values 0, 2, 4, 6
    const u32 hi = (w >> 4) & 0x0f0f0f0fu;  // values 1, 3, 5, 7
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      q[2 * k] = __uint_as_float(__byte_perm(lo, 0x4b000000u, 0x7540 + k)) - 8388608.0f;
      q[2 * k + 1] = __uint_as_float(__byte_perm(hi, 0x4b000000u, 0x7540 + k)) - 8388608.0f;
    }
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      q[k] = __uint_as_float(__byte_perm(w, 0x4b000000u, 0x7540 + k)) - 8388608.0f;
    }
  }
}

typedef Store<TX>::type XT;
typedef Store<TS>::type ST;
typedef Store<TO>::type OT;
typedef Store<TB>::type BT;

// One warp per output column: its 32 lanes stride over the weight row's 16-byte chunks (for
// SwiGLU, over the gate row and the up row together), then reduce with shuffles; lane 0 writes
// the M outputs. The loops stay rolled: the binary stays small, and MLX copies and hashes it at
// every call (host time, which bounds decode, grows with its size).
extern "C" __global__ void KERNEL_NAME(const XT* x, const u32* w, const ST* scales,
                                       const ST* biases,
#if EPI == 1
                                       const BT* bias,
#endif
                                       OT* out) {
  constexpr int VPW = 32 / BITS;             // values per packed word
  constexpr int VPC = 4 * VPW;               // values per 16-byte chunk (inside one group)
  constexpr int CPR = K / VPC;               // chunks per weight row
  constexpr int G = K / GS;                  // groups per row
  constexpr int NOUT = EPI == 2 ? N / 2 : N; // output columns
  constexpr int RW = EPI == 2 ? 2 : 1;       // weight rows per column: gate and up for SwiGLU
  const int lane = threadIdx.x & 31;
  const int col = blockIdx.x * W + (threadIdx.x >> 5);
  if (col >= NOUT) return;  // the whole warp: nothing below synchronises the block
  const bool w_aligned = (((size_t)w) & 15) == 0;  // else a view: word by word

  float acc[M][RW];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < RW; ++r) acc[m][r] = 0.0f;

#pragma unroll 1
  for (int c = lane; c < CPR; c += 32) {
    const int g = (c * VPC) / GS;
    uint4 q[RW];
    float s[RW], b[RW];
#pragma unroll
    for (int r = 0; r < RW; ++r) {
      const size_t row = (size_t)col + r * NOUT;
      const u32* p = w + (row * CPR + c) * 4;
      q[r] = w_aligned ? __ldg(reinterpret_cast<const uint4*>(p))
                       : make_uint4(__ldg(p), __ldg(p + 1), __ldg(p + 2), __ldg(p + 3));
      s[r] = to_float<TS>(scales[row * G + g]);
      b[r] = to_float<TS>(biases[row * G + g]);
    }
    float d[M][RW], xs[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      xs[m] = 0.0f;
#pragma unroll
      for (int r = 0; r < RW; ++r) d[m][r] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float qf[RW][VPW];
#pragma unroll
      for (int r = 0; r < RW; ++r)
        unpack<BITS>(j == 0 ? q[r].x : j == 1 ? q[r].y : j == 2 ? q[r].z : q[r].w, qf[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xv[VPW];
        load_x<TX, VPW>(x + (size_t)m * K + c * VPC + j * VPW, xv);
#pragma unroll
        for (int i = 0; i < VPW; ++i) {
          xs[m] += xv[i];
#pragma unroll
          for (int r = 0; r < RW; ++r) d[m][r] = fmaf(xv[i], qf[r][i], d[m][r]);
        }
      }
    }
    // sum(x * (scale * q + bias)) = scale * sum(x * q) + bias * sum(x), per group
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < RW; ++r)
        acc[m][r] = fmaf(s[r], d[m][r], fmaf(b[r], xs[m], acc[m][r]));
  }

#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
        acc[m][r] += __shfl_xor_sync(0xffffffffu, acc[m][r], off);
  if (lane != 0) return;
#pragma unroll 1
  for (int m = 0; m < M; ++m) {
    float v = acc[m][0];
#if EPI == 1
    // as MLX computes it: the product rounded to the output dtype, then the bias added
    v = rnd<TO>(v) + to_float<TB>(bias[col]);
#elif EPI == 2
    // as MLX's separate ops round it: gate and up, sigmoid(gate), silu = gate * sigmoid(gate),
    // then silu * up
    const float g = rnd<TO>(v);
    const float sg = rnd<TO>(1.0f / (1.0f + expf(-g)));
    v = rnd<TO>(g * sg) * rnd<TO>(acc[m][RW - 1]);
#endif
    out[(size_t)m * NOUT + col] = from_float<TO>(v);
  }
}
"""
"""The kernel, in CUDA C++ for NVRTC, needing no header. It is compiled once per configuration
(:class:`Config`), whose constants (``TX TS TO TB M N K GS BITS R W EPI`` and ``KERNEL_NAME``) are
defined in front of it, so the compiler sees every loop bound."""

DTYPE_CODES = {mx.float32: 0, mx.float16: 1, mx.bfloat16: 2}
"""The kernel's codes for its float dtypes (``Store<C>`` in :data:`SOURCE`)."""

EPILOGUES = {"none": 0, "bias": 1, "swiglu": 2}
"""What the kernel does with each output value: nothing, add a bias vector, or SwiGLU of the
fused ``[gate; up]`` rows (``EPI`` in :data:`SOURCE`)."""


@dataclass(frozen=True)
class Config:
    """One compiled kernel: dtype codes (:data:`DTYPE_CODES`) of x, scales/biases, output and
    bias vector; ``m`` rows of x; ``n`` weight rows of ``k`` inputs; quantization; output
    columns per warp ``r`` (1) and warps per block ``w``; epilogue (:data:`EPILOGUES`)."""

    tx: int
    ts: int
    to: int
    tb: int
    m: int
    n: int
    k: int
    group_size: int
    bits: int
    r: int
    w: int
    epilogue: int

    @property
    def name(self) -> str:
        """The kernel's symbol: unique per configuration."""
        return "mlx_zoo_qmv_" + "_".join(str(v) for v in (
            self.tx, self.ts, self.to, self.tb, self.m, self.n, self.k, self.group_size,
            self.bits, self.r, self.w, self.epilogue))

    @property
    def source(self) -> str:
        """:data:`SOURCE` with this configuration's constants defined in front."""
        defines = dict(TX=self.tx, TS=self.ts, TO=self.to, TB=self.tb, M=self.m, N=self.n,
                       K=self.k, GS=self.group_size, BITS=self.bits, R=self.r, W=self.w,
                       EPI=self.epilogue, KERNEL_NAME=self.name)
        return "".join(f"#define {k} {v}\n" for k, v in defines.items()) + SOURCE

    @property
    def outputs(self) -> int:
        """Output columns: half the weight rows for SwiGLU."""
        return self.n // 2 if self.epilogue == EPILOGUES["swiglu"] else self.n


@lru_cache(maxsize=1)
def architecture() -> str:
    """The CUDA device's architecture as NVRTC names it (``sm_90``), from MLX's device info."""
    return str(mx.device_info().get("architecture", ""))


@lru_cache(maxsize=512)
def binary(config: Config) -> bytes:
    """The cubin of ``config``'s kernel for this device (compiled once per process)."""
    return compile_cubin(config.source, config.name, architecture())


@lru_cache(maxsize=1)
def cuda_available() -> bool:
    """Whether MLX has a usable CUDA backend (its CUDA wheel, on a machine with a GPU)."""
    try:
        return bool(mx.cuda.is_available())
    except Exception:  # noqa: BLE001 (an MLX without the cuda module)
        return False


def on_cuda() -> bool:
    """Whether MLX's default device is a CUDA GPU: where the kernel runs."""
    return cuda_available() and mx.default_device() == mx.gpu


@cache
def _out_dtype(x_dtype: mx.Dtype, s_dtype: mx.Dtype) -> mx.Dtype:
    return (mx.zeros((1,), x_dtype) + mx.zeros((1,), s_dtype)).dtype


WARPS = 4
"""Warps (output columns) per block. One warp per column keeps the kernel small; 4 per block
gives the scheduler blocks of 128 threads, enough of them for every projection of a 0.5B
model (896 columns: 224 blocks)."""


def supported(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array | None,
              group_size: int, bits: int, transpose: bool = True, mode: str = "affine") -> bool:
    """Whether the kernel takes this product (the device aside)."""
    if not (transpose and mode == "affine" and biases is not None and bits in BITS
            and group_size in GROUP_SIZES):
        return False
    if w.ndim != 2 or w.dtype != mx.uint32 or scales.ndim != 2 or x.ndim < 1:
        return False
    n, packed = w.shape
    k = packed * 32 // bits
    if k % group_size or x.shape[-1] != k or scales.shape != (n, k // group_size):
        return False
    if biases.shape != scales.shape or biases.dtype != scales.dtype:
        return False
    if x.dtype not in FLOAT_TYPES or scales.dtype not in FLOAT_TYPES:
        return False
    rows = math.prod(x.shape[:-1])
    return 1 <= rows <= MAX_ROWS and n >= 1


def fuses_bias(x: mx.array, scales: mx.array, bias: mx.array | None) -> bool:
    """Whether the kernel can add ``bias`` itself: a vector of the output's dtype (else the
    sum would promote, and the caller adds it as MLX does)."""
    return (bias is not None and bias.ndim == 1 and bias.dtype in FLOAT_TYPES
            and bias.dtype == _out_dtype(x.dtype, scales.dtype))


_PLANS: dict[tuple, tuple | None] = {}
"""Launches by the shapes and dtypes of a call (None: the kernel does not take it), so that a
decode step's repeated calls cost one dictionary lookup in Python."""


def _plan(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array | None,
          bias: mx.array | None, group_size: int, bits: int, mode: str,
          epilogue: int) -> tuple | None:
    key = (x.shape, x.dtype, w.shape, w.dtype, scales.shape, scales.dtype,
           None if biases is None else (biases.shape, biases.dtype),
           None if bias is None else (bias.shape, bias.dtype), group_size, bits, mode, epilogue)
    try:
        return _PLANS[key]
    except KeyError:
        pass
    plan = None
    if (supported(x, w, scales, biases, group_size, bits, mode=mode)
            and (epilogue != EPILOGUES["bias"] or fuses_bias(x, scales, bias))
            and (epilogue != EPILOGUES["swiglu"] or w.shape[0] % 2 == 0)):
        out_dtype = _out_dtype(x.dtype, scales.dtype)
        config = Config(DTYPE_CODES[x.dtype], DTYPE_CODES[scales.dtype], DTYPE_CODES[out_dtype],
                        DTYPE_CODES[out_dtype if bias is None else bias.dtype],
                        math.prod(x.shape[:-1]), w.shape[0], x.shape[-1], group_size, bits, 1,
                        WARPS, epilogue)
        grid = (-(-config.outputs // WARPS) * 32 * WARPS, 1, 1)  # in threads, as MLX takes it
        plan = (binary(config), config.name, grid, (32 * WARPS, 1, 1),
                [(*x.shape[:-1], config.outputs)], [out_dtype])
    _PLANS[key] = plan
    return plan


def _launch(plan: tuple, inputs: list[mx.array]) -> mx.array:
    cubin, name, grid, threads, out_shapes, out_dtypes = plan
    (out,) = mx.fast.precompiled_cuda_kernel(
        name=name, compiled_source=cubin, inputs=inputs, output_shapes=out_shapes,
        output_dtypes=out_dtypes, scalars=[], grid=grid, threadgroup=threads,
        ensure_row_contiguous=True)
    return out


def try_qmv(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array | None,
            group_size: int, bits: int, mode: str = "affine",
            bias: mx.array | None = None) -> mx.array | None:
    """``x @ dequantize(w).T (+ bias)`` through the kernel, or None where it does not apply
    (not a CUDA device, no NVRTC, a shape or mode it does not take: :func:`supported`). The
    bias is added in the kernel when it has the output's dtype, else after it, as MLX would."""
    if not ready():
        return None
    if bias is not None:
        plan = _plan(x, w, scales, biases, bias, group_size, bits, mode, EPILOGUES["bias"])
        if plan is not None:
            return _launch(plan, [x, w, scales, biases, bias])
    plan = _plan(x, w, scales, biases, None, group_size, bits, mode, EPILOGUES["none"])
    if plan is None:
        return None
    y = _launch(plan, [x, w, scales, biases])
    return y if bias is None else y + bias


def try_qmv_swiglu(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array | None,
                   group_size: int, bits: int, mode: str = "affine") -> mx.array | None:
    """``silu(gate) * up`` from the fused ``[gate; up]`` quantized weight (``w`` has ``2 * H``
    rows, gate's first) in one kernel, or None where it does not apply (as :func:`try_qmv`):
    the product and the SwiGLU after it in one launch instead of two, and the ``2 * H``
    products never written out. Rounded where MLX's separate ops round."""
    if not ready():
        return None
    plan = _plan(x, w, scales, biases, None, group_size, bits, mode, EPILOGUES["swiglu"])
    return None if plan is None else _launch(plan, [x, w, scales, biases])


def qmv(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, group_size: int,
        bits: int, *, bias: mx.array | None = None) -> mx.array:
    """The kernel itself: as :func:`try_qmv`, but :class:`ValueError` where it does not apply
    (for tests and benchmarks that must measure the kernel, not a fallback)."""
    y = try_qmv(x, w, scales, biases, group_size, bits, bias=bias)
    if y is None:
        raise ValueError("the CUDA matvec kernel does not take this product here "
                         f"(x {x.shape} {x.dtype}, w {w.shape}, {bits} bits, group {group_size}, "
                         f"CUDA and NVRTC ready: {ready()})")
    return y


def qmv_swiglu(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, group_size: int,
               bits: int) -> mx.array:
    """The SwiGLU kernel itself: as :func:`try_qmv_swiglu`, but :class:`ValueError` where it
    does not apply."""
    y = try_qmv_swiglu(x, w, scales, biases, group_size, bits)
    if y is None:
        raise ValueError("the CUDA SwiGLU matvec kernel does not take this product here "
                         f"(x {x.shape} {x.dtype}, w {w.shape}, {bits} bits, group {group_size}, "
                         f"CUDA and NVRTC ready: {ready()})")
    return y


@lru_cache(maxsize=1)
def _compiler_ready() -> bool:
    return nvrtc_available() and bool(architecture())


def ready() -> bool:
    """Whether the kernels run here: a CUDA default device, and NVRTC to compile them."""
    return on_cuda() and _compiler_ready()


def quantized_matmul(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array | None = None,
                     group_size: int = 64, bits: int = 4, *, transpose: bool = True,
                     mode: str = "affine") -> mx.array:
    """``mx.quantized_matmul`` with the CUDA matvec kernel where it applies: on a CUDA default
    device for at most :data:`MAX_ROWS` rows of ``x`` (affine, 4/8 bits, group 32/64/128,
    ``transpose=True``); elsewhere, MLX's own function, unchanged."""
    y = try_qmv(x, w, scales, biases, group_size, bits, mode) if transpose else None
    if y is not None:
        return y
    return mx.quantized_matmul(x, w, scales=scales, biases=biases, transpose=transpose,
                               group_size=group_size, bits=bits, mode=mode)
