"""Tensor parallelism: the Megatron-style split of attention and MLP blocks over a group of
processes, shared by every plugin's ``shard`` (Shoeybi et al. 2019, "Megatron-LM",
https://arxiv.org/abs/1909.08053).

In a block, the projections that read the block's input (q/k/v; gate/up) are split by output
features ("all-to-sharded": each rank computes its own heads / hidden units from the whole
input), and the projection that writes the block's output (o_proj; down_proj) by input features
("sharded-to-all": each rank's partial product is summed across ranks). One all-reduce per block,
and each rank holds 1/N of the block's weights. MLX's ``mlx.nn.layers.distributed`` does the
splitting; this module decides which layer gets which split, and checks the head counts.

The all-to-sharded layers MLX's ``shard_linear`` makes wrap their input in an identity whose only
role is to all-reduce gradients in the backward pass: an extra op per projection per token at
inference, and a class :func:`mlx_zoo.fuse_projections` does not fuse. They are replaced by the
plain ``nn.Linear`` / ``nn.QuantizedLinear`` holding the same shard (:func:`inference_layer`), so
a sharded model runs as few ops per layer as an unsharded one and its q/k/v and gate/up shards
fuse.

Mixture-of-experts layers split every expert's hidden units the same way but in place
(:func:`shard_experts`): the layer sums its routed and shared outputs first and all-reduces once
(the layer's own ``__call__`` does the ``mx.distributed.all_sum``).
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import ShardingError
from .fusion import layer_of

ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")
HEAD_COUNTS = ("n_heads", "n_kv_heads")
"""Attributes of an attention module holding its query and key/value head counts."""
MLP_INPUTS = ("gate_proj", "up_proj")


def inference_layer(layer: nn.Module) -> nn.Module:
    """``layer`` (an all-to-sharded layer of MLX's ``shard_linear``) as the plain layer its
    forward pass computes: ``nn.Linear`` / ``nn.QuantizedLinear`` holding the same arrays (none
    copied), the same ones frozen. Other layers are returned as they are."""
    from mlx.nn.layers.distributed import AllToShardedLinear, QuantizedAllToShardedLinear

    if type(layer) is AllToShardedLinear:
        cls, quantization = nn.Linear, None
    elif type(layer) is QuantizedAllToShardedLinear:
        cls, quantization = nn.QuantizedLinear, (layer.group_size, layer.bits, layer.mode)
    else:
        return layer
    arrays = {key: value for key, value in layer.items() if isinstance(value, mx.array)}
    trainable = frozenset(name for name, _ in tree_flatten(layer.trainable_parameters()))
    return layer_of(cls, arrays, trainable, quantization)


def _all_to_sharded(layer: nn.Module, group: mx.distributed.Group) -> nn.Module:
    from mlx.nn.layers.distributed import shard_linear

    return inference_layer(shard_linear(layer, "all-to-sharded", group=group))


def shard_attention(attn: nn.Module, group: mx.distributed.Group, *,
                    inputs: Sequence[str] = ATTENTION_INPUTS, output: str = "o_proj",
                    head_counts: Sequence[str] = HEAD_COUNTS) -> None:
    """Split ``attn``'s heads over ``group``: ``inputs`` by output features, ``output`` by input
    features, and each of ``head_counts`` divided by the group size (every rank attends with
    its own heads; keys/values of grouped-query attention stay with their queries' rank).
    Raises :class:`ShardingError` when a head count does not divide."""
    from mlx.nn.layers.distributed import shard_linear

    ranks = group.size()
    for name in head_counts:
        heads = getattr(attn, name)
        if heads % ranks:
            raise ShardingError(f"{type(attn).__name__}.{name} = {heads} heads cannot be split "
                                f"over {ranks} processes: expected a multiple of {ranks}")
    for name in inputs:
        setattr(attn, name, _all_to_sharded(getattr(attn, name), group))
    setattr(attn, output, shard_linear(getattr(attn, output), "sharded-to-all", group=group))
    for name in head_counts:
        setattr(attn, name, getattr(attn, name) // ranks)


def shard_mlp(mlp: nn.Module, group: mx.distributed.Group) -> None:
    """Split a gated MLP (:class:`mlx_zoo.SwiGLU`) by hidden units: gate/up by output
    features, down by input features (its output is all-reduced)."""
    from mlx.nn.layers.distributed import shard_linear

    for name in MLP_INPUTS:
        setattr(mlp, name, _all_to_sharded(getattr(mlp, name), group))
    mlp.down_proj = shard_linear(mlp.down_proj, "sharded-to-all", group=group)


def shard_experts(mlps: Sequence[nn.Module], group: mx.distributed.Group) -> None:
    """Split, in place, the hidden units of gated MLPs whose outputs the caller adds up and
    all-reduces once (a mixture of experts' :class:`mlx_zoo.SwitchGLU` and shared MLP): each
    rank's output is then a partial sum."""
    from mlx.nn.layers.distributed import shard_inplace

    for mlp in mlps:
        for name in MLP_INPUTS:
            shard_inplace(getattr(mlp, name), "all-to-sharded", group=group)
        shard_inplace(mlp.down_proj, "sharded-to-all", group=group)
