"""A batch-1 / small-batch quantized matrix-vector product for MLX's CUDA backend.

``quantized_matmul(x, w, scales, biases, group_size, bits)`` computes what
``mx.quantized_matmul(x, w, scales, biases, transpose=True, group_size=..., bits=...)`` does, for
MLX's affine group-quantized layout (``mx.quantize``: ``w`` is ``(out, in * bits / 32)`` uint32
with the values packed least-significant bits first, ``scales`` and ``biases`` are
``(out, in / group_size)``, and the dequantized weight is ``scale * q + bias``). When the default
device is a CUDA GPU and the shape qualifies (at most :data:`MAX_ROWS` rows of ``x``, 4 or 8
bits, group size 32, 64 or 128, floating ``x``) it runs the kernel below through
``mx.fast.cuda_kernel``; otherwise it calls ``mx.quantized_matmul`` itself, so CPU and Metal
results are exactly MLX's.

The kernel reads the weights once, bandwidth first:

* a block of ``W`` warps computes ``R`` output rows (``R`` in 1, 2, 4: more rows give each ``x``
  load more reuse, fewer give small matrices more blocks); its ``32 * W`` threads stride over the
  row's 16-byte chunks of packed weights (32 4-bit or 16 8-bit values, always inside one
  quantization group), ``ITERS`` chunks per thread in a fully unrolled loop, so all of a thread's
  128-bit weight loads are in flight before the first is used;
* each 4-bit or 8-bit value becomes an exact float with one byte permute (``0x4B0000qq`` is
  ``2**23 + q``) and one subtraction; per chunk the thread accumulates ``sum(x * q)`` for every
  (row of x, output row) and ``sum(x)`` for every row of x (shared by all output rows), then adds
  ``scale * sum(x * q) + bias * sum(x)``: two FMAs per chunk instead of dequantizing each value;
* float32 accumulation throughout; warp-shuffle reduction, then across the block's warps through
  shared memory; the output is rounded once to the output dtype.

The kernels are JIT-compiled by MLX per (dtypes, rows of x, shape, group size, bits, tiling):
the first call of each shape pays a compile (seconds); a model has a handful of shapes.
No gradient is defined for the kernel (decode does not need one).
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import mlx.core as mx

MAX_ROWS = 8
"""Largest number of rows of ``x`` (product of its leading dimensions) the kernel takes."""

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
FLOAT_TYPES = (mx.bfloat16, mx.float16, mx.float32)

HEADER = r"""
namespace mlx_zoo_qmv {

// v[0..VPW) = the VPW values of x at p (VPW = 8 or 4), as floats. p is 8*sizeof(T) or
// 4*sizeof(T) aligned (chunks start at multiples of 16 values, rows at multiples of 32).
template <int VPW>
__device__ __forceinline__ void load_x(const __nv_bfloat16* p, float* v) {
  if constexpr (VPW == 8) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    v[0] = __uint_as_float(u.x << 16); v[1] = __uint_as_float(u.x & 0xffff0000u);
    v[2] = __uint_as_float(u.y << 16); v[3] = __uint_as_float(u.y & 0xffff0000u);
    v[4] = __uint_as_float(u.z << 16); v[5] = __uint_as_float(u.z & 0xffff0000u);
    v[6] = __uint_as_float(u.w << 16); v[7] = __uint_as_float(u.w & 0xffff0000u);
  } else {
    uint2 u = *reinterpret_cast<const uint2*>(p);
    v[0] = __uint_as_float(u.x << 16); v[1] = __uint_as_float(u.x & 0xffff0000u);
    v[2] = __uint_as_float(u.y << 16); v[3] = __uint_as_float(u.y & 0xffff0000u);
  }
}

template <int VPW>
__device__ __forceinline__ void load_x(const __half* p, float* v) {
  if constexpr (VPW == 8) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    const unsigned int w4[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __half2 h = *reinterpret_cast<const __half2*>(&w4[i]);
      float2 f = __half22float2(h);
      v[2 * i] = f.x; v[2 * i + 1] = f.y;
    }
  } else {
    uint2 u = *reinterpret_cast<const uint2*>(p);
    const unsigned int w2[2] = {u.x, u.y};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      __half2 h = *reinterpret_cast<const __half2*>(&w2[i]);
      float2 f = __half22float2(h);
      v[2 * i] = f.x; v[2 * i + 1] = f.y;
    }
  }
}

template <int VPW>
__device__ __forceinline__ void load_x(const float* p, float* v) {
#pragma unroll
  for (int i = 0; i < VPW; i += 4) {
    float4 f = *reinterpret_cast<const float4*>(p + i);
    v[i] = f.x; v[i + 1] = f.y; v[i + 2] = f.z; v[i + 3] = f.w;
  }
}

// The 32 / BITS values of one packed word, least significant bits first, as exact floats:
// byte-permute each value into the low byte of 0x4B000000 (the float 2^23), subtract 2^23.
template <int BITS>
__device__ __forceinline__ void unpack(unsigned int w, float* q) {
  if constexpr (BITS == 4) {
    const unsigned int lo = w & 0x0f0f0f0fu;         // values 0, 2, 4, 6
    const unsigned int hi = (w >> 4) & 0x0f0f0f0fu;  // values 1, 3, 5, 7
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

}  // namespace mlx_zoo_qmv
"""

# Inputs: x (M, K) T; w (N, K*BITS/32) uint32; scales, biases (N, K/GS) S. Output: out (M, N) O.
# Template constants: T, S, O (types); M, N, K, GS, BITS, R (rows per block), W (warps per block).
SOURCE = r"""
  constexpr int VPW = 32 / BITS;             // values per packed uint32
  constexpr int VPC = 4 * VPW;               // values per 16-byte chunk (inside one group)
  constexpr int CPR = K / VPC;               // chunks per weight row
  constexpr int G = K / GS;                  // groups per row
  constexpr int NT = 32 * W;                 // threads per block
  constexpr int ITERS = (CPR + NT - 1) / NT; // chunks per thread
  const int tid = threadIdx.x;
  const int row0 = blockIdx.x * R;

  const uint4* wrow[R];
  const S* srow[R];
  const S* brow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    // rows past N compute row N-1, not stored
    const size_t row = (size_t)(row0 + r < N ? row0 + r : N - 1);
    wrow[r] = reinterpret_cast<const uint4*>(w) + row * CPR;
    srow[r] = scales + row * G;
    brow[r] = biases + row * G;
  }

  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;

  // Chunks in batches of PF: all of a batch's 128-bit weight loads (and its scales and biases)
  // are issued before any of them is used.
  constexpr int PF_MAX = R >= 8 ? 2 : (R >= 4 ? 3 : (R == 2 ? 5 : 8));
  constexpr int PF = ITERS < PF_MAX ? ITERS : PF_MAX;
#pragma unroll
  for (int it0 = 0; it0 < ITERS; it0 += PF) {
    uint4 q[PF][R];
    float s[PF][R], b[PF][R];
#pragma unroll
    for (int p = 0; p < PF; ++p) {
      if (it0 + p < ITERS) {
        const int c0 = tid + (it0 + p) * NT;
        const int c = c0 < CPR ? c0 : CPR - 1;
        const int g = (c * VPC) / GS;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          q[p][r] = __ldg(wrow[r] + c);
          s[p][r] = static_cast<float>(srow[r][g]);
          b[p][r] = static_cast<float>(brow[r][g]);
        }
      }
    }
#pragma unroll
    for (int p = 0; p < PF; ++p) {
      const int c = tid + (it0 + p) * NT;
      if (it0 + p < ITERS && ((CPR % NT == 0) || c < CPR)) {
        float d[M][R];
        float xs[M];
#pragma unroll
        for (int m = 0; m < M; ++m) {
          xs[m] = 0.0f;
#pragma unroll
          for (int r = 0; r < R; ++r) d[m][r] = 0.0f;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float qf[R][VPW];
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const uint4& qq = q[p][r];
            const unsigned int word = j == 0 ? qq.x : j == 1 ? qq.y : j == 2 ? qq.z : qq.w;
            ::mlx_zoo_qmv::unpack<BITS>(word, qf[r]);
          }
#pragma unroll
          for (int m = 0; m < M; ++m) {
            float xv[VPW];
            ::mlx_zoo_qmv::load_x<VPW>(x + (size_t)m * K + c * VPC + j * VPW, xv);
#pragma unroll
            for (int i = 0; i < VPW; ++i) {
              xs[m] += xv[i];
#pragma unroll
              for (int r = 0; r < R; ++r) d[m][r] = fmaf(xv[i], qf[r][i], d[m][r]);
            }
          }
        }
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
          for (int r = 0; r < R; ++r)
            acc[m][r] = fmaf(s[p][r], d[m][r], fmaf(b[p][r], xs[m], acc[m][r]));
      }
    }
  }

  // Reduce over the warp (shuffles), then over the block's warps (shared memory).
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
        acc[m][r] += __shfl_xor_sync(0xffffffffu, acc[m][r], off);

  __shared__ float red[W][M * R];
  const int warp = tid >> 5, lane = tid & 31;
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < R; ++r) red[warp][m * R + r] = acc[m][r];
  }
  __syncthreads();
  if (tid < M * R) {
    const int m = tid / R, r = tid % R;
    float v = 0.0f;
#pragma unroll
    for (int k = 0; k < W; ++k) v += red[k][tid];
    if (row0 + r < N) out[(size_t)m * N + row0 + r] = static_cast<O>(v);
  }
"""


def _strip(code: str) -> str:
    """The source without comment-only lines and indentation: MLX rebuilds the kernel's source
    string on every call, so a shorter one costs less host time per launch."""
    lines = (line.strip() for line in code.splitlines())
    # (ends with a newline: MLX appends its own code right after the header)
    return "\n".join(line for line in lines if line and not line.startswith("//")) + "\n"


@lru_cache(maxsize=1)
def _kernel():
    return mx.fast.cuda_kernel(
        name="mlx_zoo_qmv",
        input_names=["x", "w", "scales", "biases"],
        output_names=["out"],
        source=_strip(SOURCE),
        header=_strip(HEADER),
        ensure_row_contiguous=True,
    )


SMS = 132
"""Multiprocessors assumed when sizing the grid (H100/H200 SXM; MLX's device_info on CUDA does not
report the count). Only the rows-per-block choice of small matrices depends on it."""


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


TILING: dict[tuple[int, int, int], tuple[int, int]] = {}
"""Overrides of :func:`tiling`: ``{(n, k, bits): (rows per block, warps per block)}``."""


def tiling(n: int, k: int, bits: int) -> tuple[int, int]:
    """(R, W): output rows per block, warps per block, for an ``n`` x ``k`` weight."""
    if (n, k, bits) in TILING:
        return TILING[(n, k, bits)]
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


_LAUNCH: dict[tuple, tuple] = {}


def _launch(key: tuple, rows_per_block: int | None, warps: int | None) -> tuple:
    x_dtype, s_dtype, lead, n, k, group_size, bits = key
    m = math.prod(lead)
    r, wp = tiling(n, k, bits)
    r, wp = rows_per_block or r, warps or wp
    out_dtype = _out_dtype(x_dtype, s_dtype)
    template = [("T", x_dtype), ("S", s_dtype), ("O", out_dtype), ("M", m), ("N", n), ("K", k),
                ("GS", group_size), ("BITS", bits), ("R", r), ("W", wp)]
    return template, (-(-n // r) * 32 * wp, 1, 1), (32 * wp, 1, 1), [(*lead, n)], [out_dtype]


def qmv(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, group_size: int,
        bits: int, *, rows_per_block: int | None = None, warps: int | None = None) -> mx.array:
    """The kernel itself (CUDA only; :func:`supported` must hold). ``x @ dequantize(w).T``.

    ``x`` goes in with its own shape and the output is made in its final shape: the kernel reads
    and writes flat row-major buffers, so no reshape ops are added (each op costs host time per
    token, which is what bounds decode on MLX's CUDA backend)."""
    key = (x.dtype, scales.dtype, x.shape[:-1], w.shape[0], x.shape[-1], group_size, bits)
    if rows_per_block or warps:
        launch = _launch(key, rows_per_block, warps)
    else:
        launch = _LAUNCH.get(key)
        if launch is None:
            launch = _LAUNCH[key] = _launch(key, None, None)
    template, grid, threads, out_shapes, out_dtypes = launch
    (out,) = _kernel()(inputs=[x, w, scales, biases], template=template, grid=grid,
                       threadgroup=threads, output_shapes=out_shapes, output_dtypes=out_dtypes)
    return out


def quantized_matmul(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array | None = None,
                     group_size: int = 64, bits: int = 4, *, transpose: bool = True,
                     mode: str = "affine") -> mx.array:
    """``mx.quantized_matmul`` with the CUDA matvec kernel where it applies: on a CUDA default
    device for at most :data:`MAX_ROWS` rows of ``x`` (affine, 4/8 bits, group 32/64/128,
    ``transpose=True``); elsewhere, MLX's own function, unchanged."""
    if on_cuda() and supported(x, w, scales, biases, group_size, bits, transpose, mode):
        return qmv(x, w, scales, biases, group_size, bits)
    return mx.quantized_matmul(x, w, scales=scales, biases=biases, transpose=transpose,
                               group_size=group_size, bits=bits, mode=mode)
