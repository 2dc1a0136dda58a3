"""A decode step builds fewer ops and computes the same values (issue 17: decode on GPUs is
bound by host work per op). One position needs no head transposes, queries and keys are rotated
by one RoPE call, and SwiGLU's gate is one fused kernel; each is checked bit for bit against the
general path it replaces. (The op counts themselves are device-dependent -- on the CPU the
``mx.fast`` ops expand -- so ``bench/probe_host.py decode`` reports them, on the GPU.)"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from mlx_zoo import KVCache, SwitchGLU, merge_heads, split_heads
from mlx_zoo.decoder import DecoderArgs, DecoderLM
from mlx_zoo.fusion import fuse_projections
from mlx_zoo.layers import swiglu

CONFIG = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=96,
              num_attention_heads=4, num_key_value_heads=2, vocab_size=97)


def twins(dtype, **options):
    """A fused model (the one-position path) and an unfused one with the same weights (the
    general path)."""
    args = DecoderArgs(**CONFIG)
    plain = DecoderLM(args, **options)
    plain.set_dtype(dtype)
    fused = DecoderLM(args, **options)
    fused.load_weights(tree_flatten(plain.parameters()), strict=True)
    assert fuse_projections(fused) == 2 * CONFIG["num_hidden_layers"]
    return fused, plain


def decode_logits(model, prompt, steps=4):
    caches = [KVCache() for _ in model.layers]
    logits = model(prompt, cache=caches)[:, -1:]
    out = [logits]
    for _ in range(steps):
        logits = model(mx.argmax(logits, axis=-1), cache=caches)
        out.append(logits)
    return mx.concatenate(out, axis=1)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("offset", [0, 7])
def test_one_position_qkv_equals_general_path(dtype, batch, offset):
    mx.random.seed(batch + offset)
    fused, _ = twins(dtype, qkv_bias=True)
    attn = fused.layers[0].self_attn
    x = mx.random.normal((batch, 1, CONFIG["hidden_size"])).astype(dtype)
    q, k, v = attn.qkv_proj(x)  # the general path on the same fused product
    q = attn.rope(q.reshape(batch, 1, attn.n_heads, -1).transpose(0, 2, 1, 3), offset=offset)
    k = attn.rope(k.reshape(batch, 1, attn.n_kv_heads, -1).transpose(0, 2, 1, 3), offset=offset)
    v = v.reshape(batch, 1, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
    for got, expected in zip(attn._one_position_qkv(x, offset), (q, k, v), strict=True):
        assert got.shape == expected.shape and mx.array_equal(got, expected)


@pytest.mark.parametrize("options", [{}, {"qkv_bias": True}])
def test_fused_decode_matches_unfused(options):
    mx.random.seed(0)
    fused, plain = twins(mx.float32, **options)
    prompt = mx.random.randint(0, CONFIG["vocab_size"], (2, 5))
    assert mx.allclose(decode_logits(fused, prompt), decode_logits(plain, prompt), atol=1e-5)


def test_head_layout_of_one_position():
    x = mx.random.normal((3, 1, 4 * 8))
    assert mx.array_equal(split_heads(x, 4), x.reshape(3, 1, 4, 8).transpose(0, 2, 1, 3))
    h = mx.random.normal((3, 4, 1, 8))
    assert mx.array_equal(merge_heads(h), h.transpose(0, 2, 1, 3).reshape(3, 1, 32))


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_swiglu_is_silu_times_up(dtype):
    gate = (4 * mx.random.normal((2, 3, 200))).astype(dtype)
    up = mx.random.normal((2, 3, 200)).astype(dtype)
    assert mx.array_equal(swiglu(gate, up), nn.silu(gate) * up)


def _plain_silu(x: mx.array) -> mx.array:  # not nn.silu itself: SwitchGLU's general path
    return nn.silu(x)


@pytest.mark.parametrize("tokens", [1, 70])  # the direct and the sorted (many tokens) paths
def test_switch_glu_fused_gate_equals_general_path(tokens):
    mx.random.seed(tokens)
    fused = SwitchGLU(32, 48, 4)
    fused.set_dtype(mx.bfloat16)
    general = SwitchGLU(32, 48, 4, activation=_plain_silu)
    general.load_weights(tree_flatten(fused.parameters()), strict=True)
    x = mx.random.normal((1, tokens, 32)).astype(mx.bfloat16)
    indices = mx.random.randint(0, 4, (1, tokens, 2))
    assert mx.array_equal(fused(x, indices), general(x, indices))
