"""Llama and Mistral: decoder-only transformers with grouped-query attention, SwiGLU MLPs,
RMSNorm before each block and rotary position embeddings -- the architecture the core's
:mod:`mlx_zoo.decoder` implements; this module states only what each adds.

Llama (model_type ``llama``: Llama 1, 2, 3, 3.1-3.3 and the many models published in its format)
  * LLaMA, https://arxiv.org/abs/2302.13971; Llama 2, https://arxiv.org/abs/2307.09288;
    The Llama 3 Herd of Models, https://arxiv.org/abs/2407.21783
  * transformers' ``models/llama/modeling_llama.py`` and ``configuration_llama.py`` (the
    reference the tests compare against)
  * Llama 3.1's long context is the ``llama3`` RoPE scaling (``rope_scaling = {"rope_type":
    "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}``), served by the core's RoPE registry;
    ``attention_bias`` puts a bias on q/k/v/o, ``mlp_bias`` on the MLP, ``head_dim`` may be
    given explicitly (e.g. ``hidden_size / num_attention_heads`` does not divide).

Mistral (model_type ``mistral``: Mistral 7B v0.1-v0.3, Mistral NeMo, Ministral, ...)
  * Mistral 7B, https://arxiv.org/abs/2310.06825
  * transformers' ``models/mistral/modeling_mistral.py`` and ``configuration_mistral.py``
  * Llama's layers with sliding-window attention: a query at position p attends to the keys at
    positions (p - W, p], W = ``sliding_window`` (default 4096, as ``MistralConfig``; ``null``,
    as v0.2 and later publish it, is full attention). Each layer's cache is then a
    :class:`~mlx_zoo.RotatingKVCache` of W positions, so memory stays bounded however long the
    generation.

Mixtral (model_type ``mixtral``: Mixtral 8x7B, 8x22B)
  * Mixtral of Experts, https://arxiv.org/abs/2401.04088
  * transformers' ``models/mixtral/modeling_mixtral.py`` and ``configuration_mixtral.py``
  * Mistral's layers with a sparse mixture of experts in place of the MLP: softmax router
    (``block_sparse_moe.gate``), the top ``num_experts_per_tok`` of ``num_local_experts``
    SwiGLU experts (``experts.{e}.w1/w3/w2`` = gate/up/down), their probabilities renormalised.
    The layer is kept as ``mlp`` (the core's :class:`~mlx_zoo.decoder.SparseMoE`), the
    checkpoint's names mapped by ``sanitize``.

SmolLM3 (model_type ``smollm3``)
  * model card, https://huggingface.co/HuggingFaceTB/SmolLM3-3B
  * transformers' ``models/smollm3/modeling_smollm3.py`` and ``configuration_smollm3.py``
  * Llama's layers without RoPE where ``no_rope_layers`` says 0 (default: every
    ``no_rope_layer_interval``-th, 4); with ``use_sliding_window``, the ``sliding_attention``
    layers of ``layer_types`` (default: the NoPE ones) see ``sliding_window`` positions.

Weights keep the Hugging Face names (``model.layers.N.self_attn.q_proj.weight``, ...): the
checkpoints of transformers and mlx-lm load as published.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import mlx.core as mx

from mlx_zoo import ConfigError
from mlx_zoo.config import Divides, PositiveFloat, PositiveInt, Range
from mlx_zoo.decoder import (
    DecoderArgs,
    DecoderLM,
    SparseMoE,
    check_layer_types,
    layer_windows,
    stack_experts,
)


@dataclass
class ModelArgs(DecoderArgs):
    """transformers' ``LlamaConfig``: the fields of :class:`~mlx_zoo.decoder.DecoderArgs` (with
    its defaults, which are Llama's) and the two bias switches."""

    attention_bias: bool = False  # q/k/v and o projections carry a bias
    mlp_bias: bool = False  # gate/up/down projections carry a bias


class Model(DecoderLM):
    """Llama language model: the shared decoder with Llama's bias switches."""

    def __init__(self, args: ModelArgs):
        super().__init__(args, qkv_bias=args.attention_bias, o_bias=args.attention_bias,
                         mlp_bias=args.mlp_bias)


@dataclass
class MistralArgs(DecoderArgs):
    """transformers' ``MistralConfig``: the shared fields, its defaults, and the window."""

    max_position_embeddings: PositiveInt = 4096 * 32
    sliding_window: PositiveInt | None = 4096  # positions each query sees; null: all


class MistralModel(DecoderLM):
    """Mistral language model: the shared decoder with a sliding attention window."""

    def __init__(self, args: MistralArgs):
        super().__init__(args, sliding_window=args.sliding_window)


@dataclass
class MixtralArgs(MistralArgs):
    """transformers' ``MixtralConfig``: Mistral's fields with its defaults, and the experts."""

    num_key_value_heads: Annotated[PositiveInt, Divides("num_attention_heads")] | None = 8
    max_position_embeddings: PositiveInt = 4096 * 32
    rms_norm_eps: PositiveFloat = 1e-5
    rope_theta: PositiveFloat = 1e6
    sliding_window: PositiveInt | None = None
    num_local_experts: PositiveInt = 8
    num_experts_per_tok: PositiveInt = 2

    def validate(self, path=None) -> None:
        super().validate(path)
        if self.num_experts_per_tok > self.num_local_experts:
            raise ConfigError(path, f"{self.num_experts_per_tok} experts per token of "
                              f"{self.num_local_experts}; expected at most num_local_experts",
                              key="num_experts_per_tok")


MIXTRAL_EXPERTS = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


class MixtralModel(DecoderLM):
    """Mixtral language model: Mistral's decoder with a sparse MoE in every layer."""

    def __init__(self, args: MixtralArgs):
        def moe(a: MixtralArgs) -> SparseMoE:
            return SparseMoE(a.hidden_size, a.intermediate_size, a.num_local_experts,
                             a.num_experts_per_tok)

        super().__init__(args, sliding_window=args.sliding_window, mlp=moe)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        renamed = {k.replace(".block_sparse_moe.", ".mlp."): v for k, v in weights.items()}
        return super().sanitize(stack_experts(renamed, MIXTRAL_EXPERTS))


@dataclass
class SmolLM3Args(ModelArgs):
    """transformers' ``SmolLM3Config``: Llama's fields with its defaults and the NoPE and
    window schedules."""

    max_position_embeddings: PositiveInt = 32768
    rope_theta: PositiveFloat = 2_000_000.0
    tie_word_embeddings: bool = True
    no_rope_layers: list[Annotated[int, Range(0, 1)]] | None = None  # 1: RoPE, 0: none
    no_rope_layer_interval: PositiveInt = 4
    use_sliding_window: bool = False
    sliding_window: PositiveInt | None = None
    layer_types: list[str] | None = None

    def validate(self, path=None) -> None:
        super().validate(path)
        check_layer_types(self.layer_types, self.num_hidden_layers, path)
        if self.no_rope_layers is not None and len(self.no_rope_layers) != self.num_hidden_layers:
            raise ConfigError(path, f"{len(self.no_rope_layers)} entries; expected one per "
                              f"layer ({self.num_hidden_layers})", key="no_rope_layers")

    def schedule(self) -> list[dict]:
        """Each layer's options: RoPE or none, and its window."""
        rope = self.no_rope_layers or [int((i + 1) % self.no_rope_layer_interval != 0)
                                       for i in range(self.num_hidden_layers)]
        window = self.sliding_window if self.use_sliding_window else None
        types = self.layer_types or ["sliding_attention" if window and not r else "full_attention"
                                     for r in rope]
        return [{"rope": bool(r), "sliding_window": w}
                for r, w in zip(rope, layer_windows(types, window, len(rope)), strict=True)]


class SmolLM3Model(DecoderLM):
    """SmolLM3 language model: Llama's decoder with RoPE left out on the NoPE layers."""

    def __init__(self, args: SmolLM3Args):
        super().__init__(args, qkv_bias=args.attention_bias, o_bias=args.attention_bias,
                         mlp_bias=args.mlp_bias, per_layer=args.schedule())
