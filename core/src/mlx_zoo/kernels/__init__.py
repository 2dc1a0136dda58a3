"""Custom GPU kernels, used only where they apply (today: MLX's CUDA backend).

* :func:`quantized_matmul` -- ``mx.quantized_matmul`` with a bandwidth-bound matvec kernel for
  batch-1 / small-batch decode on CUDA (:mod:`mlx_zoo.kernels.cuda_qmv`); MLX's own function
  everywhere else, so CPU and Metal results are unchanged.
* :func:`use_fast_kernels` -- on CUDA, routes a model's affine ``nn.QuantizedLinear`` layers
  through it; elsewhere it does nothing.

    model, config = mlx_zoo.load(path)
    mlx_zoo.kernels.use_fast_kernels(model)   # 0 (no change) off CUDA

Measured on an H200 (docs/benchmarks.md, "CUDA quantized matvec"): the kernel is 2.3-2.8x faster
than MLX's on the big Qwen2-7B matrices, but a ``mx.fast.cuda_kernel`` op costs about twice the
host time of a built-in one and MLX's CUDA decode is host-bound, so whole-model decode was slower
with it (143-157 vs 175-178 tok/s). Hence opt-in, not part of ``mlx_zoo.load``.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .cuda_qmv import MAX_ROWS, cuda_available, on_cuda, quantized_matmul, supported

__all__ = ["FastQuantizedLinear", "MAX_ROWS", "cuda_available", "on_cuda", "quantized_matmul",
           "supported", "use_fast_kernels"]


class FastQuantizedLinear(nn.QuantizedLinear):
    """An ``nn.QuantizedLinear`` whose product goes through :func:`quantized_matmul`.

    Same arrays, names and settings as the layer it replaces (the class of an existing layer is
    switched in place: no arrays are copied), so ``isinstance`` checks, ``parameters()``,
    saving and loading see an ``nn.QuantizedLinear``. Non-affine modes take MLX's path."""

    def __call__(self, x: mx.array) -> mx.array:
        if self.mode != "affine" or self.get("biases") is None:
            return super().__call__(x)
        y = quantized_matmul(x, self["weight"], self["scales"], self["biases"],
                             group_size=self.group_size, bits=self.bits)
        if "bias" in self:
            y = y + self["bias"]
        return y


def use_fast_kernels(model: nn.Module, *, force: bool = False) -> int:
    """On a CUDA default device, make every affine ``nn.QuantizedLinear`` of ``model`` (fused
    projections included) a :class:`FastQuantizedLinear`, in place; returns how many were
    switched. On other devices it returns 0 and changes nothing (``force=True`` switches anyway:
    for tests; the layers then still compute with ``mx.quantized_matmul`` off CUDA).

    Call it after :func:`mlx_zoo.fuse_projections` (``mlx_zoo.load`` fuses by default): fusion
    accepts only exact ``nn.QuantizedLinear`` layers."""
    if not (force or on_cuda()):
        return 0
    count = 0
    for _, module in model.named_modules():
        if (type(module) is nn.QuantizedLinear and module.mode == "affine"
                and module.get("biases") is not None):
            module.__class__ = FastQuantizedLinear
            count += 1
    return count
