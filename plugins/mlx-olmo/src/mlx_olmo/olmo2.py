"""OLMo 2 (model_type ``olmo2``): Llama's decoder with the norms moved after each branch
(``x + norm(attn(x))``, ``h + norm(mlp(h))``, no norm before) and an RMSNorm over all query and
all key features (not per head) before RoPE.

Sources:
  * 2 OLMo 2 Furious, https://arxiv.org/abs/2501.00656
  * model card, e.g. https://huggingface.co/allenai/OLMo-2-1124-7B
  * transformers' ``models/olmo2/modeling_olmo2.py`` and ``configuration_olmo2.py`` (the
    reference the tests compare against, and the defaults)

Tensor parallelism does not apply: a norm over all heads' features cannot be split by heads.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_zoo.config import PositiveFloat
from mlx_zoo.decoder import DecoderArgs, DecoderLM


@dataclass
class ModelArgs(DecoderArgs):
    """transformers' ``Olmo2Config``: the shared fields with its defaults, and the bias."""

    rms_norm_eps: PositiveFloat = 1e-5
    attention_bias: bool = False


class Model(DecoderLM):
    """OLMo 2 language model: the shared decoder with post-norms and all-head q/k norms."""

    def __init__(self, args: ModelArgs):
        super().__init__(args, qkv_bias=args.attention_bias, o_bias=args.attention_bias,
                         norm_placement="post", qk_norm="all")
