"""The shared mixture-of-experts layers against a plain per-token, per-expert loop, on both the
direct and the sorted (many tokens) paths, and quantized."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_zoo import SwitchGLU
from mlx_zoo.layers import SORT_THRESHOLD, QuantizedSwitchLinear
from mlx_zoo.testing import relative_error as rel_err

HIDDEN, INTER, EXPERTS = 32, 64, 4


def naive(glu: SwitchGLU, x, indices, scale=None) -> np.ndarray:
    g, u, d = (np.array(p.weight) for p in (glu.gate_proj, glu.up_proj, glu.down_proj))
    x, indices = np.array(x), np.array(indices)
    out = np.zeros(indices.shape + (HIDDEN,), np.float32)
    for pos in np.ndindex(indices.shape):
        e = indices[pos]
        row = x[pos[:-1]] * (np.array(scale)[pos] if scale is not None else 1.0)
        gate = row @ g[e].T
        out[pos] = ((gate / (1 + np.exp(-gate))) * (row @ u[e].T)) @ d[e].T
    return out


@pytest.mark.parametrize("tokens", [3, 2 * SORT_THRESHOLD])  # direct and sorted paths
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("scaled_input", [False, True])
def test_switch_glu_matches_loop(tokens, top_k, scaled_input):
    mx.random.seed(tokens + top_k)
    glu = SwitchGLU(HIDDEN, INTER, EXPERTS)
    x = mx.random.normal((2, tokens, HIDDEN))
    indices = mx.random.randint(0, EXPERTS, (2, tokens, top_k))
    scale = mx.random.uniform(shape=(2, tokens, top_k)) if scaled_input else None
    out = glu(x, indices, input_scale=scale) if scaled_input else glu(x, indices)
    assert out.shape == (2, tokens, top_k, HIDDEN)
    assert rel_err(np.array(out), naive(glu, x, indices, scale)) < 1e-5


def test_quantized_switch_glu_uses_dequantized_weights():
    mx.random.seed(0)
    glu = SwitchGLU(HIDDEN, INTER, EXPERTS)
    nn.quantize(glu, group_size=32, bits=4)
    assert isinstance(glu.gate_proj, QuantizedSwitchLinear)
    x = mx.random.normal((1, 5, HIDDEN))
    indices = mx.random.randint(0, EXPERTS, (1, 5, 2))
    out = np.array(glu(x, indices))
    reference = SwitchGLU(HIDDEN, INTER, EXPERTS)
    for name in ("gate_proj", "up_proj", "down_proj"):
        q = getattr(glu, name)
        getattr(reference, name).weight = mx.dequantize(q.weight, q.scales, q.biases,
                                                        group_size=32, bits=4)
    assert rel_err(out, np.array(reference(x, indices))) < 1e-5


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_half_precision_experts_run_on_every_device(dtype):
    """MLX's CPU gather_mm is float32-only; SwitchGLU still runs half-precision experts there."""
    mx.random.seed(1)
    glu = SwitchGLU(HIDDEN, INTER, EXPERTS)
    x = mx.random.normal((1, 5, HIDDEN))
    indices = mx.random.randint(0, EXPERTS, (1, 5, 2))
    expected = np.array(glu(x, indices))
    glu.set_dtype(dtype)
    out = glu(x.astype(dtype), indices)
    assert out.dtype == dtype
    assert rel_err(np.array(out.astype(mx.float32)), expected) < 2e-2
