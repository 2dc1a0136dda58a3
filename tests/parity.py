"""Shared helpers for the parity tests: tiny torch reference models whose attention is sharp,
the relative error measure, and the incremental-decoding check.

The measure everywhere is ``max |ours - ref| / max |ref|`` in float32 (see the plugin issues):
the plugin-author kit's :func:`mlx_zoo.testing.relative_error`, with its tolerance.
"""

from __future__ import annotations

import numpy as np

from mlx_zoo.testing import TOLERANCE, WEIGHT_STD
from mlx_zoo.testing import relative_error as rel_err

__all__ = ["TOLERANCE", "WEIGHT_STD", "rel_err"]


def sharpen(torch_model, std: float = WEIGHT_STD, seed: int = 0) -> None:
    """Re-initialise every weight ~ N(0, std) (norm weights ~ 1 + N(0, std/4)), so that
    attention logits are large and position matters: a wrong RoPE or mask shows up clearly."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in torch_model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name and p.ndim == 1:
                p.copy_(1.0 + noise * std / 4)
            else:
                p.copy_(noise * std)


def torch_logits(torch_model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch_model(torch.from_numpy(ids).long()).logits.float().numpy()


def mlx_logits(model, ids: np.ndarray, cache=None) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array(ids), cache).astype(mx.float32))


def incremental_logits(model, ids: np.ndarray, steps: list[int]) -> np.ndarray:
    """Logits from feeding ``ids`` through the model's caches in pieces of the given sizes
    (e.g. a prefill of 17, a piece of 5, then single tokens)."""
    import mlx_zoo

    cache = mlx_zoo.make_prompt_cache(model)
    outs, start = [], 0
    for n in steps:
        outs.append(mlx_logits(model, ids[:, start:start + n], cache))
        start += n
    assert start == ids.shape[1], "steps must cover the sequence"
    return np.concatenate(outs, axis=1)


def decode_steps(total: int, prefill: int, chunk: int = 5) -> list[int]:
    """A prefill, one multi-token piece, then single tokens up to ``total``."""
    steps = [prefill, chunk]
    return steps + [1] * (total - prefill - chunk)
