"""Tensor-parallel sharding of attention and MLP blocks (``mlx_zoo.sharding``), in one process
(a group of one: MLX's ``shard_linear`` splits nothing, the layer classes and arrays are what
is checked): the all-to-sharded projections become the plain layers their forward pass computes,
which give the same outputs, hold the same arrays, and fuse."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.nn.layers.distributed import ShardedToAllLinear, shard_linear

from mlx_zoo import SwiGLU
from mlx_zoo.fusion import FusedLinear, fuse_projections
from mlx_zoo.sharding import inference_layer, shard_mlp

IN, OUT = 64, 32


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_inference_layer_is_the_plain_layer(quantized, bias):
    layer = nn.Linear(IN, OUT, bias=bias)
    if quantized:
        layer = nn.QuantizedLinear.from_linear(layer, group_size=32, bits=4)
    sharded = shard_linear(layer, "all-to-sharded", group=mx.distributed.init())
    plain = inference_layer(sharded)
    assert type(plain) is type(layer)
    assert {k: id(v) for k, v in plain.items()} == {k: id(v) for k, v in sharded.items()}
    if quantized:
        assert (plain.group_size, plain.bits, plain.mode) == (32, 4, "affine")
    x = mx.random.normal((3, IN))
    assert mx.array_equal(plain(x), sharded(x))
    assert inference_layer(layer) is layer  # anything else: as it is


def test_sharded_mlp_fuses():
    mlp = SwiGLU(IN, OUT)
    x = mx.random.normal((2, IN))
    expected = mlp(x)
    shard_mlp(mlp, mx.distributed.init())
    assert type(mlp.gate_proj) is nn.Linear and isinstance(mlp.down_proj, ShardedToAllLinear)
    assert fuse_projections(mlp) == 1
    assert isinstance(mlp["gate_up_proj"], FusedLinear)
    assert mx.allclose(mlp(x), expected, atol=1e-5)
