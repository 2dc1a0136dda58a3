"""Phi-3 (model_type ``phi3``: Phi-3 mini/small-style dense models, Phi-3.5-mini, Phi-4-mini):
Llama's decoder with q/k/v and gate/up stored fused on disk (``qkv_proj``, ``gate_up_proj``),
LongRoPE for the 128k-context variants, partial rotary embeddings (Phi-4-mini: 3/4 of each head)
and an optional sliding window.

Sources:
  * Phi-3 Technical Report, https://arxiv.org/abs/2404.14219; LongRoPE,
    https://arxiv.org/abs/2402.13753; Phi-4-Mini Technical Report, https://arxiv.org/abs/2503.01743
  * model cards, e.g. https://huggingface.co/microsoft/Phi-3-mini-128k-instruct,
    https://huggingface.co/microsoft/Phi-4-mini-instruct
  * transformers' ``models/phi3/modeling_phi3.py`` and ``configuration_phi3.py`` (the reference
    the tests compare against, and the defaults)

LongRoPE's pre-training context is ``original_max_position_embeddings`` at the top level of
published configs (inside ``rope_parameters`` as transformers >= 5 writes it); the core's
``longrope`` variant (:mod:`mlx_zoo.rope`) picks the short or long factors by sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import mlx.core as mx

from mlx_zoo.config import PositiveFloat, PositiveInt, Range
from mlx_zoo.decoder import DecoderArgs, DecoderLM

PARTIAL_ROTARY = "partial_rotary_factor"
ORIGINAL_CONTEXT = "original_max_position_embeddings"


@dataclass
class ModelArgs(DecoderArgs):
    """transformers' ``Phi3Config``: the shared fields with its defaults, the pre-training
    context, the window and the share of each head that is rotated."""

    max_position_embeddings: PositiveInt = 4096
    original_max_position_embeddings: PositiveInt | None = None
    rms_norm_eps: PositiveFloat = 1e-5
    sliding_window: PositiveInt | None = None
    partial_rotary_factor: Annotated[float, Range(0, 1, exclusive_low=True)] = 1.0

    @classmethod
    def from_dict(cls, config: dict[str, Any], path: Path | str | None = None):
        """The RoPE settings of either dialect in one place: the rotated share at the top level,
        the pre-training context inside ``rope_scaling`` (where the core's LongRoPE reads it)."""
        scaling = config.get("rope_scaling")
        if isinstance(scaling, dict):
            scaling = dict(scaling)
            config = {**config, PARTIAL_ROTARY: scaling.pop(
                PARTIAL_ROTARY, config.get(PARTIAL_ROTARY, 1.0))}
            if config.get(ORIGINAL_CONTEXT) is not None:
                scaling.setdefault(ORIGINAL_CONTEXT, config[ORIGINAL_CONTEXT])
            config["rope_scaling"] = None if set(scaling) <= {"rope_type", ORIGINAL_CONTEXT} and (
                scaling["rope_type"] == "default") else scaling
        return super().from_dict(config, path)


class Model(DecoderLM):
    """Phi-3 language model: the shared decoder, its projections split apart on load."""

    def __init__(self, args: ModelArgs):
        dims = int(args.head_dim * args.partial_rotary_factor)
        super().__init__(args, sliding_window=args.sliding_window, rope={"dims": dims})

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Split the fused ``qkv_proj`` (q, k, v rows) and ``gate_up_proj`` (gate, up rows)
        tensors -- weights, biases, quantized scales alike: all are split by rows."""
        a = self.args
        q, kv = a.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim
        out = {}
        for name, value in weights.items():
            if ".qkv_proj." in name:
                parts = mx.split(value, [q, q + kv], axis=0)
                out.update({name.replace("qkv_proj", p): v
                            for p, v in zip(("q_proj", "k_proj", "v_proj"), parts, strict=True)})
            elif ".gate_up_proj." in name:
                gate, up = mx.split(value, 2, axis=0)
                out[name.replace("gate_up_proj", "gate_proj")] = gate
                out[name.replace("gate_up_proj", "up_proj")] = up
            else:
                out[name] = value
        return super().sanitize(out)
