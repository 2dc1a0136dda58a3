"""HunYuan MoE v1 (model_type ``hunyuan_v1_moe``): transformers' native format of Tencent's
mixture-of-experts models, e.g. Hunyuan-A13B (80B parameters, 13B active).

The dense v1 decoder (:mod:`mlx_hunyuan.hunyuan_v1_dense`: query/key RMSNorm after RoPE,
NTK-alpha RoPE) with every MLP replaced by a mixture of experts: a softmax router (``mlp.gate.wg``)
picks the ``moe_topk`` most probable of ``num_experts`` SwiGLU experts for each token, their
outputs are summed weighted by the router probabilities *renormalised to sum to one*, and a shared
SwiGLU MLP (``mlp.shared_mlp``) that every token goes through is added.

Sources:
  * model card, https://huggingface.co/tencent/Hunyuan-A13B-Instruct
  * transformers' ``models/hunyuan_v1_moe`` (the reference the tests compare against)
  * Hunyuan-Large technical report (shared + routed experts), https://arxiv.org/abs/2411.02265

How this format differs from Tencent's own ``hunyuan`` format (:mod:`mlx_hunyuan.hunyuan`), which
describes the same checkpoints: transformers builds *every* layer as a mixture of experts with a
shared MLP, gives the experts *and* the shared MLP width ``intermediate_size`` (no
``moe_intermediate_size``, no ``num_shared_expert`` multiple), renormalises the top-k weights
even for k = 1, always normalises queries/keys, and has no Cross-Layer Attention. Weight names are
the same (``mlp.experts.{e}.*``, ``mlp.gate.wg``, ``mlp.shared_mlp.*``,
``self_attn.{query,key}_layernorm``). For Hunyuan-A13B (k = 8, one shared expert,
``moe_intermediate_size == intermediate_size``, no CLA) both formats compute the same function.

Data flow: as in the dense format; the MLP of each layer is
``shared_mlp(x) + sum_k w_k * expert_k(x)`` (see :class:`mlx_hunyuan.blocks.MoE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mlx_zoo import ConfigError, PositiveInt

from .blocks import HunYuanArgs, HunYuanForCausalLM, MoEPlan, per_layer

__all__ = ["Model", "ModelArgs"]


@dataclass
class ModelArgs(HunYuanArgs):
    """transformers' ``HunYuanMoEV1Config``: the shared fields of
    :class:`~mlx_hunyuan.blocks.HunYuanArgs` plus the routing.

    ``intermediate_size`` is the width of each expert *and* of the shared MLP.
    """

    num_experts: PositiveInt = 1  # routed experts per layer
    moe_topk: PositiveInt | list[PositiveInt] = 1  # experts per token; a list: one per layer

    PER_LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("moe_topk",)

    def validate(self, path: Path | str | None = None) -> None:
        super().validate(path)
        for layer in range(self.num_hidden_layers):
            top_k = per_layer(self.moe_topk, layer)
            if not 1 <= top_k <= self.num_experts:
                raise ConfigError(path, f"layer {layer} routes to {top_k} experts; expected "
                                  f"1 .. num_experts = {self.num_experts}", key="moe_topk")

    def mlp_plan(self, layer: int) -> MoEPlan:
        return MoEPlan(num_experts=self.num_experts, top_k=per_layer(self.moe_topk, layer),
                       expert_width=self.intermediate_size, shared_width=self.intermediate_size,
                       renormalize=True)


class Model(HunYuanForCausalLM):
    """HunYuan MoE v1 language model (see the module docstring)."""
