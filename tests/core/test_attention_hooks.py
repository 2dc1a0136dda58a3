"""The attention score hooks of :func:`mlx_zoo.attention` (soft-capping, sinks, a custom scale)
against a direct numpy computation, on every cache path: no cache, a causal or boolean mask (a
batched cache's ``(B, 1, L, K)``), and keys/values stored quantized."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_zoo import QuantizedKVCache, attention
from mlx_zoo.layers import OffsetRMSNorm, explicit_attention

B, HEADS, KV_HEADS, LQ, LK, D = 2, 4, 2, 5, 9, 32
SCALE = 0.3


def reference(q, k, v, mask, softcap=None, sinks=None):
    """Softmax attention in float64, grouped-query heads repeated, the hooks applied."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    k, v = np.repeat(k, HEADS // KV_HEADS, axis=1), np.repeat(v, HEADS // KV_HEADS, axis=1)
    scores = q @ k.swapaxes(-1, -2) * SCALE
    if softcap is not None:
        scores = softcap * np.tanh(scores / softcap)
    scores = np.where(np.broadcast_to(mask, scores.shape), scores, -np.inf)
    if sinks is not None:
        sink = np.broadcast_to(np.asarray(sinks, np.float64)[None, :, None, None],
                               (*scores.shape[:-1], 1))
        scores = np.concatenate([sink, scores], axis=-1)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    if sinks is not None:
        weights = weights[..., 1:]
    return weights @ v


@pytest.fixture(scope="module")
def qkv():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((B, HEADS, LQ, D)).astype(np.float32),
            rng.standard_normal((B, KV_HEADS, LK, D)).astype(np.float32),
            rng.standard_normal((B, KV_HEADS, LK, D)).astype(np.float32))


CAUSAL = np.arange(LK - LQ, LK)[:, None] >= np.arange(LK)[None]
PADDED = np.broadcast_to(CAUSAL, (B, 1, LQ, LK)).copy()
PADDED[0, :, :, :3] = False  # a batched cache's left padding on the first row


@pytest.mark.parametrize("mask", ["causal", "array", "batched"])
@pytest.mark.parametrize("hooks", [{}, {"softcap": 2.0}, {"sinks": [0.5, -1.0, 2.0, 0.0]},
                                   {"softcap": 2.0, "sinks": [0.5, -1.0, 2.0, 0.0]}],
                         ids=["plain", "softcap", "sinks", "both"])
def test_hooks_match_the_direct_computation(qkv, mask, hooks):
    q, k, v = qkv
    given = {"causal": "causal", "array": mx.array(CAUSAL), "batched": mx.array(PADDED)}[mask]
    expected = reference(q, k, v, {"causal": CAUSAL, "array": CAUSAL, "batched": PADDED}[mask],
                         hooks.get("softcap"), hooks.get("sinks"))
    sinks = mx.array(hooks["sinks"]) if "sinks" in hooks else None
    for fn in (attention, explicit_attention):
        out = fn(mx.array(q), mx.array(k), mx.array(v), scale=SCALE, mask=given,
                 softcap=hooks.get("softcap"), sinks=sinks)
        np.testing.assert_allclose(np.array(out), expected, atol=2e-5, err_msg=fn.__name__)


def test_quantized_cache_path_takes_the_hooks(qkv):
    """Keys/values of a QuantizedKVCache: the same as attending over their dequantized values."""
    q, k, v = qkv
    cache = QuantizedKVCache(group_size=32, bits=8)
    qk, qv = cache.update_and_fetch(mx.array(k), mx.array(v))
    dk, dv = (mx.dequantize(*a, group_size=32, bits=8) for a in (qk, qv))
    sinks = mx.array([0.5, -1.0, 2.0, 0.0])
    for hooks in ({}, {"softcap": 2.0}, {"softcap": 2.0, "sinks": sinks}):
        out = attention(mx.array(q), qk, qv, scale=SCALE, mask="causal", cache=cache, **hooks)
        expected = reference(q, np.array(dk), np.array(dv), CAUSAL, hooks.get("softcap"),
                             None if "sinks" not in hooks else np.array(hooks["sinks"]))
        np.testing.assert_allclose(np.array(out), expected, atol=2e-4)


def test_softcap_changes_the_result(qkv):
    """The check can fail: soft-capping at 2 moves these sharp scores' output far."""
    q, k, v = (mx.array(a) for a in qkv)
    plain = attention(q, k, v, scale=SCALE, mask="causal")
    capped = attention(q, k, v, scale=SCALE, mask="causal", softcap=2.0)
    assert float(mx.abs(plain - capped).max()) > 0.05


def test_offset_rms_norm_scales_by_one_plus_weight():
    x = mx.array(np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32))
    norm = OffsetRMSNorm(8, eps=1e-6)
    norm.weight = mx.arange(8, dtype=mx.float32) / 8
    xs = np.array(x)
    expected = xs / np.sqrt((xs**2).mean(-1, keepdims=True) + 1e-6) * (1 + np.arange(8) / 8)
    np.testing.assert_allclose(np.array(norm(x)), expected, rtol=1e-5)
