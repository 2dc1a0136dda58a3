"""IBM Granite (3.x dense, model_type ``granite``): Llama's decoder with four multipliers --
embeddings times ``embedding_multiplier``, each residual branch times ``residual_multiplier``,
attention scores times ``attention_multiplier`` (in place of ``head_dim ** -0.5``), logits
divided by ``logits_scaling``.

Sources:
  * Granite 3.0 Language Models, https://github.com/ibm-granite/granite-3.0-language-models
  * model card, e.g. https://huggingface.co/ibm-granite/granite-3.1-2b-instruct
  * transformers' ``models/granite/modeling_granite.py`` and ``configuration_granite.py`` (the
    reference the tests compare against, and the defaults)
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_zoo.config import PositiveFloat
from mlx_zoo.decoder import DecoderArgs, DecoderLM


@dataclass
class ModelArgs(DecoderArgs):
    """transformers' ``GraniteConfig``: the shared fields, the bias switches, the multipliers."""

    attention_bias: bool = False
    mlp_bias: bool = False
    embedding_multiplier: PositiveFloat = 1.0
    residual_multiplier: PositiveFloat = 1.0
    attention_multiplier: PositiveFloat = 1.0
    logits_scaling: PositiveFloat = 1.0


class Model(DecoderLM):
    """Granite language model: the shared decoder with Granite's multipliers."""

    def __init__(self, args: ModelArgs):
        super().__init__(args, qkv_bias=args.attention_bias, o_bias=args.attention_bias,
                         mlp_bias=args.mlp_bias, embed_scale=args.embedding_multiplier,
                         residual_scale=args.residual_multiplier,
                         scale=args.attention_multiplier, logit_scale=1 / args.logits_scaling)
