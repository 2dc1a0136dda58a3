"""The building blocks all three HunYuan formats share: config base, attention with query/key
RMSNorm and Cross-Layer Attention, SwiGLU MLP, the mixture of experts, the decoder stack, and the
checkpoint sanitizer.

The formats differ only in *policy* -- which layers compute their own keys/values, and which MLP
each layer gets -- so each format's config dataclass answers two questions,
:meth:`HunYuanArgs.computes_kv` and :meth:`HunYuanArgs.mlp_plan`, and the modules below are
built from the answers. Layer anatomy (pre-norm residual blocks, as in Llama)::

    x ─ input_layernorm ─ attention ─(+x)─► h ─ post_attention_layernorm ─ mlp|moe ─(+h)─► out

Attention, for ``L`` new tokens at positions ``offset .. offset + L - 1``::

    q = query_layernorm(rope(q_proj(x)))            # RMSNorm per head, *after* RoPE
    k = key_layernorm(rope(k_proj(x)));  v = v_proj(x)
    k, v = cache.update_and_fetch(k, v)             # all positions so far
    out = o_proj(softmax(q k^T / sqrt(head_dim) + causal mask) v)

Cross-Layer Attention (CLA; Brandon et al. 2024, https://arxiv.org/abs/2405.12981, used with
GQA by Hunyuan-Large to compress the KV cache, https://arxiv.org/abs/2411.02265): layers are
grouped in runs of ``cla_share_factor``; the first layer of a run projects keys/values, the
others have no ``k_proj``/``v_proj`` and attend to the first layer's keys/values. What is shared
is the *rotated, not yet normalised* key (Tencent's code shares the raw projection and each layer
applies the same RoPE and then its *own* ``key_layernorm``). So with CLA the cache of a run
stores the rotated keys before normalisation, once for the whole run, and every layer of the run
applies its own ``key_layernorm`` to what it fetches (one RMSNorm over the cached keys per layer
and step: the price of storing them once); without CLA keys are normalised before they are
cached, as usual. The model's cache list therefore has one entry per run: a CLA model stores
keys/values for only ``1 / cla_share_factor`` of its layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import mlx.core as mx
import mlx.nn as nn

from mlx_zoo import (
    BaseModelArgs,
    CausalLM,
    ConfigError,
    Divides,
    GenerationArgumentError,
    KVCache,
    PositiveFloat,
    PositiveInt,
    QuantizedKVCache,
    RopeScaling,
    SwiGLU,
    SwitchGLU,
    attention,
    get_rope,
    mask_for,
    merge_heads,
    project,
    shard_attention,
    shard_experts,
    shard_mlp,
    split_heads,
    unfuse_projections,
)

from .rope import NTK_ALPHA, NTKAlphaRoPE, rope_type_for

__all__ = [
    "Attention", "DecoderLayer", "HunYuanArgs", "HunYuanForCausalLM", "HunYuanModel", "MLPPlan",
    "MoE", "MoEPlan", "Router", "per_layer", "sanitize_weights",
]

EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
QUANTIZED_PARTS = ("weight", "scales", "biases", "bias")  # a linear's tensors, quantized or not

KeysValues = tuple[Any, Any]
"""Keys and values as fetched from a cache (arrays, or quantized tuples), handed between the
layers of a CLA run."""


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MoEPlan:
    """How one layer's mixture of experts is built and routed."""

    num_experts: int  # routed experts (stacked into one SwitchGLU)
    top_k: int  # experts each token is sent to
    expert_width: int  # hidden width of each expert's SwiGLU
    shared_width: int  # width of the always-on shared SwiGLU added to the experts' sum; 0: none
    renormalize: bool  # divide the top-k routing probabilities by their sum


MLPPlan = int | MoEPlan
"""A layer's MLP: a dense SwiGLU of that hidden width, or a mixture of experts."""


def per_layer(value: Any, layer: int) -> Any:
    """A config value that is either one value for every layer or a list with one per layer."""
    return value[layer] if isinstance(value, list) else value


@dataclass
class HunYuanArgs(BaseModelArgs):
    """Fields every HunYuan format has (the format modules document their own additions).

    Shapes: attention has ``num_attention_heads`` query heads and ``num_key_value_heads`` key/value
    heads (grouped-query attention) of ``head_dim`` features each. Counts and widths are
    positive (:data:`PositiveInt`); without a ``head_dim`` the heads must divide ``hidden_size``.
    """

    model_type: str
    vocab_size: PositiveInt
    hidden_size: PositiveInt  # width of the residual stream
    # width of the dense SwiGLU MLP (and, by format, experts/shared MLP)
    intermediate_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: Annotated[PositiveInt, Divides(
        "hidden_size", unless_given=("head_dim", "attention_head_dim"))]
    # < num_attention_heads: grouped-query attention
    num_key_value_heads: Annotated[PositiveInt, Divides("num_attention_heads")] | None = None
    # per-head width; default hidden_size // num_attention_heads
    head_dim: PositiveInt | None = None
    rms_norm_eps: PositiveFloat = 1e-5  # epsilon inside every RMSNorm's square root
    rope_theta: PositiveFloat = 10000.0  # RoPE base theta: inv_freq_i = theta ** (-2i / head_dim)
    # RoPE scaling; HunYuan uses {"type": "dynamic", "alpha": a}: NTK-alpha (see mlx_hunyuan.rope)
    rope_scaling: RopeScaling | None = None
    # context length; only factor-based "dynamic" RoPE reads it
    max_position_embeddings: PositiveInt = 2048
    attention_bias: bool = False  # q/k/v/o projections carry a bias
    # RMSNorm over each query/key head after RoPE ("query_layernorm"/"key_layernorm"); bounds
    # the attention logits (QK-norm, Dehghani et al. 2023, https://arxiv.org/abs/2302.05442)
    use_qk_norm: bool = True
    tie_word_embeddings: bool = False  # logits through the transposed embedding; no lm_head

    PER_LAYER_FIELDS: ClassVar[tuple[str, ...]] = ()
    """Fields that config.json may give as a list with one value per layer."""
    rope_variants: ClassVar[dict[str, type]] = {NTK_ALPHA: NTKAlphaRoPE}
    """HunYuan's own RoPE variant, passed to :func:`mlx_zoo.get_rope` by :class:`Attention`."""

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.default_head_dim()

    def default_head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self, path: Path | str | None = None) -> None:
        """Cross-field checks (after the core's, :meth:`mlx_zoo.BaseModelArgs.validate`), with
        the file and key named in the error: per-layer lists have one entry per layer."""
        super().validate(path)
        for name in self.PER_LAYER_FIELDS:
            value = getattr(self, name)
            if isinstance(value, list) and len(value) != self.num_hidden_layers:
                raise ConfigError(path, f"a per-layer list needs num_hidden_layers = "
                                  f"{self.num_hidden_layers} entries, got {len(value)}", key=name)

    def to_dict(self) -> dict[str, Any]:
        """config.json as saved: the core's form, plus ``rope_scaling["type"]`` (the key
        HunYuan's own configs use, and the one mlx-lm's HunYuan models require)."""
        config = super().to_dict()
        if config.get("rope_scaling"):
            config["rope_scaling"] = {**config["rope_scaling"],
                                      "type": config["rope_scaling"]["rope_type"]}
        return config

    # -- the policy the formats differ in (overridden by the format modules) -------------------

    def computes_kv(self, layer: int) -> bool:
        """Whether ``layer`` projects its own keys/values (False: it reuses an earlier layer's)."""
        return True

    def mlp_plan(self, layer: int) -> MLPPlan:
        """The MLP of ``layer``: a dense SwiGLU width or a :class:`MoEPlan`."""
        return self.intermediate_size

    # -- derived ---------------------------------------------------------------------------------

    @property
    def rope_type(self) -> str | None:
        """RoPE registry key chosen from ``rope_scaling`` (``ntk_alpha`` when it has an alpha)."""
        return rope_type_for(self.rope_scaling)

    @property
    def shares_kv(self) -> bool:
        """Whether any layer reuses another's keys/values (Cross-Layer Attention)."""
        return not all(self.computes_kv(i) for i in range(self.num_hidden_layers))


# -- attention ---------------------------------------------------------------------------------


def _dequantize(keys: Any, values: Any, cache: Any) -> tuple[mx.array, mx.array]:
    if not isinstance(cache, QuantizedKVCache):
        return keys, values
    group_size, bits = cache.group_size, cache.bits
    return (mx.dequantize(*keys, group_size=group_size, bits=bits),
            mx.dequantize(*values, group_size=group_size, bits=bits))


class Attention(nn.Module):
    """Grouped-query attention with RoPE, optional query/key RMSNorm after RoPE, and CLA.

    Called with ``shared_kv=None`` on a layer that computes keys/values, with the keys/values
    returned by the first layer of its CLA run otherwise. Returns the output and the keys/values
    for the following layers of the run.

    q/k/v read the same input: :func:`mlx_zoo.fuse_projections` may make them one ``qkv_proj``
    matmul. CLA layers that reuse keys/values have no ``k_proj``/``v_proj``: their group is
    incomplete, so it stays as it is and they project queries only.
    """

    fusable_projections: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj")}

    def __init__(self, args: HunYuanArgs, layer: int):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.scale = head_dim**-0.5
        self.computes_kv = args.computes_kv(layer)
        bias = args.attention_bias
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=bias)
        if self.computes_kv:
            self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=bias)
            self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=bias)
        self.use_qk_norm = args.use_qk_norm
        if self.use_qk_norm:
            self.query_layernorm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
            self.key_layernorm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
        # With CLA the shared (and cached) keys are not yet normalised: each layer of a run
        # applies its own key_layernorm after fetching them (see the module docstring).
        self.normalizes_fetched_keys = self.use_qk_norm and args.shares_kv
        self.rope = get_rope(head_dim, base=args.rope_theta, scaling=args.rope_scaling,
                             max_position_embeddings=args.max_position_embeddings,
                             rope_type=args.rope_type, variants=args.rope_variants)

    def _own_keys_values(self, keys: mx.array, values: mx.array, offset: int,
                         cache: Any) -> KeysValues:
        """Keys/values from this layer's projections: rotated (and normalised unless CLA
        normalises what is fetched), cached, fetched."""
        keys = self.rope(split_heads(keys, self.n_kv_heads), offset=offset)
        values = split_heads(values, self.n_kv_heads)
        if self.use_qk_norm and not self.normalizes_fetched_keys:
            keys = self.key_layernorm(keys)
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)
        return keys, values

    def __call__(self, x: mx.array, mask: Any, offset: int, cache: Any = None,
                 shared_kv: KeysValues | None = None) -> tuple[mx.array, KeysValues]:
        if shared_kv is None:  # first layer of a CLA run (or no CLA): project, cache, fetch
            queries, keys, values = project(self, "qkv_proj", x)
            shared_kv = self._own_keys_values(keys, values, offset, cache)
        else:  # a later layer of a CLA run: queries only
            queries = self.q_proj(x)
        # queries: split into heads, rotate at their positions, then normalise
        queries = self.rope(split_heads(queries, self.n_heads), offset=offset)
        if self.use_qk_norm:
            queries = self.query_layernorm(queries)
        keys, values = shared_kv
        if self.normalizes_fetched_keys:
            keys, values = _dequantize(keys, values, cache)
            keys = self.key_layernorm(keys)
            cache = None  # plain arrays from here on, whatever the cache stores
        out = attention(queries, keys, values, scale=self.scale, mask=mask, cache=cache)
        return self.o_proj(merge_heads(out)), shared_kv


# -- MLPs --------------------------------------------------------------------------------------


class Router(nn.Module):
    """The expert router, ``wg`` (checkpoint name ``mlp.gate.wg``): one logit per expert."""

    def __init__(self, dim: int, num_experts: int):
        super().__init__()
        self.wg = nn.Linear(dim, num_experts, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        # In float32, as the references route (their wg is float32): a routing decision flips
        # on small differences, so bf16 rounding here would change which experts run.
        return self.wg(x.astype(mx.float32))


class MoE(nn.Module):
    """Mixture of experts: softmax router, top-k experts per token (stacked in one
    :class:`mlx_zoo.SwitchGLU`), weighted sum, plus the shared MLP every token goes through
    (``use_mixed_mlp_moe``; the "shared expert" of the Hunyuan-Large report)."""

    def __init__(self, dim: int, plan: MoEPlan):
        super().__init__()
        self.top_k = plan.top_k
        self.renormalize = plan.renormalize
        self.gate = Router(dim, plan.num_experts)
        self.switch_mlp = SwitchGLU(dim, plan.expert_width, plan.num_experts)
        if plan.shared_width:
            self.shared_mlp = SwiGLU(dim, plan.shared_width)
        self.sharding_group = None  # set by shard(): sum the ranks' partial outputs

    def shard(self, group: mx.distributed.Group) -> None:
        """Split every expert's and the shared MLP's hidden units across ``group`` (router
        replicated, so all ranks route alike); each rank's output is a partial sum, added up
        across ranks with one all-reduce per layer."""
        shard_experts([self.switch_mlp] + ([self.shared_mlp] if "shared_mlp" in self else []),
                      group)
        self.sharding_group = group

    def __call__(self, x: mx.array) -> mx.array:
        # 1. router probabilities over all experts; 2. the top_k experts of each token
        probs = mx.softmax(self.gate(x), axis=-1, precise=True)
        experts = mx.stop_gradient(mx.argpartition(-probs, kth=self.top_k - 1, axis=-1))
        experts = experts[..., :self.top_k]
        weights = mx.take_along_axis(probs, experts, axis=-1)
        # 3. optionally rescale the chosen probabilities to sum to one
        if self.renormalize:
            weights = weights / weights.sum(axis=-1, keepdims=True)
        # 4. each chosen expert's output, weighted and summed; 5. plus the shared MLP
        y = (self.switch_mlp(x, experts) * weights[..., None]).sum(axis=-2).astype(x.dtype)
        if "shared_mlp" in self:
            y = y + self.shared_mlp(x)
        if self.sharding_group is not None:
            y = mx.distributed.all_sum(y, group=self.sharding_group)
        return y


# -- the decoder -------------------------------------------------------------------------------


class DecoderLayer(nn.Module):
    """One pre-norm residual block: attention (which hands on the keys/values of its CLA run),
    then a dense SwiGLU or a mixture of experts."""

    def __init__(self, args: HunYuanArgs, layer: int):
        super().__init__()
        self.self_attn = Attention(args, layer)
        plan = args.mlp_plan(layer)
        if isinstance(plan, MoEPlan):
            self.mlp = MoE(args.hidden_size, plan)
        else:
            self.mlp = SwiGLU(args.hidden_size, plan)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Any, offset: int, cache: Any,
                 shared_kv: KeysValues | None) -> tuple[mx.array, KeysValues]:
        # attention sublayer (pre-norm, residual); hands on the keys/values for its CLA run
        r, shared_kv = self.self_attn(self.input_layernorm(x), mask, offset, cache, shared_kv)
        h = x + r
        # MLP sublayer: dense SwiGLU or mixture of experts (pre-norm, residual)
        return h + self.mlp(self.post_attention_layernorm(h)), shared_kv


class HunYuanModel(nn.Module):
    """Embedding -> decoder layers -> final RMSNorm."""

    def __init__(self, args: HunYuanArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [DecoderLayer(args, i) for i in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        # cache_slot[i]: the entry of the cache list holding layer i's keys/values -- one entry
        # per layer that computes them, shared by the CLA layers that follow it.
        owners = [i for i in range(args.num_hidden_layers) if args.computes_kv(i)]
        self.cache_slot = [sum(1 for o in owners if o <= i) - 1
                           for i in range(args.num_hidden_layers)]
        self.num_cache_slots = len(owners)

    def __call__(self, inputs: mx.array, cache: list | None = None) -> mx.array:
        h = self.embed_tokens(inputs)
        if cache is not None and (not isinstance(cache, (list, tuple))
                                  or len(cache) != self.num_cache_slots):
            got = (f"{len(cache)} entries" if isinstance(cache, (list, tuple))
                   else f"a {type(cache).__name__}")
            raise GenerationArgumentError(
                f"expected a cache list of {self.num_cache_slots} entries (one per layer that "
                f"computes keys/values; model.make_cache() builds it), got {got}")
        first = cache[0] if cache else None
        # Every layer sees the same positions and the same mask; both are taken before any
        # cache is updated.
        offset = first.offset if first is not None else 0
        mask = mask_for(first, h.shape[1])
        shared_kv = None
        for layer, slot in zip(self.layers, self.cache_slot, strict=True):
            if layer.self_attn.computes_kv:
                shared_kv = None  # a new CLA run (or no CLA): this layer projects its own
            layer_cache = cache[slot] if cache else None
            h, shared_kv = layer(h, mask, offset, layer_cache, shared_kv)
        return self.norm(h)


# -- checkpoint tensors ------------------------------------------------------------------------


def sanitize_weights(weights: dict[str, mx.array], args: HunYuanArgs) -> dict[str, mx.array]:
    """1. drop rotary ``inv_freq`` buffers (RoPE is recomputed) and, with tied embeddings, an
    ``lm_head`` copy; 2. split fused projections (Tencent's ``qkv_proj`` and
    ``gate_and_up_proj``, transformers' fused ``experts.gate_up_proj``); 3. stack per-expert
    weights ``mlp.experts.{e}.*`` into ``mlp.switch_mlp.*`` for the gathered matmul."""
    weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
    if args.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    weights = _split_fused_qkv(weights, args)
    weights = _split_fused_gate_up(weights)
    weights = _split_fused_expert_tensors(weights)
    return _stack_experts(weights, args)


def _split_fused_qkv(weights: dict[str, mx.array], args: HunYuanArgs) -> dict[str, mx.array]:
    """Tencent's fused ``self_attn.qkv_proj``: output features ordered by key/value head, each
    holding its ``groups`` query heads, then its key head, then its value head
    (``groups = num_attention_heads / num_key_value_heads``)."""
    groups = args.num_attention_heads // args.num_key_value_heads
    out = {}
    for name, value in weights.items():
        if ".qkv_proj." not in name:
            out[name] = value
            continue
        grouped = value.reshape(args.num_key_value_heads, groups + 2, -1, *value.shape[1:])
        parts = {"q_proj": grouped[:, :groups], "k_proj": grouped[:, groups:groups + 1],
                 "v_proj": grouped[:, groups + 1:]}
        for proj, part in parts.items():
            out[name.replace("qkv_proj", proj)] = part.reshape(-1, *value.shape[1:])
    return out


def _split_fused_gate_up(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Tencent's fused ``gate_and_up_proj``: the *up* projection's rows first, then the gate's
    (its forward is ``down(x1 * silu(x2))`` for the two halves ``x1, x2``)."""
    out = {}
    for name, value in weights.items():
        if ".gate_and_up_proj." not in name:
            out[name] = value
            continue
        up, gate = mx.split(value, 2, axis=0)
        out[name.replace("gate_and_up_proj", "up_proj")] = up
        out[name.replace("gate_and_up_proj", "gate_proj")] = gate
    return out


def _split_fused_expert_tensors(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """transformers' in-memory expert layout, ``mlp.experts.gate_up_proj`` ``(E, 2I, H)`` (gate
    rows first) and ``mlp.experts.down_proj`` ``(E, H, I)``, in case a checkpoint was written
    without transformers' conversion back to per-expert tensors."""
    out = {}
    for name, value in weights.items():
        if name.endswith(".mlp.experts.gate_up_proj"):
            gate, up = mx.split(value, 2, axis=1)
            prefix = name.removesuffix("experts.gate_up_proj")
            out[prefix + "switch_mlp.gate_proj.weight"] = gate
            out[prefix + "switch_mlp.up_proj.weight"] = up
        elif name.endswith(".mlp.experts.down_proj"):
            out[name.removesuffix("experts.down_proj") + "switch_mlp.down_proj.weight"] = value
        else:
            out[name] = value
    return out


def _stack_experts(weights: dict[str, mx.array], args: HunYuanArgs) -> dict[str, mx.array]:
    """``model.layers.{l}.mlp.experts.{e}.{proj}.{part}`` for e = 0 .. E-1 -> one stacked
    ``model.layers.{l}.mlp.switch_mlp.{proj}.{part}``. Incomplete sets are left as they are, for
    the loader's strict check to report."""
    for layer in range(args.num_hidden_layers):
        plan = args.mlp_plan(layer)
        if not isinstance(plan, MoEPlan):
            continue
        prefix = f"model.layers.{layer}.mlp"
        for proj in EXPERT_PROJECTIONS:
            for part in QUANTIZED_PARTS:
                names = [f"{prefix}.experts.{e}.{proj}.{part}" for e in range(plan.num_experts)]
                if all(n in weights for n in names):
                    weights[f"{prefix}.switch_mlp.{proj}.{part}"] = mx.stack(
                        [weights.pop(n) for n in names])
    return weights


# -- the model ---------------------------------------------------------------------------------


class HunYuanForCausalLM(CausalLM):
    """The language model: :class:`HunYuanModel` and the output projection (``lm_head``, or the
    transposed embedding when ``tie_word_embeddings``). Base of each format's ``Model``."""

    def __init__(self, args: HunYuanArgs):
        super().__init__(args, HunYuanModel(args))

    def make_cache(self) -> list:
        """One :class:`~mlx_zoo.KVCache` per layer that computes keys/values. Without CLA that is
        every layer; with CLA the layers reusing a run's keys/values read their run's cache and
        store nothing of their own, so the list has ``num_layers / cla_share_factor`` entries."""
        return [KVCache() for _ in range(self.model.num_cache_slots)]

    def shard(self, group: mx.distributed.Group | None = None) -> None:
        """Megatron-style tensor parallelism over ``group`` (Shoeybi et al. 2019,
        https://arxiv.org/abs/1909.08053), in place: q/k/v and gate/up split by output features
        (each rank computes its own heads / hidden units), o_proj and down by input features
        (partial results summed across ranks): one all-reduce after attention and one after the
        MLP or mixture of experts. Query/key norms act per head and need no change; CLA layers
        reuse the keys/values of their rank's own heads. Needs head counts divisible by the
        group size. Fused projections are split first: each part is sharded by its own heads."""
        unfuse_projections(self)
        group = group or mx.distributed.init()
        for layer in self.layers:
            attn = layer.self_attn
            inputs = ("q_proj", "k_proj", "v_proj") if attn.computes_kv else ("q_proj",)
            shard_attention(attn, group, inputs=inputs)
            if isinstance(layer.mlp, MoE):
                layer.mlp.shard(group)
            else:
                shard_mlp(layer.mlp, group)

    def pipeline_boundaries(self) -> list[int]:
        """Layers a pipeline stage may start at (:mod:`mlx_zoo.pipeline`): those projecting
        their own keys/values, so that a CLA run and its shared cache stay on one rank."""
        return [i for i, layer in enumerate(self.model.layers) if layer.self_attn.computes_kv]

    def keep_layers(self, start: int, stop: int) -> None:
        """Keep layers ``start .. stop - 1`` (a pipeline stage; ``start`` a boundary) and renumber
        their cache slots from 0, so ``make_cache`` covers only their slots."""
        backbone = self.model
        slots = backbone.cache_slot[start:stop]
        backbone.layers = backbone.layers[start:stop]
        backbone.cache_slot = [slot - slots[0] for slot in slots]
        backbone.num_cache_slots = backbone.cache_slot[-1] + 1

    def quantize_predicate(self, path: str, module: nn.Module) -> bool:
        """Everything but the expert routers (``mlp.gate.wg``): they are small, and a routing
        decision flips on small errors, so they stay in full precision (the references even run
        them in float32)."""
        return not path.endswith("mlp.gate.wg")

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Map a checkpoint's tensors to this model's parameters (idempotent: a checkpoint
        written by :func:`mlx_zoo.save` passes through unchanged). See :func:`sanitize_weights`."""
        return sanitize_weights(weights, self.args)
