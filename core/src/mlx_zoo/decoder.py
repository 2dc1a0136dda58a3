"""What Llama-like decoders share, so that a plugin states only what differs.

Llama, Mistral, Qwen2 and their many relatives are one architecture with switches::

    token ids -> embed_tokens [* embed_scale] -> N x DecoderLayer -> norm -> lm_head (or the tied
    embedding) [-> soft-capped logits]
    DecoderLayer ("pre" norms):  h = x + self_attn(input_layernorm(x))
                                 out = h + mlp(post_attention_layernorm(h))
    self_attn:     grouped-query attention, RoPE from the config (:func:`mlx_zoo.get_rope`)
    mlp:           SwiGLU, down(silu(gate(x)) * up(x)), or a mixture of experts (:class:`SparseMoE`)

The switches are keyword options of :class:`DecoderLM`, handed down to every layer; ``per_layer``
(a list of one option dict per layer) overrides them layer by layer -- the per-layer schedules of
sliding-window or full attention, RoPE or none, dense or MoE. What each option does:

* attention (:class:`Attention`): ``qkv_bias``, ``o_bias`` (Llama's ``attention_bias`` sets
  both), ``qk_norm`` (an RMSNorm over each query and key head before RoPE: Qwen3, Gemma 3;
  ``"all"``: one over all heads' features at once, OLMo 2),
  ``scale`` (of the scores; default ``head_dim ** -0.5``), ``softcap`` (scores soft-capped,
  Gemma 2), ``rope`` (``True``: from the config; ``False``: none on the layer, SmolLM3; a dict:
  :func:`~mlx_zoo.get_rope` overrides ``dims`` (partial rotary, Phi-4-mini) / ``base`` /
  ``scaling``, Gemma 3's local layers);
* the block (:class:`DecoderLayer`): ``norm_placement`` -- ``"pre"`` (above), ``"sandwich"``
  (Gemma 2/3: a norm before *and* after attention and MLP: ``input_layernorm``,
  ``post_attention_layernorm``, ``pre_feedforward_layernorm``, ``post_feedforward_layernorm``)
  or ``"post"`` (OLMo 2: only after, ``post_attention_layernorm`` and
  ``post_feedforward_layernorm``); ``norm_offset`` (1.0: every RMSNorm scales by ``1 + weight``,
  Gemma; :func:`~mlx_zoo.layers.rms_norm`); ``activation`` (``"silu"`` or ``"gelu_tanh"``);
  ``mlp_bias``; ``mlp`` (a factory ``mlp(args) -> module`` replacing the dense MLP, e.g. a
  :class:`SparseMoE`); ``sliding_window`` (the layer sees that many positions and gets a
  :class:`~mlx_zoo.RotatingKVCache`; Mistral, Gemma's local layers); ``residual_scale`` (each
  branch times a constant before the residual sum, Granite's ``residual_multiplier``);
* the stack (:class:`Decoder`): ``embed_scale`` (embeddings times a constant in their dtype:
  Gemma's ``sqrt(hidden_size)``);
* the head (:class:`DecoderLM`): ``logit_scale`` (final logits times a constant, Granite),
  ``logit_softcap`` (final logits soft-capped, Gemma 2).

Config fields the family shares are in :class:`DecoderArgs`; a plugin derives its config from
it, redeclaring the defaults its ``transformers`` config class uses. The per-layer state lives
on each layer (``layer.sliding_window``), so a pipeline stage cut out of the layer list keeps it.

Parameter names are the Hugging Face ones (``model.layers.0.self_attn.q_proj.weight``, ...), so
transformers' and mlx-lm's checkpoints load as they are; :func:`stack_experts` turns per-expert
checkpoint tensors into the stacked ``switch_mlp`` of a :class:`SparseMoE`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import mlx.core as mx
import mlx.nn as nn

from .cache import KVCache, RotatingKVCache
from .config import BaseModelArgs, Divides, PositiveFloat, PositiveInt, RopeScaling
from .errors import ConfigError, GenerationArgumentError, ShardingError
from .fusion import project, unfuse_projections
from .hookspecs import Shards
from .layers import (
    CausalLM,
    SwiGLU,
    SwitchGLU,
    attention,
    mask_for,
    merge_heads,
    rms_norm,
    split_heads,
)
from .rope import get_rope
from .sharding import shard_attention, shard_experts, shard_mlp


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
    """Grouped-query attention with RoPE; optional q/k/v and output biases, q/k RMSNorm, and the
    score hooks of :func:`mlx_zoo.attention` (``scale``, ``softcap``)."""

    # q/k/v read the same input: mlx_zoo.fuse_projections may make them one qkv_proj matmul
    fusable_projections: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj")}

    def __init__(self, args: DecoderArgs, *, qkv_bias: bool = False, o_bias: bool = False,
                 qk_norm: bool | str = False, scale: float | None = None,
                 softcap: float | None = None, rope: bool | dict[str, Any] = True,
                 norm_offset: float = 0.0):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.softcap = softcap
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=o_bias)
        if qk_norm not in (False, True, "heads", "all"):
            raise ValueError(f"qk_norm must be a bool, 'heads' or 'all', got {qk_norm!r}")
        self.qk_norm_all = qk_norm == "all"  # over all heads' features at once (OLMo 2)
        if qk_norm:  # before RoPE: per head (Qwen3, Gemma 3) or over all heads (OLMo 2)
            q_width = self.n_heads * head_dim if self.qk_norm_all else head_dim
            k_width = self.n_kv_heads * head_dim if self.qk_norm_all else head_dim
            self.q_norm = rms_norm(q_width, args.rms_norm_eps, norm_offset)
            self.k_norm = rms_norm(k_width, args.rms_norm_eps, norm_offset)
        if rope is not False:  # overrides: dims (partial rotary), base, scaling
            options = {"dims": head_dim, "base": args.rope_theta, "scaling": args.rope_scaling,
                       **(rope if isinstance(rope, dict) else {})}
            self.rope = get_rope(options.pop("dims"),
                                 max_position_embeddings=args.max_position_embeddings, **options)

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        offset = cache.offset if cache is not None else 0
        if x.shape[1] == 1 and "qkv_proj" in self and "q_norm" not in self and "rope" in self:
            q, k, v = self._one_position_qkv(x, offset)
        else:
            q, k, v = project(self, "qkv_proj", x)
            if self.qk_norm_all:
                q, k = self.q_norm(q), self.k_norm(k)
            q = split_heads(q, self.n_heads)  # (B, heads, L, head_dim)
            k = split_heads(k, self.n_kv_heads)
            v = split_heads(v, self.n_kv_heads)
            if "q_norm" in self and not self.qk_norm_all:
                q, k = self.q_norm(q), self.k_norm(k)
            if "rope" in self:
                q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        out = attention(q, k, v, scale=self.scale, mask=mask, cache=cache, softcap=self.softcap)
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


NORM_PLACEMENTS = {
    "pre": ("input_layernorm", "post_attention_layernorm"),
    "sandwich": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                 "post_feedforward_layernorm"),
    "post": ("post_attention_layernorm", "post_feedforward_layernorm"),
}
"""The RMSNorms of a :class:`DecoderLayer` for each ``norm_placement`` (checkpoint names)."""


class DecoderLayer(nn.Module):
    """A residual block: attention then an MLP, with RMSNorms where ``norm_placement`` puts them
    (:data:`NORM_PLACEMENTS`; ``"pre"``: before each, ``"sandwich"``: before and after each,
    ``"post"``: after each, on the branch before the residual sum). ``mlp`` builds the MLP
    (default: a gated MLP with ``activation``); ``sliding_window`` is kept on the layer for
    :class:`Decoder` (its mask and cache)."""

    def __init__(self, args: DecoderArgs, *, mlp_bias: bool = False, activation: str = "silu",
                 norm_placement: str = "pre", norm_offset: float = 0.0,
                 mlp: Callable[[DecoderArgs], nn.Module] | None = None,
                 sliding_window: int | None = None, residual_scale: float | None = None,
                 **attention_options: Any):
        super().__init__()
        if norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"norm_placement must be one of {sorted(NORM_PLACEMENTS)}, "
                             f"got {norm_placement!r}")
        self.norm_placement, self.sliding_window = norm_placement, sliding_window
        self.residual_scale = residual_scale
        self.self_attn = Attention(args, norm_offset=norm_offset, **attention_options)
        self.mlp = (mlp(args) if mlp is not None else
                    SwiGLU(args.hidden_size, args.intermediate_size, mlp_bias, activation))
        for name in NORM_PLACEMENTS[norm_placement]:
            setattr(self, name, rms_norm(args.hidden_size, args.rms_norm_eps, norm_offset))

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        scale = self.residual_scale
        branch = (lambda y: y) if scale is None else (lambda y: y * scale)
        if self.norm_placement == "pre":
            h = x + branch(self.self_attn(self.input_layernorm(x), mask, cache))
            return h + branch(self.mlp(self.post_attention_layernorm(h)))
        if self.norm_placement == "sandwich":
            attn = self.self_attn(self.input_layernorm(x), mask, cache)
            h = x + branch(self.post_attention_layernorm(attn))
            mlp = self.mlp(self.pre_feedforward_layernorm(h))
            return h + branch(self.post_feedforward_layernorm(mlp))
        h = x + branch(self.post_attention_layernorm(self.self_attn(x, mask, cache)))
        return h + branch(self.post_feedforward_layernorm(self.mlp(h)))


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
    """The decoder stack: token embedding (times ``embed_scale``, if given), :class:`DecoderLayer`
    s, final RMSNorm. ``per_layer`` (one dict per layer) overrides the shared ``options`` layer
    by layer; a layer with a ``sliding_window`` attends to that many positions (with or without
    a cache), each distinct window getting its mask once per forward pass."""

    def __init__(self, args: DecoderArgs, *, sliding_window: int | None = None,
                 embed_scale: float | None = None,
                 per_layer: Sequence[dict[str, Any]] | None = None, **options: Any):
        super().__init__()
        n = args.num_hidden_layers
        if per_layer is not None and len(per_layer) != n:
            raise ValueError(f"per_layer must have one entry per layer ({n}), "
                             f"got {len(per_layer)}")
        self.embed_scale = embed_scale
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        shared = {"sliding_window": sliding_window, **options}
        self.layers = [DecoderLayer(args, **{**shared, **(per_layer[i] if per_layer else {})})
                       for i in range(n)]
        self.norm = rms_norm(args.hidden_size, args.rms_norm_eps,
                             options.get("norm_offset", 0.0))

    @property
    def sliding_window(self) -> int | None:
        """The first layer's window (None: full attention); each layer keeps its own."""
        return self.layers[0].sliding_window if self.layers else None

    def make_cache(self) -> list:
        """One cache per layer: a window of the layer's ``sliding_window`` positions, or all."""
        return [KVCache() if layer.sliding_window is None
                else RotatingKVCache(layer.sliding_window) for layer in self.layers]

    def __call__(self, inputs: mx.array, cache: list | None = None) -> mx.array:
        cache = check_cache(cache, len(self.layers))
        h = self.embed_tokens(inputs)
        # token ids embedded here, not the hidden states of an earlier pipeline stage
        if self.embed_scale is not None and mx.issubdtype(inputs.dtype, mx.integer):
            h = h * mx.array(self.embed_scale, h.dtype)
        masks: dict[int | None, Any] = {}
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            window = layer.sliding_window
            if window not in masks:
                source = layer_cache
                if source is None and window is not None:  # no cache: still the window
                    source = RotatingKVCache(window)
                masks[window] = mask_for(source, h.shape[1])
            h = layer(h, masks[window], layer_cache)
        return self.norm(h)


class DecoderLM(CausalLM):
    """A :class:`Decoder` and its head (:class:`~mlx_zoo.CausalLM`), with ``sanitize``,
    ``make_cache`` and ``shard``; a plugin's ``Model`` passes the options that differ (the
    module docstring lists them). ``logit_scale`` multiplies the final logits (Granite's
    ``1 / logits_scaling``), ``logit_softcap`` then soft-caps them: ``cap * tanh(logits / cap)``.
    """

    def __init__(self, args: DecoderArgs, *, logit_softcap: float | None = None,
                 logit_scale: float | None = None, **options: Any):
        super().__init__(args, Decoder(args, **options))
        self.logit_softcap, self.logit_scale = logit_softcap, logit_scale

    def __call__(self, inputs: mx.array, cache: list | None = None) -> mx.array:
        return self.finish_logits(super().__call__(inputs, cache))

    def finish_logits(self, logits: mx.array) -> mx.array:
        """What follows the head: ``logit_scale``, then ``logit_softcap`` (a pipeline's last
        stage, :class:`~mlx_zoo.PipelineLM`, applies it to the head's output too)."""
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        cap = self.logit_softcap
        return logits if cap is None else mx.tanh(logits / cap) * cap

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Drop rotary ``inv_freq`` buffers (RoPE is recomputed) and, for tied embeddings, the
        ``lm_head`` copy some checkpoints still carry; stack per-expert tensors
        (:func:`stack_experts`)."""
        weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return stack_experts(weights)

    def make_cache(self) -> list:
        """The decoder's caches (:meth:`Decoder.make_cache`)."""
        return self.model.make_cache()

    def shard(self, group: mx.distributed.Group | None = None) -> None:
        """Megatron-style tensor parallelism over ``group`` (Shoeybi et al. 2019,
        https://arxiv.org/abs/1909.08053): q/k/v and gate/up are split by output features
        ("all-to-sharded", each rank computes its own heads / hidden units), o_proj and down_proj
        by input features ("sharded-to-all", results summed across ranks), so each block needs
        one all-reduce after attention and one after the MLP. Head counts shrink accordingly.
        Fused projections are split first: each part is sharded by its own heads. An MLP with
        its own ``shard`` (:class:`SparseMoE`) shards itself."""
        if any(layer.self_attn.qk_norm_all for layer in self.layers):
            raise ShardingError(f"{type(self).__name__} normalises queries and keys over all "
                                "heads at once (qk_norm='all'): its heads cannot be split")
        unfuse_projections(self)
        group = group or mx.distributed.init()
        for layer in self.layers:
            shard_attention(layer.self_attn, group)
            if isinstance(layer.mlp, Shards):  # a block that splits itself (SparseMoE)
                layer.mlp.shard(group)
            else:
                shard_mlp(layer.mlp, group)


class SparseMoE(nn.Module):
    """A mixture of experts in place of the dense MLP (Shazeer et al. 2017,
    https://arxiv.org/abs/1701.06538; Mixtral, https://arxiv.org/abs/2401.04088): a linear router
    (``gate``, one logit per expert), softmax over the experts in float32, the ``top_k`` experts
    of each token (their probabilities renormalised to sum to one when ``norm_topk_prob``), and
    the weighted sum of their gated MLPs, stacked in one :class:`~mlx_zoo.SwitchGLU`
    (``switch_mlp``; checkpoints' per-expert tensors are stacked by :func:`stack_experts`).
    ``shared_width``: a dense gated MLP every token also goes through (``shared_expert``)."""

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, *,
                 norm_topk_prob: bool = True, shared_width: int | None = None,
                 activation: str = "silu"):
        super().__init__()
        self.top_k, self.norm_topk_prob = top_k, norm_topk_prob
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.switch_mlp = SwitchGLU(dim, hidden, num_experts,
                                    activation=nn.silu if activation == "silu" else nn.gelu_approx)
        if shared_width:
            self.shared_expert = SwiGLU(dim, shared_width, activation=activation)
        self.sharding_group = None  # set by shard(): sum the ranks' partial outputs

    def shard(self, group: mx.distributed.Group) -> None:
        """Split every expert's (and the shared expert's) hidden units across ``group``, the
        router replicated; one all-reduce of the summed output per layer."""
        shard_experts([self.switch_mlp] + ([self.shared_expert] if "shared_expert" in self
                                           else []), group)
        self.sharding_group = group

    def __call__(self, x: mx.array) -> mx.array:
        probs = mx.softmax(self.gate(x).astype(mx.float32), axis=-1, precise=True)
        k = self.top_k
        experts = mx.stop_gradient(mx.argpartition(-probs, kth=k - 1, axis=-1)[..., :k])
        weights = mx.take_along_axis(probs, experts, axis=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(axis=-1, keepdims=True)
        y = (self.switch_mlp(x, experts) * weights[..., None].astype(x.dtype)).sum(axis=-2)
        if "shared_expert" in self:
            y = y + self.shared_expert(x)
        if self.sharding_group is not None:
            y = mx.distributed.all_sum(y, group=self.sharding_group)
        return y


EXPERT_TENSOR = re.compile(r"^(?P<prefix>.+)\.experts\.(?P<expert>\d+)\.(?P<proj>\w+)\."
                           r"(?P<part>weight|scales|biases|bias)$")
"""A per-expert checkpoint tensor: ``{prefix}.experts.{e}.{proj}.{part}``."""


def stack_experts(weights: dict[str, mx.array],
                  names: dict[str, str] | None = None) -> dict[str, mx.array]:
    """Per-expert checkpoint tensors ``{prefix}.experts.{e}.{proj}.{part}`` (e = 0 .. E-1) ->
    one stacked ``{prefix}.switch_mlp.{proj}.{part}`` of a :class:`SparseMoE`, ``names``
    renaming projections (Mixtral's ``{"w1": "gate_proj", "w3": "up_proj", "w2":
    "down_proj"}``); and transformers' in-memory layout, should a file hold it
    (``{prefix}.experts.gate_up_proj`` ``(E, 2I, H)``, gate rows first, and
    ``{prefix}.experts.down_proj``). An incomplete set of experts is left as it is, for the
    loader's strict check to report."""
    names = names or {}
    groups: dict[tuple[str, str, str], dict[int, str]] = {}
    out = {}
    for key, value in weights.items():
        match = EXPERT_TENSOR.match(key)
        if match:
            proj = names.get(match["proj"], match["proj"])
            groups.setdefault((match["prefix"], proj, match["part"]), {})[
                int(match["expert"])] = key
        elif key.endswith(".experts.gate_up_proj"):
            prefix = key.removesuffix(".experts.gate_up_proj")
            gate, up = mx.split(value, 2, axis=1)
            out[f"{prefix}.switch_mlp.gate_proj.weight"] = gate
            out[f"{prefix}.switch_mlp.up_proj.weight"] = up
        elif key.endswith(".experts.down_proj"):
            out[key.removesuffix(".experts.down_proj") + ".switch_mlp.down_proj.weight"] = value
        else:
            out[key] = value
    experts: dict[str, int] = {}  # a layer's expert count: its largest set of projections
    for (prefix, _, _), by_expert in groups.items():
        experts[prefix] = max(experts.get(prefix, 0), len(by_expert))
    for (prefix, proj, part), by_expert in groups.items():
        if sorted(by_expert) == list(range(experts[prefix])):
            out[f"{prefix}.switch_mlp.{proj}.{part}"] = mx.stack(
                [weights[by_expert[e]] for e in range(len(by_expert))])
        else:
            out.update({key: weights[key] for key in by_expert.values()})
    return out


def layer_windows(layer_types: Sequence[str] | None, sliding_window: int | None,
                  layers: int) -> list[int | None]:
    """Each layer's attention window from transformers' ``layer_types`` (``"sliding_attention"``:
    ``sliding_window``; anything else, or no ``layer_types``: None, full attention)."""
    types = list(layer_types) if layer_types is not None else ["full_attention"] * layers
    return [sliding_window if kind == "sliding_attention" else None for kind in types]


LAYER_TYPES = ("full_attention", "sliding_attention")
"""The attention kinds of transformers' ``layer_types`` that :func:`layer_windows` reads."""


def check_layer_types(layer_types: Sequence[str] | None, layers: int,
                      path: Any = None) -> None:
    """Raise :class:`~mlx_zoo.ConfigError` (key ``layer_types``) unless ``layer_types`` is None
    or names one of :data:`LAYER_TYPES` for each of the ``layers`` layers."""
    if layer_types is None:
        return
    if len(layer_types) != layers:
        raise ConfigError(path, f"{len(layer_types)} entries; expected one per layer "
                          f"(num_hidden_layers = {layers})", key="layer_types")
    for i, kind in enumerate(layer_types):
        if kind not in LAYER_TYPES:
            raise ConfigError(path, f"{kind!r}; expected one of {', '.join(LAYER_TYPES)}",
                              key=f"layer_types[{i}]")
