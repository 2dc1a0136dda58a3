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

Weights keep the Hugging Face names (``model.layers.N.self_attn.q_proj.weight``, ...): the
checkpoints of transformers and mlx-lm load as published.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_zoo.config import PositiveInt
from mlx_zoo.decoder import DecoderArgs, DecoderLM


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
