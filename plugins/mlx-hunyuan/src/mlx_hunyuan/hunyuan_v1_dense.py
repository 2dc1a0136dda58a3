"""HunYuan dense v1 (model_type ``hunyuan_v1_dense``): Tencent's dense decoder-only models
Hunyuan-0.5B / 1.8B / 4B / 7B.

A Llama-style transformer -- pre-norm residual blocks, grouped-query attention, SwiGLU MLP,
RMSNorm -- with two HunYuan traits: an RMSNorm over every query and key head *after* RoPE
(``query_layernorm`` / ``key_layernorm``), and NTK-alpha RoPE (the base stretched to
``rope_theta * alpha ** (d / (d - 2))``, see :mod:`mlx_hunyuan.rope`), which the configs write as
``rope_scaling = {"type": "dynamic", "alpha": 1000.0, "factor": 1.0, ...}``.

Sources:
  * model card, https://huggingface.co/tencent/Hunyuan-7B-Instruct (and -0.5B/-1.8B/-4B)
  * transformers' ``models/hunyuan_v1_dense`` (the reference the tests compare against)
  * the architecture's lineage: Hunyuan-Large technical report, https://arxiv.org/abs/2411.02265

Data flow: token ids -> embedding -> N x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> logits,
the shared layers living in :mod:`mlx_hunyuan.blocks`. Published configs also carry ``use_cla``
(false) and ``cla_share_factor``: transformers ignores both and so does this format; a
checkpoint with Cross-Layer Attention is the ``hunyuan`` format.
"""

from __future__ import annotations

from dataclasses import dataclass

from .blocks import HunYuanArgs, HunYuanForCausalLM

__all__ = ["Model", "ModelArgs"]


@dataclass
class ModelArgs(HunYuanArgs):
    """transformers' ``HunYuanDenseV1Config``: the shared fields of
    :class:`~mlx_hunyuan.blocks.HunYuanArgs` and nothing else; every layer has a dense SwiGLU MLP
    of width ``intermediate_size``.

    ``use_qk_norm`` (default true) is read although transformers ignores it and always normalises
    queries and keys -- every published checkpoint sets it true and ships the norm weights.
    """


class Model(HunYuanForCausalLM):
    """HunYuan dense v1 language model (see the module docstring)."""
