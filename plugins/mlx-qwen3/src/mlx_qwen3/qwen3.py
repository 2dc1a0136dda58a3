"""Qwen3 and Qwen3-MoE: Qwen2's decoder without the q/k/v bias and with an RMSNorm over each query
and key head before RoPE (QK-norm); Qwen3-MoE puts a mixture of experts (softmax router, top-k,
no shared expert) in place of the dense MLP.

Sources:
  * Qwen3 Technical Report, https://arxiv.org/abs/2505.09388
  * model cards, e.g. https://huggingface.co/Qwen/Qwen3-0.6B, https://huggingface.co/Qwen/Qwen3-30B-A3B
  * transformers' ``models/qwen3/modeling_qwen3.py`` and ``models/qwen3_moe/modeling_qwen3_moe.py``
    (the references the tests compare against), and their ``configuration_*.py`` (the defaults)

Per-layer schedules, as transformers reads them: with ``use_sliding_window`` (false in every
published checkpoint) the layers that ``layer_types`` marks ``sliding_attention`` (default: those
from ``max_window_layers`` on) attend to ``sliding_window`` positions, Qwen3-MoE's every layer;
a Qwen3-MoE layer is a mixture of experts unless listed in ``mlp_only_layers`` or skipped by
``decoder_sparse_step``. Everything else is the core's decoder (:mod:`mlx_zoo.decoder`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from mlx_zoo import ConfigError
from mlx_zoo.config import Divides, NonNegativeInt, PositiveInt
from mlx_zoo.decoder import DecoderArgs, DecoderLM, SparseMoE, check_layer_types, layer_windows


@dataclass
class ModelArgs(DecoderArgs):
    """transformers' ``Qwen3Config``: the shared fields with its defaults, the bias switch and
    the sliding-window schedule."""

    head_dim: PositiveInt | None = 128
    max_position_embeddings: PositiveInt = 32768
    attention_bias: bool = False  # q/k/v and o projections carry a bias
    use_sliding_window: bool = False
    sliding_window: PositiveInt | None = 4096
    max_window_layers: NonNegativeInt = 28  # default schedule: sliding from this layer on
    layer_types: list[str] | None = None  # "full_attention" / "sliding_attention" per layer

    def validate(self, path=None) -> None:
        super().validate(path)
        check_layer_types(self.layer_types, self.num_hidden_layers, path)

    def windows(self) -> list[int | None]:
        window = self.sliding_window if self.use_sliding_window else None
        types = self.layer_types or ["sliding_attention" if i >= self.max_window_layers
                                     else "full_attention" for i in range(self.num_hidden_layers)]
        return layer_windows(types, window, self.num_hidden_layers)


class Model(DecoderLM):
    """Qwen3 language model: the shared decoder with QK-norm and its window schedule."""

    def __init__(self, args: ModelArgs):
        super().__init__(args, qk_norm=True, qkv_bias=args.attention_bias,
                         o_bias=args.attention_bias,
                         per_layer=[{"sliding_window": w} for w in args.windows()])


@dataclass
class MoEArgs(DecoderArgs):
    """transformers' ``Qwen3MoeConfig``; the expert count is ``num_experts`` in published files
    and ``num_local_experts`` as transformers >= 5 saves it (either is read, as written)."""

    num_key_value_heads: Annotated[PositiveInt, Divides("num_attention_heads")] | None = 4
    max_position_embeddings: PositiveInt = 32768
    attention_bias: bool = False
    use_sliding_window: bool = False
    sliding_window: PositiveInt | None = 4096
    moe_intermediate_size: PositiveInt = 768  # each expert's hidden width
    num_experts: PositiveInt | None = None
    num_local_experts: PositiveInt | None = None
    num_experts_per_tok: PositiveInt = 8
    norm_topk_prob: bool = False  # renormalise the top-k probabilities to sum to one
    decoder_sparse_step: PositiveInt = 1  # every n-th layer is a mixture of experts
    mlp_only_layers: list[NonNegativeInt] | None = None

    def __post_init__(self):
        super().__post_init__()
        self.num_experts = self.num_experts or self.num_local_experts or 128

    def validate(self, path=None) -> None:
        super().validate(path)
        if self.num_experts_per_tok > self.num_experts:
            raise ConfigError(path, f"{self.num_experts_per_tok} experts per token of "
                              f"{self.num_experts}; expected at most num_experts",
                              key="num_experts_per_tok")

    def is_moe(self, layer: int) -> bool:
        return (layer not in (self.mlp_only_layers or [])
                and (layer + 1) % self.decoder_sparse_step == 0)


class MoEModel(DecoderLM):
    """Qwen3-MoE language model: Qwen3's attention, sparse MoE layers (``mlp.gate``,
    ``mlp.experts.{e}.*`` on disk, stacked into ``mlp.switch_mlp``)."""

    def __init__(self, args: MoEArgs):
        def moe(a: MoEArgs) -> SparseMoE:
            return SparseMoE(a.hidden_size, a.moe_intermediate_size, a.num_experts,
                             a.num_experts_per_tok, norm_topk_prob=a.norm_topk_prob)

        window = args.sliding_window if args.use_sliding_window else None
        super().__init__(args, qk_norm=True, qkv_bias=args.attention_bias,
                         o_bias=args.attention_bias, sliding_window=window,
                         per_layer=[{"mlp": moe if args.is_moe(i) else None}
                                    for i in range(args.num_hidden_layers)])
