"""Every built-in RoPE variant against transformers' own frequency functions, and a plugin's
variant through the RoPE hook."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlx_zoo
from mlx_zoo.rope import BUILTIN_VARIANTS, rope_variants
from mlx_zoo.testing import relative_error as rel_err

HEAD_DIM, HEADS, MAX_POS, THETA = 32, 2, 64, 10000.0

SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 3.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "yarn_deepseek": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                      "mscale": 1.0, "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2},
    "longrope": {"rope_type": "longrope", "original_max_position_embeddings": 16,
                 "short_factor": [1.0 + 0.1 * i for i in range(HEAD_DIM // 2)],
                 "long_factor": [1.0 + 0.5 * i for i in range(HEAD_DIM // 2)]},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    # Llama 4 Scout's own (low == high: no blended band), original context scaled to the test's
    "llama3_llama4": {"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 1.0, "original_max_position_embeddings": 16},
}


def reference_rope(x: np.ndarray, scaling, offset: int) -> np.ndarray:
    """Rotate-half RoPE with transformers' inverse frequencies and attention factor."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_theta": THETA, **(scaling or {"rope_type": "default"})}
    config = LlamaConfig(hidden_size=HEAD_DIM * HEADS, num_attention_heads=HEADS,
                         max_position_embeddings=MAX_POS, rope_parameters=params)
    length = x.shape[-2]
    kind = params["rope_type"]
    if kind == "default":
        inv_freq = 1.0 / THETA ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
        factor = 1.0
    else:
        seq_len = offset + length
        if kind == "dynamic":
            seq_len = max(seq_len, MAX_POS)
        inv, factor = ROPE_INIT_FUNCTIONS[kind](config, torch.device("cpu"), seq_len=seq_len)
        inv_freq = inv.numpy().astype(np.float64)
    angles = np.arange(offset, offset + length)[:, None] * inv_freq[None]
    cos = np.cos(np.concatenate([angles, angles], -1)) * factor
    sin = np.sin(np.concatenate([angles, angles], -1)) * factor
    half = HEAD_DIM // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


@pytest.mark.parametrize("name", list(SCALINGS))
@pytest.mark.parametrize("offset,length", [(0, 12), (5, 20), (60, 40)])
def test_variant_matches_transformers(name, offset, length):
    scaling = SCALINGS[name]
    x = np.random.default_rng(0).standard_normal((1, HEADS, length, HEAD_DIM)).astype(np.float32)
    rope = mlx_zoo.get_rope(HEAD_DIM, base=THETA, scaling=scaling, max_position_embeddings=MAX_POS)
    ours = np.array(rope(mx.array(x), offset=offset))
    assert rel_err(ours, reference_rope(x.astype(np.float64), scaling, offset)) < 1e-5


def test_variants_differ_from_default_where_they_should():
    """Guards the test above against comparing identical things: each scaling changes RoPE."""
    x = mx.random.normal((1, 1, 80, HEAD_DIM))
    plain = np.array(mlx_zoo.get_rope(HEAD_DIM, base=THETA)(x))
    for name, scaling in SCALINGS.items():
        if scaling is None:
            continue
        rope = mlx_zoo.get_rope(HEAD_DIM, base=THETA, scaling=scaling,
                                max_position_embeddings=MAX_POS)
        assert rel_err(np.array(rope(x)), plain) > 1e-3, name


def test_registry_lists_builtin_variants_and_su_alias():
    assert {"default", "linear", "dynamic", "yarn", "longrope", "su", "llama3"} <= set(
        BUILTIN_VARIANTS)
    assert BUILTIN_VARIANTS["su"] is BUILTIN_VARIANTS["longrope"]


def test_unknown_rope_type_is_a_clear_error():
    with pytest.raises(mlx_zoo.ConfigError, match="unknown rope_type 'nope'.*known: default") as e:
        mlx_zoo.get_rope(HEAD_DIM, base=THETA, scaling={"rope_type": "nope"})
    assert e.value.key == "rope_scaling.rope_type"


def test_missing_scaling_parameter_is_named():
    with pytest.raises(mlx_zoo.ConfigError, match="key 'rope_scaling.factor': missing; rope_type "
                       "'linear' requires it") as e:
        mlx_zoo.get_rope(HEAD_DIM, base=THETA, scaling={"rope_type": "linear"})
    assert e.value.key == "rope_scaling.factor"


def test_plugin_adds_a_variant_through_the_hook(testplugin, isolated_registry):
    from mlx_zoo.registry import import_plugin, installed_entries

    assert "zoo_half_speed" not in rope_variants()
    entry = next(e for e in installed_entries() if e.model_type == "zoo_tiny")
    import_plugin(entry)
    assert "zoo_half_speed" in rope_variants()
    x = mx.random.normal((1, 1, 8, HEAD_DIM))
    half = mlx_zoo.get_rope(HEAD_DIM, base=THETA, scaling={"rope_type": "zoo_half_speed"})
    linear = mlx_zoo.get_rope(HEAD_DIM, base=THETA, scaling={"rope_type": "linear", "factor": 2.0})
    np.testing.assert_allclose(np.array(half(x)), np.array(linear(x)), atol=1e-6)
