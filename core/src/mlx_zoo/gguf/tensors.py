"""GGUF tensor data to MLX arrays: the three block formats MLX's affine quantization can hold
kept quantized, every other type dequantized by llama.cpp's own ``gguf`` package.

Q4_0, Q4_1 and Q8_0 quantize blocks of 32 values along each row with one float16 scale (and,
for Q4_1, a float16 minimum): ``x = d * q + m`` -- exactly MLX's affine quantization with group
size 32 (``w = scale * q + bias``), so they are repacked, not re-quantized, and the values are
bit-for-bit those llama.cpp computes (tests compare with ``mx.load``'s own GGUF reader):

=====  =======================  ============================  ===============================
type   block (bytes)            values                        MLX affine (bits, scale, bias)
=====  =======================  ============================  ===============================
Q4_0   d:f16, qs[16] (18)       ``d * (q - 8)``, q in 0..15   4, ``d``, ``-8 d``
Q4_1   d:f16, m:f16, qs[16] (20) ``d * q + m``, q in 0..15    4, ``d``, ``m``
Q8_0   d:f16, qs:i8[32] (34)    ``d * q``, q in -128..127     8, ``d``, ``-128 d`` (q + 128)
=====  =======================  ============================  ===============================

A 4-bit block stores value ``j`` in the low nibble of byte ``j`` and value ``j + 16`` in its
high nibble; MLX packs values in order, two per byte, low nibble first -- hence the reshuffle.
F32, F16 and BF16 are read as they are. The K-quants, I-quants and the rest have scales per
sub-block (Q4_K: 8 sub-blocks of 32 with 6-bit scales and minimums under a float16 super-scale)
that MLX's quantization cannot hold: they become float arrays of ``dtype`` (float16 unless the
loader asks for another), or MLX's quantization afterwards where the user asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..errors import GGUFError
from .reader import TensorInfo, type_name

GROUP_SIZE = 32


@dataclass(frozen=True)
class Quantized:
    """An MLX affine-quantized tensor: packed ``weight`` (uint32), ``scales``, ``biases``."""

    weight: mx.array
    scales: mx.array
    biases: mx.array
    bits: int

    def parts(self) -> dict[str, mx.array]:
        return {"weight": self.weight, "scales": self.scales, "biases": self.biases}


F32, F16, Q4_0, Q4_1, Q8_0, BF16 = 0, 1, 2, 3, 8, 30  # gguf.GGMLQuantizationType ids
KEPT_QUANTIZED = {Q4_0: 4, Q4_1: 4, Q8_0: 8}
"""The ggml types kept quantized in MLX's layout, and their bits."""
PLAIN = {F32: np.float32, F16: np.float16}


def _raw(info: TensorInfo) -> np.ndarray:
    """The tensor's bytes, memory-mapped (nothing is read until used)."""
    try:
        return np.memmap(info.path, dtype=np.uint8, mode="r", offset=info.offset,
                         shape=(info.nbytes,))
    except (OSError, ValueError) as e:
        raise GGUFError(info.path, f"cannot map its data ({e})", info.name) from e


def _blocks(info: TensorInfo, block_bytes: int) -> np.ndarray:
    rows = info.nbytes // block_bytes // (info.shape[-1] // GROUP_SIZE)
    return _raw(info).reshape(rows, info.shape[-1] // GROUP_SIZE, block_bytes)


def _half(blocks: np.ndarray, start: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[..., start:start + 2]).view(np.float16)[..., 0]


def _pack_4bit(qs: np.ndarray) -> np.ndarray:
    """GGUF's nibble order (values j and j + 16 share byte j) to MLX's (values 2k and 2k + 1
    share byte k, low nibble first)."""
    values = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # (..., 32) in value order
    return values[..., 0::2] | (values[..., 1::2] << 4)


def _quantized(info: TensorInfo) -> Quantized:
    kind = info.ggml_type
    if kind == Q8_0:
        blocks = _blocks(info, 34)
        scales = _half(blocks, 0)
        packed = blocks[..., 2:] ^ 0x80  # int8 q to uint8 q + 128
        biases = scales * np.float16(-128)
    else:
        blocks = _blocks(info, 18 if kind == Q4_0 else 20)
        scales = _half(blocks, 0)
        biases = scales * np.float16(-8) if kind == Q4_0 else _half(blocks, 2)
        packed = _pack_4bit(blocks[..., 2 if kind == Q4_0 else 4:])
    lead = info.shape[:-1]
    words = np.ascontiguousarray(packed).reshape(*lead, -1).view(np.uint32)
    return Quantized(mx.array(words), mx.array(scales.reshape(*lead, -1)),
                     mx.array(biases.reshape(*lead, -1)), KEPT_QUANTIZED[kind])


def read_tensor(info: TensorInfo, dtype: mx.Dtype | None = None) -> mx.array | Quantized:
    """One tensor as MLX holds it: :class:`Quantized` for Q4_0/Q4_1/Q8_0; F32/F16/BF16 as
    stored; any other type dequantized to ``dtype`` (float16 by default)."""
    kind = info.ggml_type
    if kind in KEPT_QUANTIZED:
        return _quantized(info)
    if kind in PLAIN:
        return mx.array(_raw(info).view(PLAIN[kind]).reshape(info.shape))
    if kind == BF16:
        return mx.array(_raw(info).view(np.uint16).reshape(info.shape)).view(mx.bfloat16)
    from gguf import GGMLQuantizationType, quants

    try:
        values = quants.dequantize(_raw(info), GGMLQuantizationType(kind))
    except (NotImplementedError, ValueError, TypeError) as e:
        raise GGUFError(info.path, f"tensor type {type_name(kind)} cannot be read by the "
                        f"installed gguf package ({type(e).__name__}: {e})", info.name) from e
    if not np.issubdtype(values.dtype, np.floating):
        return mx.array(values.reshape(info.shape))
    return mx.array(values.reshape(info.shape)).astype(dtype or mx.float16)
