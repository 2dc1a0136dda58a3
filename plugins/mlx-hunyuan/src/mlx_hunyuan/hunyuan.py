"""HunYuan in Tencent's own format (model_type ``hunyuan``): Hunyuan-Large (389B parameters,
52B active) and Hunyuan-A13B as first published with Tencent's modeling code; the format mlx-lm
calls ``hunyuan``. transformers has no implementation of it.

A decoder-only mixture-of-experts transformer (pre-norm residual blocks, grouped-query attention,
SwiGLU, RMSNorm) with:

* query/key RMSNorm after RoPE (``use_qk_norm``),
* Cross-Layer Attention (``use_cla``, ``cla_share_factor``): runs of ``cla_share_factor`` layers
  share the keys/values the first layer of the run projects, halving the KV cache of
  Hunyuan-Large (see :mod:`mlx_hunyuan.blocks`),
* mixed MLP/MoE layers (``use_mixed_mlp_moe``): a shared SwiGLU every token goes through plus
  ``moe_topk`` of ``num_experts`` routed SwiGLU experts; layers with ``num_experts == 1`` are a
  plain SwiGLU,
* NTK-alpha RoPE, ``rope_scaling = {"type": "dynamic", "alpha": ...}`` (:mod:`mlx_hunyuan.rope`).

Sources:
  * Hunyuan-Large technical report, https://arxiv.org/abs/2411.02265 (model structure: GQA + CLA
    KV-cache compression, one shared expert plus routed experts with top-1 routing) and
    https://github.com/Tencent/Tencent-Hunyuan-Large
  * Hunyuan-A13B model card and modeling code, https://huggingface.co/tencent/Hunyuan-A13B-Instruct
    (top-8 routing, one shared expert per layer, no CLA)
  * Cross-Layer Attention, Brandon et al. 2024, https://arxiv.org/abs/2405.12981

Routing as in Tencent's ``top1gating`` / ``topkgating``: softmax over the experts, the top-k
chosen; with k = 1 the expert's output is weighted by its probability, with k > 1 the k
probabilities are renormalised to sum to one. (Tencent's training code also caps how many tokens
an expert takes -- "capacity" -- and drops the rest; inference engines such as vLLM route every
token, and so does this model.)

Data flow: token ids -> embedding -> N x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> logits;
with CLA a layer either projects keys/values (and caches them) or takes those of the first layer
of its run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mlx_zoo import ConfigError, NonNegativeInt, PositiveInt

from .blocks import HunYuanArgs, HunYuanForCausalLM, MLPPlan, MoEPlan, per_layer

__all__ = ["Model", "ModelArgs"]


@dataclass
class ModelArgs(HunYuanArgs):
    """Tencent's ``HunYuanConfig`` (the fields the language model reads).

    Integer-or-list fields give one value for every layer or a list with one per layer
    (Hunyuan-A13B writes lists).
    """

    use_qk_norm: bool = False  # RMSNorm per query/key head after RoPE (Tencent's default: off)
    # per-head width written by newer configs; used when head_dim is absent
    attention_head_dim: PositiveInt | None = None
    # routed experts; a layer with 1 has a plain SwiGLU MLP of width intermediate_size instead
    num_experts: PositiveInt | list[PositiveInt] = 1
    moe_topk: PositiveInt | list[PositiveInt] = 1  # experts each token is routed to
    # width of each routed expert; None: intermediate_size
    moe_intermediate_size: PositiveInt | list[PositiveInt] | None = None
    # "mixed MLP and MoE": add a shared (always active) SwiGLU MLP to the routed experts' output
    use_mixed_mlp_moe: bool = False
    # size of that shared MLP in experts: its width is intermediate_size * num_shared_expert
    # (0: no shared MLP)
    num_shared_expert: NonNegativeInt | list[NonNegativeInt] = 1
    # Cross-Layer Attention: layers whose index is not a multiple of cla_share_factor have no
    # k_proj/v_proj and attend to the keys/values of the nearest multiple below them
    use_cla: bool = False
    cla_share_factor: PositiveInt = 1  # layers per CLA run (2 for Hunyuan-Large)

    PER_LAYER_FIELDS: ClassVar[tuple[str, ...]] = (
        "num_experts", "moe_topk", "moe_intermediate_size", "num_shared_expert")

    def default_head_dim(self) -> int:
        return self.attention_head_dim or super().default_head_dim()

    def validate(self, path: Path | str | None = None) -> None:
        super().validate(path)
        for layer in range(self.num_hidden_layers):
            experts, top_k = per_layer(self.num_experts, layer), per_layer(self.moe_topk, layer)
            if experts > 1 and not 1 <= top_k <= experts:
                raise ConfigError(path, f"layer {layer} routes to {top_k} experts; expected "
                                  f"1 .. num_experts = {experts}", key="moe_topk")

    def computes_kv(self, layer: int) -> bool:
        return not self.use_cla or layer % self.cla_share_factor == 0

    def mlp_plan(self, layer: int) -> MLPPlan:
        experts = per_layer(self.num_experts, layer)
        if experts <= 1:
            return self.intermediate_size
        top_k = per_layer(self.moe_topk, layer)
        shared = 0
        if self.use_mixed_mlp_moe:
            shared = self.intermediate_size * per_layer(self.num_shared_expert, layer)
        width = per_layer(self.moe_intermediate_size, layer) or self.intermediate_size
        return MoEPlan(num_experts=experts, top_k=top_k, expert_width=width, shared_width=shared,
                       renormalize=top_k > 1)


class Model(HunYuanForCausalLM):
    """HunYuan (Tencent format) language model (see the module docstring)."""
