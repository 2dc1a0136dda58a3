"""Pieces of :mod:`mlx_zoo.decoder` that no plugin of the core's tests exercises on its own: the
shared expert of :class:`SparseMoE`, :func:`stack_experts`' renaming and incomplete sets, and
``per_layer`` / ``norm_placement`` / ``layer_types`` checks."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_zoo import ConfigError
from mlx_zoo.decoder import (
    DecoderArgs,
    DecoderLM,
    SparseMoE,
    check_layer_types,
    stack_experts,
)
from mlx_zoo.layers import SwiGLU

ARGS = dict(model_type="zoo_tiny", hidden_size=32, num_hidden_layers=2, intermediate_size=48,
            num_attention_heads=4, vocab_size=64)


def test_sparse_moe_adds_its_shared_expert():
    mx.random.seed(0)
    moe = SparseMoE(32, 16, 4, 2, shared_width=24)
    x = mx.random.normal((1, 5, 32))
    shared = moe.shared_expert
    assert isinstance(shared, SwiGLU)
    with_shared = moe(x)
    del moe["shared_expert"]
    np.testing.assert_allclose(np.array(with_shared), np.array(moe(x) + shared(x)), atol=1e-5)


def test_stack_experts_renames_and_leaves_incomplete_sets():
    w = {f"m.layers.0.mlp.experts.{e}.w1.weight": mx.full((2, 3), e) for e in range(3)}
    w["m.layers.0.mlp.experts.0.w2.weight"] = mx.zeros((3, 2))  # expert 1 and 2 missing
    out = stack_experts(w, {"w1": "gate_proj", "w2": "down_proj"})
    stacked = out["m.layers.0.mlp.switch_mlp.gate_proj.weight"]
    assert stacked.shape == (3, 2, 3) and stacked[:, 0, 0].tolist() == [0, 1, 2]
    assert "m.layers.0.mlp.experts.0.w2.weight" in out  # left for the loader to report


def test_bad_schedules_are_refused():
    args = DecoderArgs(**ARGS)
    with pytest.raises(ValueError, match="one entry per layer"):
        DecoderLM(args, per_layer=[{}])
    with pytest.raises(ValueError, match="norm_placement"):
        DecoderLM(args, norm_placement="middle")
    with pytest.raises(ConfigError, match="layer_types"):
        check_layer_types(["sliding_attention"], 2)
    with pytest.raises(ConfigError, match=r"layer_types\[1\]"):
        check_layer_types(["sliding_attention", "chunked"], 2)
