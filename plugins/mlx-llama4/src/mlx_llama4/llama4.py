"""Llama 4 (Meta, 2025): the text model of Llama 4 Scout and Maverick -- a decoder-only
mixture-of-experts transformer that interleaves chunked local attention with RoPE and global
attention without positional encoding (NoPE), and dense with MoE feed-forward layers.

Sources:
  * model card: https://huggingface.co/meta-llama/Llama-4-Scout-17B-16E
    (and https://huggingface.co/meta-llama/Llama-4-Maverick-17B-128E)
  * announcement: https://ai.meta.com/blog/llama-4-multimodal-intelligence/
  * attention temperature scaling: Nakanishi, "Scalable-Softmax Is Superior for Attention",
    https://arxiv.org/abs/2501.19399
  * reference implementation checked against: transformers' ``models/llama4/modeling_llama4.py``

The layers, by their config (Scout: 48 layers, 16 experts, every layer MoE; Maverick: 128
experts, MoE on every second layer):

  * attention, *local* layers (``no_rope_layers[i] == 1``): RoPE in the interleaved layout -- the
    pairs ``(x_2i, x_2i+1)`` rotate, as transformers' complex-number ``apply_rotary_emb`` does
    (``traditional=True`` in MLX) -- then, with ``use_qk_norm``, queries and keys L2-normalised
    (RMS-normalised without a weight); a query sees the keys of its own chunk of
    ``attention_chunk_size`` positions only (``pos // chunk`` equal, and causal);
  * attention, *global* (NoPE) layers, every ``no_rope_layer_interval``-th: full causal attention
    with no positional encoding, queries scaled up with their position ("temperature tuning",
    :func:`attention_temperature`);
  * feed-forward: a mixture of experts on every ``interleave_moe_layer_step``-th layer (or those
    listed in ``moe_layers``), a dense SwiGLU of width ``intermediate_size_mlp`` elsewhere.

MoE routing: router logits -> the top ``num_experts_per_tok`` experts -> sigmoid of their logits
``s_k`` (sigmoid, not softmax: the weights do not sum to one); the output is
``shared_expert(x) + sum_k expert_k(s_k * x)`` -- the weight scales the expert's *input*, not its
output (which differs: the expert is not linear).

Data flow: ids -> embedding -> N x [x + attn(norm(x)); x + ffn(norm(x))] -> norm -> lm_head.

Two checkpoint layouts load (see :meth:`Model.sanitize` and :meth:`ModelArgs.from_dict`):
``llama4`` (published: nested ``text_config``, ``language_model.``-prefixed weights next to a
vision tower, which is dropped) and ``llama4_text`` (transformers' ``Llama4ForCausalLM``: flat).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import mlx.core as mx
import mlx.nn as nn

from mlx_zoo import (
    QUANTIZATION_CONFIG_KEY,
    QUANTIZATION_KEY,
    BaseModelArgs,
    CausalLM,
    ChunkedKVCache,
    ConfigError,
    Divides,
    GenerationArgumentError,
    KVCache,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    RopeScaling,
    SwiGLU,
    SwitchGLU,
    attention,
    get_rope,
    internal_field,
    mask_for,
    merge_heads,
    project,
    shard_attention,
    shard_experts,
    shard_mlp,
    split_heads,
    unfuse_projections,
)

__all__ = ["DecoderLayer", "Llama4TextModel", "Model", "ModelArgs", "attention_temperature"]

CHUNKED_ATTENTION = "chunked_attention"  # layer_types entry: local attention within chunks
FULL_ATTENTION = "full_attention"  # layer_types entry: global causal attention
LAYER_TYPES = (CHUNKED_ATTENTION, FULL_ATTENTION)
SUPPORTED_ACTIVATIONS = ("silu",)  # SwiGLU's gate activation; every Llama 4 checkpoint uses SiLU
TEXT_CONFIG = "text_config"  # the llama4 layout's section holding the text model's settings
QUANTIZATION_KEYS = (QUANTIZATION_KEY, QUANTIZATION_CONFIG_KEY)  # top level in either layout

LANGUAGE_MODEL_PREFIX = "language_model."  # the text model's weights in the llama4 layout
DROPPED_PREFIXES = ("vision_model.", "multi_modal_projector.")  # the llama4 image path
ROUTER_SUFFIX = "feed_forward.router"
FUSED_GATE_UP = ".experts.gate_up_proj"  # (experts, hidden, 2 * inter): gate then up, x @ W
FUSED_DOWN = ".experts.down_proj"  # (experts, inter, hidden): x @ W
PER_EXPERT = re.compile(r"^(?P<prefix>.*\.experts)\.(?P<expert>\d+)\.(?P<rest>\w+\.\w+)$")


# -- configuration -----------------------------------------------------------------------------


@dataclass
class ModelArgs(BaseModelArgs):
    """The text model's settings: config.json itself (``llama4_text``) or its ``text_config``
    (``llama4``). Defaults are transformers' ``Llama4TextConfig`` defaults (Scout's values).
    Counts and widths are positive (:data:`PositiveInt`); without a ``head_dim`` the heads must
    divide ``hidden_size``."""

    model_type: str  # "llama4" (nested text_config + vision tower) or "llama4_text" (flat)
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    intermediate_size: PositiveInt  # width of each routed expert and of the shared expert
    num_attention_heads: Annotated[PositiveInt, Divides("hidden_size", unless_given=("head_dim",))]
    vocab_size: PositiveInt
    intermediate_size_mlp: PositiveInt = 16384  # width of the dense (non-MoE) SwiGLU layers
    # < num_attention_heads: grouped-query attention
    num_key_value_heads: Annotated[PositiveInt, Divides("num_attention_heads")] | None = None
    # per-head width; default hidden_size // num_attention_heads
    head_dim: PositiveInt | None = None
    rms_norm_eps: PositiveFloat = 1e-5  # epsilon of the RMSNorms and of the q/k L2 norm
    rope_theta: PositiveFloat = 500000.0  # RoPE base theta: inv_freq_i = theta ** (-2i / head_dim)
    rope_scaling: RopeScaling | None = None  # Scout: "llama3" scaling (mlx_zoo.rope.Llama3RoPE)
    max_position_embeddings: PositiveInt = 131072  # context length; some RoPE scalings read it
    num_local_experts: PositiveInt = 16  # routed experts per MoE layer
    num_experts_per_tok: PositiveInt = 1  # top-k: experts each token is sent to
    # Indices of the MoE layers. None: every interleave_moe_layer_step-th layer, counting from 1
    # (layers step-1, 2*step-1, ...); step 1 makes every layer MoE (Scout), 2 every other one.
    moe_layers: list[NonNegativeInt] | None = None
    interleave_moe_layer_step: PositiveInt = 1
    # Per layer, 1 = the layer *uses* RoPE (a local, chunked layer), 0 = NoPE (global) -- the name
    # says the opposite of the values. None or empty: every no_rope_layer_interval-th layer
    # (counting from 1) is NoPE, the others use RoPE.
    no_rope_layers: list[Annotated[int, Range(0, 1)]] | None = None
    no_rope_layer_interval: PositiveInt = 4
    # Per layer, "chunked_attention" or "full_attention" (transformers >= 4.54 writes it). None:
    # chunked on the RoPE layers, full on the NoPE ones.
    layer_types: list[str] | None = None
    # positions per chunk of local attention; None: global
    attention_chunk_size: PositiveInt | None = 8192
    use_qk_norm: bool = True  # L2-normalise queries and keys (after RoPE) on the RoPE layers
    # Temperature tuning on the NoPE layers (attention_temperature): on when true or non-zero
    # (transformers writes a bool; Meta's original configs and mlx-lm use an int, 4).
    attn_temperature_tuning: bool | int = True
    # Positions per step of the temperature (its floor's divisor). An integer in every published
    # config, and transformers' Llama4TextConfig rejects a float, so it is kept as given.
    floor_scale: PositiveInt | PositiveFloat = 8192
    attn_scale: NonNegativeFloat = 0.1  # strength of the temperature's logarithmic growth
    attention_bias: bool = False  # q/k/v/o projections carry a bias
    hidden_act: str = "silu"  # activation of the SwiGLU gates
    tie_word_embeddings: bool = False  # logits through the transposed embedding, no lm_head

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    outer_config: dict[str, Any] | None = internal_field(default=None, repr=False)
    """The published ``llama4`` layout: config.json's top-level keys other than ``text_config``
    and the quantization entry (``vision_config``, ``architectures``, ...), written back around
    the text settings by :meth:`to_dict`; None for the flat ``llama4_text`` layout."""
    text_model_type: str | None = internal_field(default=None, repr=False)
    """``text_config.model_type`` in the ``llama4`` layout (``llama4_text``), as read."""

    @classmethod
    def from_dict(cls, config: dict[str, Any], path: Path | str | None = None) -> ModelArgs:
        """Read a flat config, or a nested one (``text_config``), whose text settings are read
        with the top-level ``model_type`` (and quantization entry); the keys around them are kept
        in ``outer_config`` for :meth:`to_dict`. Errors name nested keys ``text_config.<key>``."""
        text = config.get(TEXT_CONFIG)
        if text is None:
            return super().from_dict(config, path)
        if not isinstance(text, dict):
            raise ConfigError(path, f"expected an object, got {type(text).__name__}",
                              key=TEXT_CONFIG)
        moved = QUANTIZATION_KEYS if config.get(QUANTIZATION_KEY) is not None else ()
        flat = {**text, **{k: config[k] for k in moved if k in config},
                "model_type": config.get("model_type")}
        try:
            args = super().from_dict(flat, path)  # validate() included
        except ConfigError as error:
            raise error.with_key_prefix(TEXT_CONFIG) from error
        args.outer_config = copy.deepcopy({k: v for k, v in config.items()
                                           if k != TEXT_CONFIG and k not in moved})
        args.text_model_type = text.get("model_type")
        return args

    def to_dict(self) -> dict[str, Any]:
        """The config.json dictionary, in the layout it was read from (nested or flat)."""
        flat = super().to_dict()
        if self.outer_config is None:
            return flat
        moved = {}
        if self.quantization is not None:  # at the top level, where mlx-lm writes it
            moved = {k: flat.pop(k) for k in QUANTIZATION_KEYS}
        model_type = flat.pop("model_type")
        if self.text_model_type is not None:
            flat["model_type"] = self.text_model_type
        return {**copy.deepcopy(self.outer_config), "model_type": model_type, TEXT_CONFIG: flat,
                **moved}

    def validate(self, path: Path | str | None = None) -> None:
        """Check the fields that only make sense together (after the core's checks,
        :meth:`mlx_zoo.BaseModelArgs.validate`); raise :class:`ConfigError`."""
        super().validate(path)
        n = self.num_hidden_layers
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(path, f"unsupported activation {self.hidden_act!r}; expected one of "
                              f"{SUPPORTED_ACTIVATIONS}", key="hidden_act")
        if not 1 <= self.num_experts_per_tok <= self.num_local_experts:
            raise ConfigError(path, f"expected 1 .. num_local_experts ({self.num_local_experts}),"
                              f" got {self.num_experts_per_tok}", key="num_experts_per_tok")
        if self.no_rope_layers and len(self.no_rope_layers) < n:
            raise ConfigError(path, f"expected one entry (1 = RoPE, 0 = NoPE) per layer, "
                              f"{n} layers, got {len(self.no_rope_layers)}", key="no_rope_layers")
        if self.layer_types is not None:
            if len(self.layer_types) < n or not set(self.layer_types) <= set(LAYER_TYPES):
                raise ConfigError(path, f"expected {n} entries, each one of {LAYER_TYPES}; got "
                                  f"{self.layer_types}", key="layer_types")
        if self.moe_layers is not None and any(not 0 <= i < n for i in self.moe_layers):
            raise ConfigError(path, f"expected layer indices in 0 .. {n - 1}, got "
                              f"{self.moe_layers}", key="moe_layers")

    # -- the per-layer pattern, derived as transformers derives it --------------------------------

    def uses_rope(self, layer: int) -> bool:
        """Whether ``layer`` applies RoPE (a local layer) rather than none (a global NoPE one)."""
        if self.no_rope_layers:
            return bool(self.no_rope_layers[layer])
        return (layer + 1) % self.no_rope_layer_interval != 0

    def is_moe(self, layer: int) -> bool:
        if self.moe_layers is not None:
            return layer in self.moe_layers
        return (layer + 1) % self.interleave_moe_layer_step == 0

    def is_chunked(self, layer: int) -> bool:
        """Whether ``layer`` attends within chunks of ``attention_chunk_size`` positions."""
        if self.attention_chunk_size is None:
            return False
        if self.layer_types is not None:
            return self.layer_types[layer] == CHUNKED_ATTENTION
        return self.uses_rope(layer)


# -- modules -----------------------------------------------------------------------------------


def attention_temperature(positions: mx.array, floor_scale: float, attn_scale: float) -> mx.array:
    """Llama 4's attention temperature tuning on its NoPE layers, after Scalable-Softmax
    (https://arxiv.org/abs/2501.19399): the query at position ``p`` (counting from 0) is
    multiplied by

        1 + attn_scale * log(1 + floor((p + 1) / floor_scale))

    -- exactly 1 for the first ``floor_scale - 1`` positions, then growing logarithmically in
    steps of ``floor_scale`` positions. Without positional encoding a global layer's softmax over
    ever more keys flattens out; scaling the logits with log(length) keeps it as sharp as in short
    contexts."""
    steps = mx.floor((positions.astype(mx.float32) + 1) / floor_scale)
    return 1 + attn_scale * mx.log1p(steps)


class Attention(nn.Module):
    """Grouped-query attention of one layer: on the local layers RoPE (interleaved pairs) and the
    q/k L2 norm, within chunks of ``attention_chunk_size`` positions; on the global (NoPE)
    layers no positional encoding and the attention temperature
    (:func:`attention_temperature`).

    q/k/v read the same input: :func:`mlx_zoo.fuse_projections` may make them one ``qkv_proj``
    matmul."""

    fusable_projections: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj")}

    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        dim, self.n_heads, self.n_kv_heads = args.hidden_size, args.num_attention_heads, \
            args.num_key_value_heads
        head_dim = args.head_dim
        self.scale = head_dim**-0.5
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=args.attention_bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=args.attention_bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=args.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=args.attention_bias)
        self.use_rope = args.uses_rope(layer)
        if self.use_rope:
            # Interleaved pairs (x_2i, x_2i+1), as Meta's complex-number rotation: traditional.
            self.rope = get_rope(head_dim, base=args.rope_theta, traditional=True,
                                 scaling=args.rope_scaling,
                                 max_position_embeddings=args.max_position_embeddings)
        self.use_qk_norm = args.use_qk_norm and self.use_rope
        self.norm_eps = args.rms_norm_eps
        self.tune_temperature = bool(args.attn_temperature_tuning) and not self.use_rope
        self.floor_scale, self.attn_scale = args.floor_scale, args.attn_scale

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        length = x.shape[1]
        q, k, v = project(self, "qkv_proj", x)
        q = split_heads(q, self.n_heads)  # (B, heads, L, head_dim)
        k = split_heads(k, self.n_kv_heads)
        v = split_heads(v, self.n_kv_heads)
        offset = cache.offset if cache is not None else 0
        if self.use_rope:
            q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if self.use_qk_norm:  # L2 norm = RMS norm without a learned weight
            q = mx.fast.rms_norm(q, None, self.norm_eps)
            k = mx.fast.rms_norm(k, None, self.norm_eps)
        if self.tune_temperature:
            if isinstance(offset, mx.array) and offset.ndim == 1:
                # a batch cache (mlx-lm's BatchGenerator): one offset per row -> (B, 1, L, 1)
                positions = offset[:, None] + mx.arange(length)
                scale = attention_temperature(positions, self.floor_scale,
                                              self.attn_scale)[:, None, :, None]
            else:
                positions = mx.arange(offset, offset + length)
                scale = attention_temperature(positions, self.floor_scale,
                                              self.attn_scale)[:, None]
            q = q * scale.astype(q.dtype)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = attention(q, k, v, scale=self.scale, mask=mask, cache=cache)
        return self.o_proj(merge_heads(out))


class MoE(nn.Module):
    """Routed SwiGLU experts (stacked, :class:`mlx_zoo.SwitchGLU`) plus an always-on shared one:
    ``shared_expert(x) + sum over the top-k experts of expert_k(sigmoid(logit_k) * x)``."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.top_k = args.num_experts_per_tok
        self.router = nn.Linear(args.hidden_size, args.num_local_experts, bias=False)
        self.experts = SwitchGLU(args.hidden_size, args.intermediate_size, args.num_local_experts)
        self.shared_expert = SwiGLU(args.hidden_size, args.intermediate_size)
        self.sharding_group = None  # set by shard(): sum the ranks' partial outputs

    def shard(self, group: mx.distributed.Group) -> None:
        """Split every routed expert's and the shared expert's hidden units across ``group``
        (router replicated, so all ranks route alike); each rank's output is a partial sum, added
        up across ranks with one all-reduce."""
        shard_experts([self.experts, self.shared_expert], group)
        self.sharding_group = group

    def __call__(self, x: mx.array) -> mx.array:
        logits = self.router(x)
        # the choice itself is not differentiable: gradients reach the router through ``weights``
        chosen = mx.stop_gradient(mx.argpartition(-logits, kth=self.top_k - 1, axis=-1))
        chosen = chosen[..., :self.top_k]
        # sigmoid is monotonic, so picking by logit or by sigmoid(logit) picks the same experts
        weights = mx.sigmoid(mx.take_along_axis(logits, chosen, axis=-1).astype(mx.float32))
        routed = self.experts(x, chosen, input_scale=weights.astype(x.dtype))
        y = self.shared_expert(x) + routed.sum(axis=-2)
        if self.sharding_group is not None:
            y = mx.distributed.all_sum(y, group=self.sharding_group)
        return y


class DecoderLayer(nn.Module):
    """One pre-norm residual block: attention (chunked local with RoPE, or global NoPE), then
    the feed-forward layer (a mixture of experts or a dense SwiGLU)."""

    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.self_attn = Attention(args, layer)
        self.is_moe = args.is_moe(layer)
        self.feed_forward = MoE(args) if self.is_moe else SwiGLU(args.hidden_size,
                                                              args.intermediate_size_mlp)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        return h + self.feed_forward(self.post_attention_layernorm(h))


class Llama4TextModel(nn.Module):
    """Embedding -> decoder layers -> final RMSNorm; the masks of the chunked and of the global
    layers are built once per call."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [DecoderLayer(args, i) for i in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.chunked = [args.is_chunked(i) for i in range(args.num_hidden_layers)]

    def __call__(self, inputs: mx.array, cache: list | None = None) -> mx.array:
        h = self.embed_tokens(inputs)
        if cache is None:
            cache = [None] * len(self.layers)
        elif not isinstance(cache, (list, tuple)) or len(cache) != len(self.layers):
            got = (f"{len(cache)} entries" if isinstance(cache, (list, tuple))
                   else f"a {type(cache).__name__}")
            raise GenerationArgumentError(
                f"cache must be a list with one entry per layer ({len(self.layers)}; "
                f"mlx_zoo.make_prompt_cache(model) builds it) or None, got {got}")
        masks = self._masks(cache, h.shape[1])
        for layer, layer_cache, chunked in zip(self.layers, cache, self.chunked, strict=True):
            h = layer(h, masks[chunked], layer_cache)
        return self.norm(h)

    def _masks(self, cache: list, n: int) -> dict[bool, Any]:
        """The mask of the chunked (``True``) and of the global (``False``) layers for ``n`` new
        queries, each from the first cache of its kind (all caches of a kind are in step)."""
        masks = {}
        for chunked in (True, False):
            first = next((c for c, is_chunked in zip(cache, self.chunked, strict=True)
                          if is_chunked == chunked), None)
            if first is None and chunked and any(self.chunked):
                # no cache: an empty one's mask (positions 0 .. n-1); with no chunked layer at
                # all (attention_chunk_size null: global attention everywhere) none is needed
                first = ChunkedKVCache(self.args.attention_chunk_size)
            masks[chunked] = mask_for(first, n)
        return masks


# -- checkpoint tensors ------------------------------------------------------------------------


def _split_fused_experts(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """transformers' fused expert tensors -> SwitchGLU's stacked ``(experts, out, in)`` weights."""
    out = {}
    for name, value in weights.items():
        if name.endswith(FUSED_GATE_UP):
            prefix = name.removesuffix(".gate_up_proj")
            gate, up = mx.split(value, 2, axis=-1)
            out[f"{prefix}.gate_proj.weight"] = gate.swapaxes(-1, -2)
            out[f"{prefix}.up_proj.weight"] = up.swapaxes(-1, -2)
        elif name.endswith(FUSED_DOWN):
            out[f"{name}.weight"] = value.swapaxes(-1, -2)
        else:
            out[name] = value
    return out


def _stack_per_expert(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """``...experts.<e>.gate_proj.weight`` (one tensor per expert) -> one stacked tensor."""
    groups: dict[str, dict[int, mx.array]] = {}
    out = {}
    for name, value in weights.items():
        match = PER_EXPERT.match(name)
        if match is None:
            out[name] = value
            continue
        key = f"{match['prefix']}.{match['rest']}"
        groups.setdefault(key, {})[int(match["expert"])] = value
    for key, experts in groups.items():
        if sorted(experts) != list(range(len(experts))):  # a gap: leave them to the strict check,
            prefix, rest = key.rsplit(".", 2)[0], ".".join(key.rsplit(".", 2)[1:])
            out.update({f"{prefix}.{e}.{rest}": v for e, v in experts.items()})  # which names them
            continue
        out[key] = mx.stack([experts[e] for e in range(len(experts))])
    return out


# -- the model ---------------------------------------------------------------------------------


class Model(CausalLM):
    """Llama4TextModel and its output head (``lm_head``, or the tied embedding)."""

    def __init__(self, args: ModelArgs):
        super().__init__(args, Llama4TextModel(args))

    def make_cache(self) -> list:
        """A :class:`~mlx_zoo.ChunkedKVCache` (keys of the current chunk only) on the local
        layers, a full :class:`~mlx_zoo.KVCache` on the global ones."""
        chunk = self.args.attention_chunk_size
        return [ChunkedKVCache(chunk) if chunked else KVCache() for chunked in self.model.chunked]

    def shard(self, group: mx.distributed.Group | None = None) -> None:
        """Megatron-style tensor parallelism over ``group`` (Shoeybi et al. 2019,
        https://arxiv.org/abs/1909.08053), in place, through the core's
        :mod:`mlx_zoo.sharding`: attention heads split across ranks (q/k/v by output features,
        o_proj by input features; the query/key L2 norm and the temperature act per head, the
        chunked and global caches per rank), dense MLPs and every expert split by hidden units.
        One all-reduce after attention and one after each MLP / mixture of experts. Needs head
        counts divisible by the group size. Fused projections are split first."""
        unfuse_projections(self)
        group = group or mx.distributed.init()
        for layer in self.model.layers:
            shard_attention(layer.self_attn, group)
            if layer.is_moe:
                layer.feed_forward.shard(group)
            else:
                shard_mlp(layer.feed_forward, group)

    def pipeline_boundaries(self) -> list[int]:
        """Any layer may start a pipeline stage (:mod:`mlx_zoo.pipeline`)."""
        return list(range(len(self.model.layers)))

    def keep_layers(self, start: int, stop: int) -> None:
        """Keep layers ``start .. stop - 1`` (a pipeline stage) with their chunked/global kinds,
        which pick each layer's mask and cache."""
        self.model.layers = self.model.layers[start:stop]
        self.model.chunked = self.model.chunked[start:stop]

    def quantize_predicate(self, path: str, module: nn.Module) -> bool:
        """Keep the routers in full precision: a tiny matrix whose rounding could flip which
        experts a token goes to."""
        return not path.endswith(ROUTER_SUFFIX)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Map a checkpoint to this model's parameters (idempotent: our own saves pass through).

        * drops the vision tower and the multimodal projector (``llama4`` layout) and rotary
          ``inv_freq`` buffers, and strips the ``language_model.`` prefix;
        * splits transformers' fused ``experts.gate_up_proj`` ``(experts, hidden, 2 * inter)``
          into :class:`~mlx_zoo.SwitchGLU`'s ``gate_proj``/``up_proj`` ``(experts, inter, hidden)``
          and transposes ``experts.down_proj`` ``(experts, inter, hidden)`` likewise;
        * stacks per-expert tensors ``experts.<e>.<proj>.weight`` (unfused exports);
        * drops an ``lm_head`` copy when the embeddings are tied.
        """
        kept = {}
        for name, value in weights.items():
            if name.startswith(DROPPED_PREFIXES) or "rotary_emb.inv_freq" in name:
                continue
            kept[name.removeprefix(LANGUAGE_MODEL_PREFIX)] = value
        kept = _split_fused_experts(kept)
        kept = _stack_per_expert(kept)
        if self.args.tie_word_embeddings:
            kept.pop("lm_head.weight", None)
        return kept
