"""Gemma 2: a decoder with RMSNorms before *and* after attention and MLP (scale ``1 + weight``),
GeGLU MLPs (tanh-approximated GELU), embeddings scaled by ``sqrt(hidden_size)``, local
sliding-window layers alternating with global ones, and soft-capped attention scores and logits.

Sources:
  * Gemma 2: Improving Open Language Models at a Practical Size, https://arxiv.org/abs/2408.00118
  * model card, e.g. https://huggingface.co/google/gemma-2-2b
  * transformers' ``models/gemma2/modeling_gemma2.py`` and ``configuration_gemma2.py`` (the
    reference the tests compare against, and the defaults)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from mlx_zoo import ConfigError
from mlx_zoo.config import Divides, PositiveFloat, PositiveInt
from mlx_zoo.decoder import DecoderArgs, DecoderLM, check_layer_types, layer_windows


@dataclass
class Gemma2Args(DecoderArgs):
    """transformers' ``Gemma2Config``: the shared fields with its defaults, and Gemma's own."""

    num_key_value_heads: Annotated[PositiveInt, Divides("num_attention_heads")] | None = 4
    head_dim: PositiveInt | None = 256
    max_position_embeddings: PositiveInt = 8192
    tie_word_embeddings: bool = True
    hidden_activation: str = "gelu_pytorch_tanh"  # the only one Gemma uses
    attention_bias: bool = False
    query_pre_attn_scalar: PositiveFloat = 256  # scores scaled by its inverse square root
    sliding_window: PositiveInt | None = 4096
    layer_types: list[str] | None = None  # default: every `global_every`-th layer full
    attn_logit_softcapping: PositiveFloat | None = 50.0
    final_logit_softcapping: PositiveFloat | None = 30.0
    global_every: ClassVar[int] = 2

    def validate(self, path: Any = None) -> None:
        super().validate(path)
        check_layer_types(self.layer_types, self.num_hidden_layers, path)
        if self.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ConfigError(path, f"{self.hidden_activation!r}; expected gelu_pytorch_tanh",
                              key="hidden_activation")

    def windows(self) -> list[int | None]:
        return layer_windows(self.layer_types or [
            "full_attention" if (i + 1) % self.global_every == 0 else "sliding_attention"
            for i in range(self.num_hidden_layers)], self.sliding_window, self.num_hidden_layers)

    def decoder_options(self) -> dict[str, Any]:
        """The DecoderLM options that make the shared decoder Gemma 2 (module docstring)."""
        return dict(norm_placement="sandwich", norm_offset=1.0, activation="gelu_tanh",
                    embed_scale=self.hidden_size**0.5, scale=self.query_pre_attn_scalar**-0.5,
                    qkv_bias=self.attention_bias, o_bias=self.attention_bias,
                    softcap=self.attn_logit_softcapping,
                    logit_softcap=self.final_logit_softcapping,
                    per_layer=[{"sliding_window": w} for w in self.windows()])


class Gemma2Model(DecoderLM):
    """Gemma 2 language model: the shared decoder with Gemma's options and window schedule."""

    def __init__(self, args: Gemma2Args):
        super().__init__(args, **args.decoder_options())
