"""Building blocks shared by plugins: attention over any cache, and the mixture-of-experts
"switch" layers whose experts are stacked so that routing is one gathered matmul.

Plugins reach these through :mod:`mlx_zoo` rather than writing their own, so a fix or a faster
kernel here serves every architecture.
"""

from __future__ import annotations

import copy
import inspect
import math
import pickle
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import mlx.core as mx
import mlx.nn as nn

from .cache import Mask, QuantizedKVCache
from .errors import GenerationArgumentError
from .fusion import project


def attention(queries: mx.array, keys: Any, values: Any, *, scale: float, mask: Mask = None,
              cache: Any = None, softcap: float | None = None,
              sinks: mx.array | None = None) -> mx.array:
    """Scaled dot-product attention of ``(B, heads, Lq, D)`` queries over the keys/values
    returned by a cache; grouped-query attention needs no tiling of keys/values.

    ``mask`` is ``None``, ``"causal"`` or a boolean array (True = may attend) broadcastable to
    ``(B, heads, Lq, Lk)``. Keys/values from a :class:`~mlx_zoo.cache.QuantizedKVCache` are read
    with quantized matmuls.

    The score hooks, for the families whose attention is not plain softmax(q k^T * scale):

    * ``scale``: the factor on q k^T (``head_dim ** -0.5``, or a family's own, e.g. Gemma's
      ``query_pre_attn_scalar ** -0.5``);
    * ``softcap``: scores become ``softcap * tanh(scores / softcap)`` before the mask (Gemma 2's
      ``attn_logit_softcapping``);
    * ``sinks``: one learned logit per query head that joins every softmax as an extra column
      whose value is dropped (attention sinks, gpt-oss): ``(heads,)``.

    Plain attention and sinks run MLX's fused kernel; soft-capping and quantized keys/values
    compute the scores explicitly (:func:`explicit_attention`), on every cache alike.
    """
    quantized = isinstance(cache, QuantizedKVCache)
    if softcap is None and not quantized:
        if sinks is None:  # keep the call as before: MLX's kernel choice depends on its options
            return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale,
                                                        mask=mask)
        return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale,
                                                    mask=mask, sinks=sinks.astype(queries.dtype))
    return explicit_attention(queries, keys, values, scale=scale, mask=mask, softcap=softcap,
                              sinks=sinks,
                              quantized=(cache.group_size, cache.bits) if quantized else None)


def explicit_attention(queries: mx.array, keys: Any, values: Any, *, scale: float,
                       mask: Mask = None, softcap: float | None = None,
                       sinks: mx.array | None = None,
                       quantized: tuple[int, int] | None = None) -> mx.array:
    """:func:`attention` with the scores computed as arrays (what the fused kernel cannot do):
    queries are grouped by key/value head, ``(B, kv_heads, repeats, Lq, D)``, so that keys and
    values are read once per group; ``quantized = (group_size, bits)`` reads keys/values stored
    as ``(packed, scales, biases)`` with quantized matmuls. Masks as :func:`attention` takes
    them (a ``(B, 1 or heads, Lq, Lk)`` array is regrouped alike)."""
    batch, heads, n_q, dim = queries.shape
    kv_heads = (keys[0] if quantized else keys).shape[1]
    repeats = heads // kv_heads
    q = (queries * scale).reshape(batch, kv_heads, repeats, n_q, dim)
    if quantized:
        group_size, bits = quantized
        k = tuple(a[:, :, None] for a in keys)
        scores = mx.quantized_matmul(q, *k, transpose=True, group_size=group_size, bits=bits)
    else:
        scores = q @ keys[:, :, None].swapaxes(-1, -2)
    if softcap is not None:
        scores = mx.tanh(scores / softcap) * softcap
    n_k = scores.shape[-1]
    if isinstance(mask, str):
        mask = mx.arange(n_k - n_q, n_k)[:, None] >= mx.arange(n_k)[None]
    elif mask is not None and mask.ndim == 4:
        mask = (mask.reshape(batch, kv_heads, repeats, n_q, -1) if mask.shape[1] == heads > 1
                else mx.expand_dims(mask, 2))
    if mask is not None:
        scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
    if sinks is not None:
        sink = sinks.astype(scores.dtype).reshape(1, kv_heads, repeats, 1, 1)
        scores = mx.concatenate([mx.broadcast_to(sink, (*scores.shape[:-1], 1)), scores], -1)
    weights = mx.softmax(scores, axis=-1, precise=True)
    if sinks is not None:
        weights = weights[..., 1:]
    if quantized:
        v = tuple(a[:, :, None] for a in values)
        out = mx.quantized_matmul(weights, *v, transpose=False, group_size=group_size, bits=bits)
    else:
        out = weights.astype(values.dtype) @ values[:, :, None]
    return out.reshape(batch, heads, n_q, -1)


def mask_for(cache: Any, n: int) -> Mask:
    """The mask for ``n`` new queries: the cache's own (sliding window, chunks), else causal.

    Caches that follow mlx-lm's protocol -- mlx-zoo's, and mlx-lm's own (``KVCache``,
    ``BatchKVCache``, ... handed in by mlx-lm's generation code), whose ``make_mask`` requires
    the options -- are asked with ``make_mask(n, return_array=False, window_size=None)``; a
    cache whose ``make_mask`` takes only ``n`` is asked with ``n``."""
    if cache is None:
        return None if n == 1 else "causal"
    make_mask = cache.make_mask
    if _takes_mask_options(getattr(make_mask, "__func__", make_mask)):
        return make_mask(n, return_array=False, window_size=None)
    return make_mask(n)


_MASK_OPTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""make_mask function -> whether it takes mlx-lm's keyword options (decided once per function)."""


def _takes_mask_options(function: Any) -> bool:
    known = _MASK_OPTIONS.get(function)
    if known is None:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature: the plain form
            parameters = ()
        names = {p.name for p in parameters}
        known = ({"return_array", "window_size"} <= names
                 or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters))
        try:
            _MASK_OPTIONS[function] = known
        except TypeError:  # unhashable callable: decide again next time
            pass
    return known


# -- pieces every decoder-only transformer has --------------------------------------------------


def split_heads(x: mx.array, heads: int) -> mx.array:
    """``(B, L, heads * D)`` projections -> ``(B, heads, L, D)``, the layout attention takes.

    With one position (``L == 1``, every decode step) the two layouts order the elements alike,
    so one reshape does it: a decode step is host-bound on GPUs and each op costs host time."""
    batch, length, _ = x.shape
    if length == 1:
        return x.reshape(batch, heads, 1, -1)
    return x.reshape(batch, length, heads, -1).transpose(0, 2, 1, 3)


def merge_heads(x: mx.array) -> mx.array:
    """``(B, heads, L, D)`` attention output -> ``(B, L, heads * D)`` (one reshape when
    ``L == 1``, as in :func:`split_heads`)."""
    batch, _, length, _ = x.shape
    if length == 1:
        return x.reshape(batch, 1, -1)
    return x.transpose(0, 2, 1, 3).reshape(batch, length, -1)


class SwiGLU(nn.Module):
    """The gated MLP of Llama-style models: ``down(silu(gate(x)) * up(x))``
    (Shazeer 2020, "GLU Variants Improve Transformer", https://arxiv.org/abs/2002.05202).
    ``activation`` names the gate's activation in :data:`GATED_ACTIVATIONS`: ``"silu"``
    (SwiGLU) or ``"gelu_tanh"`` (GeGLU with the tanh approximation of GELU, Gemma's
    ``gelu_pytorch_tanh``); a name, so that the layer copies and pickles as plain data.

    ``gate_proj`` and ``up_proj`` read the same input: :func:`mlx_zoo.fuse_projections` may
    replace them by one ``gate_up_proj`` (:mod:`mlx_zoo.fusion`)."""

    fusable_projections: ClassVar[dict[str, tuple[str, ...]]] = {
        "gate_up_proj": ("gate_proj", "up_proj")}

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False, activation: str = "silu"):
        super().__init__()
        if activation not in GATED_ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(GATED_ACTIVATIONS)}, "
                             f"got {activation!r}")
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=bias)
        self.activation = activation

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = project(self, "gate_up_proj", x)
        return self.down_proj(GATED_ACTIVATIONS[getattr(self, "activation", "silu")](gate, up))


@partial(mx.compile, shapeless=True)
def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """``silu(gate) * up`` as one fused elementwise kernel: one op where ``nn.silu(gate) * up``
    is two (``nn.silu`` is itself compiled), with the same per-op rounding, so the same values.
    Decode steps on GPUs cost host time per op, and every SwiGLU MLP runs this once per layer."""
    return nn.silu(gate) * up


@partial(mx.compile, shapeless=True)
def geglu_tanh(gate: mx.array, up: mx.array) -> mx.array:
    """``gelu_tanh(gate) * up`` in one fused kernel (GeGLU, Gemma's MLPs), where
    ``gelu_tanh(x) = x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`` (``nn.gelu_approx``)."""
    return nn.gelu_approx(gate) * up


GATED_ACTIVATIONS: dict[str, Callable[[mx.array, mx.array], mx.array]] = {
    "silu": swiglu, "gelu_tanh": geglu_tanh}
"""``activation(gate, up)`` of a gated MLP by name (:class:`SwiGLU`'s ``activation``)."""


class OffsetRMSNorm(nn.Module):
    """RMSNorm whose scale is ``offset + weight``: ``x / rms(x) * (offset + weight)``, with the
    weight stored as a difference from ``offset`` (Gemma's norms, ``offset = 1``: a zero weight is
    the identity). One fused ``mx.fast.rms_norm``, as :class:`mlx.nn.RMSNorm`."""

    def __init__(self, dims: int, eps: float = 1e-6, offset: float = 1.0):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps, self.offset = eps, offset

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.offset + self["weight"], self.eps)


def rms_norm(dims: int, eps: float, offset: float = 0.0) -> nn.Module:
    """An RMSNorm over ``dims`` features: :class:`mlx.nn.RMSNorm` (scale = weight) when
    ``offset`` is 0, else :class:`OffsetRMSNorm` (scale = offset + weight)."""
    return nn.RMSNorm(dims, eps=eps) if offset == 0 else OffsetRMSNorm(dims, eps, offset)


# -- token ids at the model's door ---------------------------------------------------------------

_IDS_CHECKED: ContextVar[bool] = ContextVar("mlx_zoo_ids_checked", default=False)
"""True while :func:`checked_token_ids` is active: the caller vouches for its ids."""


@contextmanager
def checked_token_ids() -> Iterator[None]:
    """Within this block :class:`CausalLM` skips its own id check (:func:`guard_token_ids`): for
    callers that checked the ids already, as :func:`mlx_zoo.generate_step` does (the prompt once,
    each sampled id clamped on the device and checked on the ``.item()`` that hands it out), so
    that its decode loop pays nothing for the check."""
    token = _IDS_CHECKED.set(True)
    try:
        yield
    finally:
        _IDS_CHECKED.reset(token)


def guard_token_ids(inputs: Any, vocab_size: int) -> tuple[mx.array, mx.array | None]:
    """Make ``inputs`` safe to embed: MLX's embedding lookup (``weight[ids]``) does no bounds
    check, so an id >= ``vocab_size`` reads outside the table (a segfault, or plausible text from
    whatever memory follows) and a negative one wraps around.

    Returns ``(ids, invalid)``:

    * not an ``mx.array`` of an integer dtype: :class:`GenerationArgumentError` (static: no
      evaluation);
    * more than one id (a prompt or a prefill chunk): the ids are checked on the host -- one
      synchronisation per call, negligible next to the forward pass over a prompt -- and an id
      outside ``[0, vocab_size)`` raises :class:`GenerationArgumentError` naming its position
      and value; ``invalid`` is None;
    * a single id (a decode step): checking it on the host would stall the pipelined decode loop
      of any caller (the next step's graph is built before the current token is read), so it is
      clamped into the table on the device instead, lazily, and ``invalid`` (True where the id was
      out of range) is returned for the caller to poison the output with NaN: never a read
      outside the table, never a plausible answer for a wrong id;
    * inside :func:`checked_token_ids`, or while being traced by ``mx.compile`` (values unknown):
      the ids as given (checked by the caller) / clamped.
    """
    if not isinstance(inputs, mx.array):
        raise GenerationArgumentError(
            f"token ids must be an mx.array of integers, got {type(inputs).__name__}")
    if not mx.issubdtype(inputs.dtype, mx.integer):
        raise GenerationArgumentError(f"token ids must have an integer dtype, got {inputs.dtype}")
    if inputs.size == 0 or _IDS_CHECKED.get():
        return inputs, None
    invalid = inputs >= vocab_size
    if mx.issubdtype(inputs.dtype, mx.signedinteger):
        invalid = invalid | (inputs < 0)
    if inputs.size > 1:
        try:
            any_invalid = mx.any(invalid).item()
        except ValueError:  # inside mx.compile / vmap: no values to look at; clamp instead
            any_invalid = None
        if any_invalid is False:
            return inputs, None
        if any_invalid:
            flat = invalid.reshape(-1)
            position = int(mx.argmax(flat).item())
            value = int(inputs.reshape(-1)[position].item())
            where = (f"position {position}" if inputs.ndim <= 1 else
                     f"position {tuple(int(i) for i in _unravel(position, inputs.shape))}")
            raise GenerationArgumentError(
                f"token id {value} at {where} is outside the model's vocabulary: ids must be in "
                f"[0, {vocab_size})")
    return mx.clip(inputs, 0, vocab_size - 1).astype(inputs.dtype), invalid


def _unravel(index: int, shape: tuple[int, ...]) -> list[int]:
    coords = []
    for size in reversed(shape):
        index, rest = divmod(index, size)
        coords.append(rest)
    return coords[::-1]


class CausalLM(nn.Module):
    """The output end shared by decoder-only language models: ``self.model`` (a backbone with
    ``embed_tokens`` and ``layers``, returning final hidden states) followed by ``lm_head`` -- or,
    when ``args.tie_word_embeddings``, by the transposed input embedding (no ``lm_head`` weight).
    A plugin's ``Model`` derives from it and adds ``sanitize``, ``make_cache``, ``shard``."""

    def __init__(self, args: Any, backbone: nn.Module):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = backbone
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs: mx.array, cache: list | None = None) -> mx.array:
        """Logits ``(B, L, vocab)`` for token ids ``inputs`` ``(B, L)``. Ids outside
        ``[0, vocab_size)`` never reach the embedding lookup: see :func:`guard_token_ids` (a
        prompt raises :class:`~mlx_zoo.GenerationArgumentError`; a single out-of-range id gives
        NaN logits; inside :func:`checked_token_ids` the caller has checked them)."""
        inputs, invalid = guard_token_ids(inputs, self.vocab_size)
        h = self.model(inputs, cache)
        if "lm_head" in self:
            logits = self.lm_head(h)
        else:
            logits = self.model.embed_tokens.as_linear(h)
        if invalid is not None:
            logits = mx.where(mx.expand_dims(invalid, -1), mx.array(mx.nan, logits.dtype), logits)
        return logits

    @property
    def vocab_size(self) -> int:
        """Token ids the model reads: the rows of the input embedding (``args.vocab_size`` where
        the backbone has no ``embed_tokens``). Quantized embeddings pack along the columns, so
        the rows are the vocabulary either way."""
        embed = self.model.get("embed_tokens") if isinstance(self.model, dict) else None
        if isinstance(embed, nn.Module) and "weight" in embed:
            return int(embed["weight"].shape[0])
        return int(self.args.vocab_size)

    @property
    def layers(self) -> list:
        return self.model.layers


# -- mixture of experts ------------------------------------------------------------------------

SORT_THRESHOLD = 64
"""Routed (token, expert) pairs above which they are sorted by expert before the gathered matmul,
so that each expert's weights are read once per run of tokens instead of once per token."""


class SwitchLinear(nn.Module):
    """``num_experts`` linear layers stacked into one ``(experts, out, in)`` weight; each token is
    multiplied by the experts its router picked, in one ``mx.gather_mm``."""

    def __init__(self, input_dims: int, output_dims: int, num_experts: int, bias: bool = False):
        super().__init__()
        bound = math.sqrt(1 / input_dims)
        self.weight = mx.random.uniform(-bound, bound, (num_experts, output_dims, input_dims))
        if bias:
            self.bias = mx.zeros((num_experts, output_dims))

    @property
    def num_experts(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        weight = self.weight
        if weight.dtype != mx.float32 and mx.default_device() == mx.cpu:
            # MLX's CPU gather_mm computes in float32 only (bf16/fp16 raise at eval time): upcast
            # here and return to the weights' dtype, so half-precision MoE checkpoints run on CPU.
            dtype = x.dtype
            out = mx.gather_mm(x.astype(mx.float32), weight.astype(mx.float32).swapaxes(-1, -2),
                               rhs_indices=indices, sorted_indices=sorted_indices).astype(dtype)
        else:
            out = mx.gather_mm(x, weight.swapaxes(-1, -2), rhs_indices=indices,
                               sorted_indices=sorted_indices)
        if "bias" in self:
            out = out + mx.expand_dims(self.bias[indices], -2)
        return out

    def to_quantized(self, group_size: int = 64, bits: int = 4, mode: str = "affine",
                     **_: Any) -> QuantizedSwitchLinear:
        return QuantizedSwitchLinear.from_switch_linear(self, group_size, bits, mode)


class QuantizedSwitchLinear(nn.Module):
    """:class:`SwitchLinear` with quantized experts, applied with ``mx.gather_qmm``."""

    def __init__(self, input_dims: int, output_dims: int, num_experts: int, bias: bool = False,
                 group_size: int = 64, bits: int = 4, mode: str = "affine"):
        super().__init__()
        self.group_size, self.bits, self.mode = group_size, bits, mode
        weight = mx.zeros((num_experts, output_dims, input_dims))
        self.weight, self.scales, *rest = mx.quantize(weight, group_size, bits, mode=mode)
        if rest and rest[0] is not None:
            self.biases = rest[0]
        if bias:
            self.bias = mx.zeros((num_experts, output_dims))
        self.freeze()

    @classmethod
    def from_switch_linear(cls, layer: SwitchLinear, group_size: int, bits: int,
                           mode: str = "affine") -> QuantizedSwitchLinear:
        experts, out_dims, in_dims = layer.weight.shape
        q = cls(in_dims, out_dims, experts, "bias" in layer, group_size, bits, mode)
        q.weight, q.scales, *rest = mx.quantize(layer.weight, group_size, bits, mode=mode)
        if rest and rest[0] is not None:
            q.biases = rest[0]
        if "bias" in layer:
            q.bias = layer.bias
        return q

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        out = mx.gather_qmm(x, self["weight"], self["scales"], self.get("biases"),
                            rhs_indices=indices, transpose=True, group_size=self.group_size,
                            bits=self.bits, mode=self.mode, sorted_indices=sorted_indices)
        if "bias" in self:
            out = out + mx.expand_dims(self.bias[indices], -2)
        return out


def _sort_by_expert(x: mx.array, indices: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    top_k = indices.shape[-1]
    flat = indices.flatten()
    order = mx.argsort(flat)
    inverse = mx.argsort(order)
    rows = x.flatten(0, -3)
    # One input row per token (shared by its top_k experts), or one per (token, expert) pair.
    per_pair = rows.shape[0] == flat.size
    return rows[order if per_pair else order // top_k], flat[order], inverse


_COMPILED_FUNCTION = type(nn.silu)
"""The type of an ``mx.compile``-d function, which is what ``mlx.nn``'s activations
(``nn.silu``, ``nn.gelu``, ...) are: it can be neither pickled nor deep-copied."""


@dataclass(frozen=True)
class _MlxNNFunction:
    """Stands in, in a pickled :class:`SwitchGLU`, for one of ``mlx.nn``'s compiled activations:
    they are pickled by name and looked up again in ``mlx.nn`` when unpickled."""

    name: str


def _mlx_nn_name(function: Any) -> str | None:
    """The name under which ``function`` is an attribute of ``mlx.nn``, if it is one."""
    name = getattr(function, "__name__", None)
    return name if isinstance(name, str) and getattr(nn, name, None) is function else None


class SwitchGLU(nn.Module):
    """A gated MLP per expert, ``down(act(gate(x)) * up(x))`` (SwiGLU with the default SiLU),
    applied to the ``top_k`` experts chosen for each token.

    ``x``: ``(..., hidden)``; ``indices``: ``(..., top_k)`` expert ids. Returns
    ``(..., top_k, hidden)``: each chosen expert's output, for the caller to weight and sum.

    Copying: ``activation`` is kept as given (``self.activation is nn.silu`` by default), and
    ``mlx.nn``'s activations are ``mx.compile``-d function objects that ``copy`` and ``pickle``
    cannot handle. So :func:`copy.deepcopy` shares the activation (as it shares plain functions)
    and copies everything else, and pickling stores an ``mlx.nn`` activation by its name. Any
    other activation must be picklable itself (a module-level function) for the layer to pickle.
    """

    def __init__(self, input_dims: int, hidden_dims: int, num_experts: int,
                 activation: Callable[[mx.array], mx.array] = nn.silu, bias: bool = False):
        super().__init__()
        self.gate_proj = SwitchLinear(input_dims, hidden_dims, num_experts, bias)
        self.up_proj = SwitchLinear(input_dims, hidden_dims, num_experts, bias)
        self.down_proj = SwitchLinear(hidden_dims, input_dims, num_experts, bias)
        self.activation = activation

    def __deepcopy__(self, memo: dict[int, Any]) -> SwitchGLU:
        memo.setdefault(id(self.activation), self.activation)  # shared, like any function
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.items():  # the sub-layers and arrays (nn.Module is a dict)
            dict.__setitem__(new, key, copy.deepcopy(value, memo))
        vars(new).update(copy.deepcopy(vars(self), memo))
        return new

    def __getstate__(self) -> dict[str, Any]:
        state = dict(vars(self))
        activation = state.get("activation")
        name = _mlx_nn_name(activation)
        if name is not None:
            state["activation"] = _MlxNNFunction(name)
        elif isinstance(activation, _COMPILED_FUNCTION):
            raise pickle.PicklingError(
                f"SwitchGLU.activation is {activation!r}, an mx.compile'd function, which cannot "
                "be pickled: pass one of mlx.nn's activations or a module-level Python function")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        activation = state.get("activation")
        if isinstance(activation, _MlxNNFunction):
            state = {**state, "activation": getattr(nn, activation.name)}
        vars(self).update(state)

    def __call__(self, x: mx.array, indices: mx.array,
                 input_scale: mx.array | None = None) -> mx.array:
        """``input_scale`` (optional, ``(..., top_k)``, e.g. router weights) multiplies each chosen
        expert's *input*: expert_k(s_k * x) rather than s_k * expert_k(x) -- not the same, the
        expert not being linear. Llama 4 routes this way."""
        if input_scale is None:
            x = mx.expand_dims(x, (-2, -3))  # (..., 1, 1, hidden): one row per gathered matmul
        else:  # (..., top_k, 1, hidden): one row per (token, expert) pair
            x = mx.expand_dims(mx.expand_dims(x, -2) * mx.expand_dims(input_scale, -1), -2)
        do_sort = indices.size >= SORT_THRESHOLD
        idx = indices
        if do_sort:
            x, idx, inverse = _sort_by_expert(x, indices)
        gate, up = self.gate_proj(x, idx, do_sort), self.up_proj(x, idx, do_sort)
        # SiLU (every Llama-style MoE): one fused kernel, the same values (see swiglu)
        hidden = swiglu(gate, up) if self.activation is nn.silu else self.activation(gate) * up
        out = self.down_proj(hidden, idx, do_sort)
        if do_sort:
            out = out[inverse].reshape(*indices.shape, -1)
            return out
        return out.squeeze(-2)
