"""Qwen2 / Qwen2.5: a decoder-only transformer with grouped-query attention (q/k/v carry a
bias), SwiGLU MLPs, RMSNorm before each block, and rotary position embeddings.

Sources:
  * Qwen2 Technical Report, https://arxiv.org/abs/2407.10671
  * Qwen2.5 Technical Report, https://arxiv.org/abs/2412.15115
  * model cards, e.g. https://huggingface.co/Qwen/Qwen2.5-0.5B and
    https://huggingface.co/Qwen/Qwen2.5-7B-Instruct (long-context yarn ``rope_scaling``)

Data flow: token ids -> embedding -> N x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> logits
(through ``lm_head``, or the transposed embedding when ``tie_word_embeddings``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import mlx.core as mx
import mlx.nn as nn

from mlx_zoo import (
    BaseModelArgs,
    CausalLM,
    RopeScaling,
    SwiGLU,
    attention,
    get_rope,
    mask_for,
    merge_heads,
    project,
    shard_attention,
    shard_mlp,
    split_heads,
    unfuse_projections,
)
from mlx_zoo.config import Divides, PositiveFloat, PositiveInt


@dataclass
class ModelArgs(BaseModelArgs):
    """Qwen2's config.json. Every count and width is positive (:data:`PositiveInt`); the head
    width is derived, ``hidden_size // num_attention_heads``, so the heads must divide
    ``hidden_size``, and the key/value heads the attention heads (:class:`Divides`)."""

    model_type: str
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    intermediate_size: PositiveInt  # width of the SwiGLU MLP's gate/up projections
    num_attention_heads: Annotated[PositiveInt, Divides("hidden_size")]
    vocab_size: PositiveInt
    # < num_attention_heads: grouped-query attention
    num_key_value_heads: Annotated[PositiveInt, Divides("num_attention_heads")] | None = None
    rms_norm_eps: PositiveFloat = 1e-6  # epsilon inside RMSNorm's square root
    max_position_embeddings: PositiveInt = 32768  # context length; dynamic/yarn scalings read it
    rope_theta: PositiveFloat = 1000000.0  # RoPE base theta: inv_freq_i = theta ** (-2i / head_dim)
    rope_scaling: RopeScaling | None = None  # context extension, e.g. Qwen2.5's yarn (core rope)
    tie_word_embeddings: bool = True  # logits through the transposed input embedding, no lm_head

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class Attention(nn.Module):
    # q/k/v read the same input: mlx_zoo.fuse_projections may make them one qkv_proj matmul
    fusable_projections: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj")}

    def __init__(self, args: ModelArgs):
        super().__init__()
        dim, self.n_heads, self.n_kv_heads = args.hidden_size, args.num_attention_heads, \
            args.num_key_value_heads
        head_dim = args.head_dim
        self.scale = head_dim**-0.5
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=True)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=True)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=False)
        self.rope = get_rope(head_dim, base=args.rope_theta, scaling=args.rope_scaling,
                             max_position_embeddings=args.max_position_embeddings)

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        q, k, v = project(self, "qkv_proj", x)
        q = split_heads(q, self.n_heads)  # (B, heads, L, head_dim)
        k = split_heads(k, self.n_kv_heads)
        v = split_heads(v, self.n_kv_heads)
        offset = cache.offset if cache is not None else 0
        q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = attention(q, k, v, scale=self.scale, mask=mask, cache=cache)
        return self.o_proj(merge_heads(out))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = SwiGLU(args.hidden_size, args.intermediate_size)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Qwen2Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, inputs: mx.array, cache: list | None = None) -> mx.array:
        h = self.embed_tokens(inputs)
        cache = cache or [None] * len(self.layers)
        mask = mask_for(cache[0], h.shape[1])
        for layer, layer_cache in zip(self.layers, cache, strict=False):
            h = layer(h, mask, layer_cache)
        return self.norm(h)


class Model(CausalLM):
    """Qwen2Model and its output head (``lm_head``, or the tied embedding)."""

    def __init__(self, args: ModelArgs):
        super().__init__(args, Qwen2Model(args))

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Drop rotary ``inv_freq`` buffers (RoPE is recomputed) and, for tied embeddings, the
        ``lm_head`` copy some checkpoints still carry."""
        weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return weights

    def shard(self, group: mx.distributed.Group | None = None) -> None:
        """Megatron-style tensor parallelism over ``group`` (Shoeybi et al. 2019,
        https://arxiv.org/abs/1909.08053): q/k/v and gate/up are split by output features
        ("all-to-sharded", each rank computes its own heads / hidden units), o_proj and down_proj
        by input features ("sharded-to-all", results summed across ranks), so each block needs
        one all-reduce after attention and one after the MLP. Head counts shrink accordingly.
        Fused projections are split first: each part is sharded by its own heads."""
        unfuse_projections(self)
        group = group or mx.distributed.init()
        for layer in self.model.layers:
            shard_attention(layer.self_attn, group)
            shard_mlp(layer.mlp, group)
