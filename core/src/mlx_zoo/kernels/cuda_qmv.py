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

The kernel reads the weights once, bandwidth first (2.3-2.8x MLX's kernel time on Qwen2-7B
shapes, docs/benchmarks.md "CUDA quantized matvec"):

* a block of ``W`` warps computes ``R`` output columns (``R`` in 1, 2, 4, 8: more give each
  ``x`` load more reuse, fewer give small matrices more blocks); its ``32 * W`` threads stride
  over the rows' 16-byte chunks of packed weights (32 4-bit or 16 8-bit values, always inside
  one quantization group), ``ITERS`` chunks per thread in a fully unrolled loop, so all of a
  thread's 128-bit weight loads are in flight before the first is used;
* each 4-bit or 8-bit value becomes an exact float with one byte permute (``0x4B0000qq`` is
  ``2**23 + q``) and one subtraction; per chunk the thread accumulates ``sum(x * q)`` for every
  (row of x, output row) and ``sum(x)`` for every row of x (shared by all output rows), then adds
  ``scale * sum(x * q) + bias * sum(x)``: two FMAs per chunk instead of dequantizing each value;
* float32 accumulation; warp-shuffle reduction, then across the block's warps through shared
  memory; the output rounded once to the output dtype (the epilogues round where MLX's separate
  ops would). A view that starts off a 16-byte boundary takes a plain word-by-word loop.

Each configuration (dtypes, rows of x, shape, group size, bits, tiling, epilogue) is compiled
once per process to a cubin with NVRTC (:mod:`mlx_zoo.kernels.nvrtc`, ~0.2 s each; a model has
a handful) and run through ``mx.fast.precompiled_cuda_kernel`` (``mx.fast.cuda_kernel``
rebuilds the whole source string at every call). Host time per call is still what limits it:
measured on an H200, even a no-op precompiled kernel costs 4.4-5.2 us of Python per call
against 2.0-2.4 us for MLX's own quantized matmul (MLX copies the binary into each op and hashes
it at evaluation), and decode on MLX's CUDA backend is bound by host time per op
(docs/benchmarks.md, "Precompiled kernels"). No gradient is defined for the kernel.
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

// v[0..V) = V consecutive values of x at p (V = 8 or 4) as floats, in 16- or 8-byte loads (the
// kernel checked that x is 16-byte aligned).
template <int C, int V>
__device__ __forceinline__ void load_x(const typename Store<C>::type* p, float* v) {
  if constexpr (C == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      float4 f = *reinterpret_cast<const float4*>(p + i);
      v[i] = f.x; v[i + 1] = f.y; v[i + 2] = f.z; v[i + 3] = f.w;
    }
  } else {
    u32 u[V / 2];
    if constexpr (V == 8) {
      uint4 t = *reinterpret_cast<const uint4*>(p);
      u[0] = t.x; u[1] = t.y; u[2] = t.z; u[3] = t.w;
    } else {
      uint2 t = *reinterpret_cast<const uint2*>(p);
      u[0] = t.x; u[1] = t.y;
    }
#pragma unroll
    for (int i = 0; i < V / 2; ++i) {
      v[2 * i] = to_float<C>((u16)(u[i] & 0xffffu));
      v[2 * i + 1] = to_float<C>((u16)(u[i] >> 16));
    }
  }
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

// out[m, col] for the block's R output columns. EPI 1 adds bias[col]; EPI 2 (SwiGLU) reads the
// fused [gate; up] weight (N rows, N / 2 output columns): silu(x . gate_col) * (x . up_col).
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
  constexpr int NT = 32 * W;                 // threads per block
  constexpr int ITERS = (CPR + NT - 1) / NT; // chunks per thread
  constexpr int NOUT = EPI == 2 ? N / 2 : N; // output columns
  constexpr int RW = EPI == 2 ? 2 * R : R;   // weight rows per block
  const int tid = threadIdx.x;
  const int col0 = blockIdx.x * R;

  const u32* wrow[RW];
  const ST* srow[RW];
  const ST* brow[RW];
#pragma unroll
  for (int r = 0; r < RW; ++r) {
    // columns past NOUT compute column NOUT - 1, not stored
    const int col = col0 + (r % R) < NOUT ? col0 + (r % R) : NOUT - 1;
    const size_t row = (size_t)col + (r >= R ? NOUT : 0);
    wrow[r] = w + row * (CPR * 4);
    srow[r] = scales + row * G;
    brow[r] = biases + row * G;
  }

  float acc[M][RW];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < RW; ++r) acc[m][r] = 0.0f;

  if (((((size_t)x) | ((size_t)w)) & 15) != 0) {
    // A view starting off a 16-byte boundary (MLX's own buffers never do): word by word, in
    // loops kept rolled (this path only has to be right, and small).
#pragma unroll 1
    for (int r = 0; r < RW; ++r) {
      float a[M];
#pragma unroll
      for (int m = 0; m < M; ++m) a[m] = 0.0f;
#pragma unroll 1
      for (int wd = tid; wd < K / VPW; wd += NT) {
        float qv[VPW];
        unpack<BITS>(__ldg(wrow[r] + wd), qv);
        const int g = (wd * VPW) / GS;
        const float sc = to_float<TS>(srow[r][g]), bi = to_float<TS>(brow[r][g]);
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
          for (int i = 0; i < VPW; ++i)
            a[m] = fmaf(to_float<TX>(x[(size_t)m * K + wd * VPW + i]), fmaf(sc, qv[i], bi), a[m]);
      }
#pragma unroll
      for (int rr = 0; rr < RW; ++rr)
#pragma unroll
        for (int m = 0; m < M; ++m)
          if (rr == r) acc[m][rr] = a[m];
    }
  } else {
    // Chunks in batches of PF: all of a batch's 128-bit weight loads (and its scales and
    // biases) are issued before any of them is used.
    constexpr int PF_MAX = RW >= 8 ? 2 : (RW >= 4 ? 3 : (RW == 2 ? 5 : 8));
    constexpr int PF = ITERS < PF_MAX ? ITERS : PF_MAX;
#pragma unroll
    for (int it0 = 0; it0 < ITERS; it0 += PF) {
      uint4 q[PF][RW];
      float s[PF][RW], b[PF][RW];
#pragma unroll
      for (int p = 0; p < PF; ++p) {
        if (it0 + p < ITERS) {
          const int c0 = tid + (it0 + p) * NT;
          const int c = c0 < CPR ? c0 : CPR - 1;
          const int g = (c * VPC) / GS;
#pragma unroll
          for (int r = 0; r < RW; ++r) {
            q[p][r] = __ldg(reinterpret_cast<const uint4*>(wrow[r]) + c);
            s[p][r] = to_float<TS>(srow[r][g]);
            b[p][r] = to_float<TS>(brow[r][g]);
          }
        }
      }
#pragma unroll
      for (int p = 0; p < PF; ++p) {
        const int c = tid + (it0 + p) * NT;
        if (it0 + p < ITERS && ((CPR % NT == 0) || c < CPR)) {
          float d[M][RW];
          float xs[M];
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
            for (int r = 0; r < RW; ++r) {
              const uint4& qq = q[p][r];
              const u32 word = j == 0 ? qq.x : j == 1 ? qq.y : j == 2 ? qq.z : qq.w;
              unpack<BITS>(word, qf[r]);
            }
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
              acc[m][r] = fmaf(s[p][r], d[m][r], fmaf(b[p][r], xs[m], acc[m][r]));
        }
      }
    }
  }

  // Reduce over the warp (shuffles), then over the block's warps (shared memory).
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
        acc[m][r] += __shfl_xor_sync(0xffffffffu, acc[m][r], off);

  __shared__ float red[W][M * RW];
  const int warp = tid >> 5, lane = tid & 31;
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < RW; ++r) red[warp][m * RW + r] = acc[m][r];
  }
  __syncthreads();
  for (int t = tid; t < M * R; t += NT) {
    const int m = t / R, r = t % R, col = col0 + r;
    float v = 0.0f;
    for (int k = 0; k < W; ++k) v += red[k][m * RW + r];
#if EPI == 1
    // as MLX computes it: the product rounded to the output dtype, then the bias added
    v = rnd<TO>(v) + to_float<TB>(bias[col < NOUT ? col : NOUT - 1]);
#elif EPI == 2
    // as MLX's separate ops round it: gate and up, sigmoid(gate), silu = gate * sigmoid(gate),
    // then silu * up
    float u = 0.0f;
    for (int k = 0; k < W; ++k) u += red[k][m * RW + R + r];
    const float g = rnd<TO>(v);
    const float sg = rnd<TO>(1.0f / (1.0f + expf(-g)));
    v = rnd<TO>(g * sg) * rnd<TO>(u);
#endif
    if (col < NOUT) out[(size_t)m * NOUT + col] = from_float<TO>(v);
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


def binary(config: Config) -> bytes:
    """The cubin of ``config``'s kernel for this device (compiled once per process: NVRTC's
    results are cached by :func:`~mlx_zoo.kernels.nvrtc.compile_cubin`)."""
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


SMS = 132
"""Multiprocessors assumed when sizing the grid (H100/H200 SXM; MLX's device_info on CUDA does not
report the count). Only the rows-per-block choice of small matrices depends on it."""


def tiling(n: int, k: int, bits: int) -> tuple[int, int]:
    """(R, W): output rows per block, warps per block, for an ``n`` x ``k`` weight."""
    cpr = k * bits // 128
    # Swept on an H200 (bench/bench_qmv.py --sweep): 4 warps per block beat 2 and 8 (Qwen2-7B
    # down: 34.6 us vs 45.2 with 8), and 8 rows per block the widest matrices (lm_head: 173 us
    # vs 211 with 4 rows, 2 warps) as long as that leaves plenty of blocks.
    warps = min(4, max(1, math.ceil(cpr / 32)))
    rows = 8 if math.ceil(n / 8) >= 8 * SMS else 4
    while rows > 1 and math.ceil(n / rows) < 2 * SMS:  # at least two blocks per multiprocessor
        rows //= 2
    return rows, warps


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
        rows, warps = tiling(w.shape[0], x.shape[-1], bits)
        if epilogue == EPILOGUES["swiglu"]:  # each output column reads two weight rows
            rows = max(1, rows // 2)
        config = Config(DTYPE_CODES[x.dtype], DTYPE_CODES[scales.dtype], DTYPE_CODES[out_dtype],
                        DTYPE_CODES[out_dtype if bias is None else bias.dtype],
                        math.prod(x.shape[:-1]), w.shape[0], x.shape[-1], group_size, bits, rows,
                        warps, epilogue)
        grid = (-(-config.outputs // rows) * 32 * warps, 1, 1)  # in threads, as MLX takes it
        plan = (binary(config), config.name, grid, (32 * warps, 1, 1),
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
