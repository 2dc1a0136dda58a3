"""What Llama-like decoders share, so that a plugin states only what differs.

Llama, Mistral, Qwen2 and their many relatives are one architecture with switches::

    token ids -> embed_tokens -> N x DecoderLayer -> norm -> lm_head (or the tied embedding)
    DecoderLayer:  h = x + self_attn(input_layernorm(x))
                   out = h + mlp(post_attention_layernorm(h))
    self_attn:     grouped-query attention, RoPE from the config (:func:`mlx_zoo.get_rope`)
    mlp:           SwiGLU, down(silu(gate(x)) * up(x))

The switches are keyword options of :class:`DecoderLM` (handed down to every layer): biases on
q/k/v (``qkv_bias``, Qwen2), on the output projection (``o_bias``; Llama's ``attention_bias``
sets both), on the MLP (``mlp_bias``), an RMSNorm over each query and key head before RoPE
(``qk_norm``, as Qwen3 and OLMo 2 do), and a sliding attention window (``sliding_window``,
Mistral: every layer gets a :class:`~mlx_zoo.RotatingKVCache`). Config fields the family shares
are in :class:`DecoderArgs`; a plugin derives its config from it, redeclaring the defaults its
``transformers`` config class uses.

Parameter names are the Hugging Face ones (``model.layers.0.self_attn.q_proj.weight``, ...), so
transformers' and mlx-lm's checkpoints load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import mlx.core as mx
import mlx.nn as nn

from .cache import KVCache, RotatingKVCache
from .config import BaseModelArgs, Divides, PositiveFloat, PositiveInt, RopeScaling
from .errors import GenerationArgumentError
from .fusion import project, unfuse_projections
from .layers import CausalLM, SwiGLU, attention, mask_for, merge_heads, split_heads
from .rope import get_rope
from .sharding import shard_attention, shard_mlp


@dataclass
class DecoderArgs(BaseModelArgs):
    """The config.json fields of every Llama-like decoder (a plugin derives its config from it).

    Attention has ``num_attention_heads`` query heads and ``num_key_value_heads`` key/value
    heads (grouped-query attention; default: as many) of ``head_dim`` features each (default
    ``hidden_size // num_attention_heads``, which must then divide).
    """

    model_type: str
    hidden_size: PositiveInt  # width of the residual stream
    num_hidden_layers: PositiveInt
    intermediate_size: PositiveInt  # width of the SwiGLU MLP's gate/up projections
    num_attention_heads: Annotated[PositiveInt, Divides("hidden_size", unless_given=("head_dim",))]
    vocab_size: PositiveInt
    # < num_attention_heads: grouped-query attention
    num_key_value_heads: Annotated[PositiveInt, Divides("num_attention_heads")] | None = None
    head_dim: PositiveInt | None = None  # per-head width; default hidden_size // heads
    rms_norm_eps: PositiveFloat = 1e-6  # epsilon inside RMSNorm's square root
    max_position_embeddings: PositiveInt = 2048  # context length; dynamic/yarn scalings read it
    rope_theta: PositiveFloat = 10000.0  # RoPE base: inv_freq_i = theta ** (-2i / head_dim)
    rope_scaling: RopeScaling | None = None  # context extension (variants: mlx_zoo.rope)
    tie_word_embeddings: bool = False  # logits through the transposed embedding, no lm_head

    def __post_init__(self):  # the defaults derived from other fields (both positive or None)
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads


class Attention(nn.Module):
    """Grouped-query attention with RoPE; optional q/k/v and output biases and q-k RMSNorm."""

    # q/k/v read the same input: mlx_zoo.fuse_projections may make them one qkv_proj matmul
    fusable_projections: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj")}

    def __init__(self, args: DecoderArgs, *, qkv_bias: bool = False, o_bias: bool = False,
                 qk_norm: bool = False):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.head_dim, self.scale = head_dim, head_dim**-0.5
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=o_bias)
        if qk_norm:  # per head, before RoPE (Qwen3, OLMo 2)
            self.q_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
            self.k_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
        self.rope = get_rope(head_dim, base=args.rope_theta, scaling=args.rope_scaling,
                             max_position_embeddings=args.max_position_embeddings)

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        offset = cache.offset if cache is not None else 0
        if x.shape[1] == 1 and "qkv_proj" in self and "q_norm" not in self:
            q, k, v = self._one_position_qkv(x, offset)
        else:
            q, k, v = project(self, "qkv_proj", x)
            q = split_heads(q, self.n_heads)  # (B, heads, L, head_dim)
            k = split_heads(k, self.n_kv_heads)
            v = split_heads(v, self.n_kv_heads)
            if "q_norm" in self:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = attention(q, k, v, scale=self.scale, mask=mask, cache=cache)
        return self.o_proj(merge_heads(out))

    def _one_position_qkv(self, x: mx.array, offset: Any) -> tuple[mx.array, mx.array, mx.array]:
        """Rotated queries, rotated keys and values for one position (a decode step) from the
        fused q/k/v product, in 4 ops instead of 9: ``(B, 1, heads * D)`` is already laid out as
        ``(B, heads, 1, D)``, and queries and keys, which share the position, are rotated in one
        RoPE call. The same arithmetic as the general path, so the same values; fewer ops
        matter because a decode step costs host time per op on GPUs."""
        heads = self.qkv_proj.linear(x).reshape(x.shape[0], -1, 1, self.head_dim)
        rotated, v = mx.split(heads, [self.n_heads + self.n_kv_heads], axis=1)
        q, k = mx.split(self.rope(rotated, offset=offset), [self.n_heads], axis=1)
        return q, k, v


class DecoderLayer(nn.Module):
    """Pre-norm block: attention then a SwiGLU MLP, each after an RMSNorm, each residual."""

    def __init__(self, args: DecoderArgs, *, mlp_bias: bool = False, **attention_options: Any):
        super().__init__()
        self.self_attn = Attention(args, **attention_options)
        self.mlp = SwiGLU(args.hidden_size, args.intermediate_size, bias=mlp_bias)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


def check_cache(cache: Any, layers: int) -> list:
    """``cache`` as a list of one entry per layer (``None``: no cache, a whole-prompt forward);
    anything else -- ``[]``, a list of another length, not a list -- raises
    :class:`~mlx_zoo.GenerationArgumentError` rather than silently running fewer layers."""
    if cache is None:
        return [None] * layers
    if not isinstance(cache, (list, tuple)) or len(cache) != layers:
        got = (f"{len(cache)} entries" if isinstance(cache, (list, tuple))
               else f"a {type(cache).__name__}")
        raise GenerationArgumentError(
            f"cache must be a list with one entry per layer ({layers}; "
            f"mlx_zoo.make_prompt_cache(model) builds it) or None, got {got}")
    return list(cache)


class Decoder(nn.Module):
    """The decoder stack: token embedding, :class:`DecoderLayer` s, final RMSNorm; with a
    ``sliding_window``, attention sees that many positions (with or without a cache)."""

    def __init__(self, args: DecoderArgs, *, sliding_window: int | None = None, **options: Any):
        super().__init__()
        self.sliding_window = sliding_window
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [DecoderLayer(args, **options) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def make_cache(self) -> list:
        """One cache per layer: a window of ``sliding_window`` positions, or all of them."""
        if self.sliding_window is None:
            return [KVCache() for _ in self.layers]
        return [RotatingKVCache(self.sliding_window) for _ in self.layers]

    def __call__(self, inputs: mx.array, cache: list | None = None) -> mx.array:
        cache = check_cache(cache, len(self.layers))
        h = self.embed_tokens(inputs)
        first = cache[0]
        if first is None and self.sliding_window is not None:  # no cache: still the window
            first = RotatingKVCache(self.sliding_window)
        mask = mask_for(first, h.shape[1])
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            h = layer(h, mask, layer_cache)
        return self.norm(h)


class DecoderLM(CausalLM):
    """A :class:`Decoder` and its head (:class:`~mlx_zoo.CausalLM`), with ``sanitize``,
    ``make_cache`` and ``shard``; a plugin's ``Model`` passes the options that differ.

    ``sliding_window`` (an int, or None for full attention) limits every layer's attention to
    that many positions and gives it a :class:`~mlx_zoo.RotatingKVCache` of that size; the other
    options (``qkv_bias``, ``o_bias``, ``qk_norm``, ``mlp_bias``) go to each
    :class:`DecoderLayer`.
    """

    def __init__(self, args: DecoderArgs, **options: Any):
        super().__init__(args, Decoder(args, **options))

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Drop rotary ``inv_freq`` buffers (RoPE is recomputed) and, for tied embeddings, the
        ``lm_head`` copy some checkpoints still carry."""
        weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return weights

    def make_cache(self) -> list:
        """The decoder's caches (:meth:`Decoder.make_cache`)."""
        return self.model.make_cache()

    def shard(self, group: mx.distributed.Group | None = None) -> None:
        """Megatron-style tensor parallelism over ``group`` (Shoeybi et al. 2019,
        https://arxiv.org/abs/1909.08053): q/k/v and gate/up are split by output features
        ("all-to-sharded", each rank computes its own heads / hidden units), o_proj and down_proj
        by input features ("sharded-to-all", results summed across ranks), so each block needs
        one all-reduce after attention and one after the MLP. Head counts shrink accordingly.
        Fused projections are split first: each part is sharded by its own heads."""
        unfuse_projections(self)
        group = group or mx.distributed.init()
        for layer in self.layers:
            shard_attention(layer.self_attn, group)
            shard_mlp(layer.mlp, group)
