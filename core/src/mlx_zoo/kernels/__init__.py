"""Custom GPU kernels, used only where they apply (today: MLX's CUDA backend).

* :func:`quantized_matmul` -- ``mx.quantized_matmul`` with a bandwidth-bound matvec kernel for
  batch-1 / small-batch decode on CUDA (:mod:`mlx_zoo.kernels.cuda_qmv`); MLX's own function
  everywhere else, so CPU and Metal results are unchanged.
* :func:`use_fast_kernels` -- on CUDA, routes a model's affine ``nn.QuantizedLinear`` layers
  through it (a bias vector added in the kernel) and each fused-and-quantized SwiGLU MLP's
  gate/up product and SwiGLU through one kernel; elsewhere it does nothing.

    model, config = mlx_zoo.load(path)
    mlx_zoo.kernels.use_fast_kernels(model)   # 0 (no change) off CUDA

Measured on an H200 (docs/benchmarks.md, "CUDA quantized matvec" and "Precompiled kernels"):
the kernel is 2.3-2.8x faster than MLX's on the big Qwen2-7B matrices, but each custom kernel
costs about twice the host time of a built-in op (a no-op precompiled kernel: 4.4-5.2 us of
Python per call against 2.0-2.4 us for MLX's quantized matmul), and MLX's CUDA decode is bound by
host time per op, so whole-model decode is not faster with it (Qwen2-7B 4-bit 127-199 tok/s
against 179-181 without). Hence opt-in (``MLX_ZOO_FAST_KERNELS=1``), not part of
``mlx_zoo.load``'s defaults.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..fusion import FusedLinear
from ..layers import SwiGLU
from .cuda_qmv import (
    MAX_ROWS,
    cuda_available,
    on_cuda,
    quantized_matmul,
    ready,
    supported,
    try_qmv,
    try_qmv_swiglu,
)

__all__ = ["FastQuantizedLinear", "FastSwiGLU", "MAX_ROWS", "cuda_available", "on_cuda",
           "quantized_matmul", "ready", "supported", "use_fast_kernels"]


def _affine(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.QuantizedLinear) and layer.mode == "affine"
            and layer.get("biases") is not None)


class FastQuantizedLinear(nn.QuantizedLinear):
    """An ``nn.QuantizedLinear`` whose product goes through the CUDA matvec kernel where it
    applies (:func:`~mlx_zoo.kernels.cuda_qmv.try_qmv`; its bias added by the kernel when it
    has the output's dtype).

    Same arrays, names and settings as the layer it replaces (the class of an existing layer is
    switched in place: no arrays are copied), so ``isinstance`` checks, ``parameters()``,
    saving and loading see an ``nn.QuantizedLinear``. Other modes, other devices and
    prefill-sized inputs take MLX's path."""

    def __call__(self, x: mx.array) -> mx.array:
        y = try_qmv(x, self["weight"], self["scales"], self.get("biases"), self.group_size,
                    self.bits, self.mode, self.get("bias"))
        return super().__call__(x) if y is None else y


class FastSwiGLU(SwiGLU):
    """A :class:`~mlx_zoo.layers.SwiGLU` whose fused, quantized ``gate_up_proj`` and the SwiGLU
    after it run as one CUDA kernel (:func:`~mlx_zoo.kernels.cuda_qmv.try_qmv_swiglu`) where it
    applies; elsewhere exactly :class:`SwiGLU` (switched in place, as
    :class:`FastQuantizedLinear`)."""

    def __call__(self, x: mx.array) -> mx.array:
        fused = self.get("gate_up_proj")
        if isinstance(fused, FusedLinear) and fused.parts.sizes[0] == fused.parts.sizes[-1]:
            lin = fused.linear
            if _affine(lin) and "bias" not in lin:
                hidden = try_qmv_swiglu(x, lin["weight"], lin["scales"], lin["biases"],
                                        lin.group_size, lin.bits, lin.mode)
                if hidden is not None:
                    return self.down_proj(hidden)
        return super().__call__(x)


def use_fast_kernels(model: nn.Module, *, force: bool = False) -> int:
    """On a CUDA default device, make every affine ``nn.QuantizedLinear`` of ``model`` (fused
    projections included) a :class:`FastQuantizedLinear` and every :class:`SwiGLU` a
    :class:`FastSwiGLU`, in place; returns how many layers were switched. On other devices it
    returns 0 and changes nothing (``force=True`` switches anyway: for tests; the layers then
    still compute with MLX's ops off CUDA).

    Call it after :func:`mlx_zoo.fuse_projections` (``mlx_zoo.load`` fuses by default): fusion
    accepts only exact ``nn.QuantizedLinear`` layers."""
    if not (force or on_cuda()):
        return 0
    count = 0
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear and _affine(module):
            module.__class__ = FastQuantizedLinear
            count += 1
        elif type(module) is SwiGLU and module.activation == "silu":  # the kernel's SiLU
            module.__class__ = FastSwiGLU
            count += 1
    return count
