"""Compiled single-token decoding: a fixed-shape KV cache and an ``mx.compile``-d model step.

Why: at batch 1 a decode step is a few hundred small kernels. On a GPU the host's work per token
-- running the model's Python to build the graph, then encoding every kernel -- rather than
memory bandwidth bounds small models (Qwen2-0.5B shape on an H100: 1.1 ms of graph construction
and 3.6 ms of evaluation for 1 GB of weights; docs/benchmarks.md). ``mx.compile`` traces the step
once and replays it: no Python per token, and elementwise chains fused into single kernels.

How: ``mx.compile`` re-traces when an input's shape changes and bakes Python numbers into the
trace, so the cache must keep one shape and hold its position as an array.
:class:`StaticKVCache` preallocates ``capacity`` positions, writes new keys/values with
``mx.slice_update`` at the array offset, returns the whole buffer and masks the positions not
written yet (:meth:`StaticKVCache.make_mask`). Its arrays live in the dict ``arrays`` so that
``mx.compile(inputs=..., outputs=...)`` reads and updates them on every call.

Which models: those whose caches (``make_prompt_cache``) are all plain :class:`~mlx_zoo.KVCache`
(full attention; sliding-window, chunked and quantized caches keep the plain path) and whose
forward pass traces with an array offset -- :class:`~mlx_zoo.RoPE` variants whose frequencies do
not depend on the sequence length do. A model that needs the offset as a Python number (dynamic
NTK RoPE, position-dependent Python branches) raises while being traced, and
:func:`compiled_decoder` then returns None: the caller keeps the plain path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from .cache import KVCache

log = logging.getLogger(__name__)

COMPILE_ENV = "MLX_ZOO_COMPILE"
"""Environment variable: ``1`` / ``0`` turns compiled decoding on / off whatever the device."""

CAPACITY_STEP = 256
"""Positions are preallocated in multiples of this, as :attr:`KVCache.STEP`."""

OFFSET_DTYPE = mx.int32


class StaticKVCache:
    """Full causal attention over a preallocated buffer of ``capacity`` positions.

    ``update_and_fetch`` returns the whole buffer (``capacity`` keys); the mask from
    :meth:`make_mask` hides the positions at or beyond the end of what was written. ``offset``
    is an array (a scalar int32), so that a compiled step is not tied to one position.
    """

    def __init__(self, keys: mx.array, values: mx.array, length: int, capacity: int):
        batch, heads, _, k_dim = keys.shape
        buffers = []
        for source, dim in ((keys, k_dim), (values, values.shape[3])):
            buffer = mx.zeros((batch, heads, capacity, dim), source.dtype)
            buffer[..., :length, :] = source[..., :length, :]
            buffers.append(buffer)
        self.capacity = capacity
        self.arrays = {"keys": buffers[0], "values": buffers[1],
                       "offset": mx.array(length, dtype=OFFSET_DTYPE)}

    @classmethod
    def from_kv_cache(cls, cache: KVCache, capacity: int) -> StaticKVCache:
        return cls(cache.keys, cache.values, cache.offset, capacity)

    @property
    def offset(self) -> mx.array:
        return self.arrays["offset"]

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        start = self.arrays["offset"].reshape(1)
        self.arrays["keys"] = mx.slice_update(self.arrays["keys"], keys, start, axes=(2,))
        self.arrays["values"] = mx.slice_update(self.arrays["values"], values, start, axes=(2,))
        self.arrays["offset"] = self.arrays["offset"] + keys.shape[2]
        return self.arrays["keys"], self.arrays["values"]

    def make_mask(self, n: int) -> mx.array:
        """``(n, capacity)``: query i (at position offset + i) sees keys at positions <= its own."""
        query_pos = self.offset + mx.arange(n, dtype=OFFSET_DTYPE)[:, None]
        return mx.arange(self.capacity, dtype=OFFSET_DTYPE)[None] <= query_pos

    def write_back(self, cache: KVCache, length: int) -> None:
        """Leave ``cache`` (the plain cache this one was made from) holding the first ``length``
        positions, as if it had decoded them itself."""
        cache.keys = self.arrays["keys"]
        cache.values = self.arrays["values"]
        cache.offset = length


def enabled_by_default() -> bool:
    """Off unless ``$MLX_ZOO_COMPILE`` is ``1``: measured on an H100 (MLX 0.32.4 CUDA), the
    compiled step decoded no faster than the plain one, and its tracing and kernel compilation
    land in the first token's latency of every generation (docs/benchmarks.md)."""
    return os.environ.get(COMPILE_ENV, "").strip() == "1"


def eligible(caches: list) -> bool:
    """Compiled decoding needs every cache to be a plain, filled :class:`KVCache`."""
    return bool(caches) and all(type(c) is KVCache and c.keys is not None for c in caches)


def capacity_for(length: int) -> int:
    return (length + CAPACITY_STEP - 1) // CAPACITY_STEP * CAPACITY_STEP


class CompiledDecoder:
    """Single-token model steps on :class:`StaticKVCache` copies of ``caches``, compiled.

    ``step(y)`` takes the last token ``(1,)`` and returns the logits ``(1, vocab)`` of the next;
    :meth:`finish` writes the decoded positions back into the plain caches.
    """

    def __init__(self, model: Any, caches: list[KVCache], max_new_tokens: int):
        self.plain = caches
        self.length = caches[0].offset
        capacity = capacity_for(self.length + max_new_tokens)
        self.static = [StaticKVCache.from_kv_cache(c, capacity) for c in caches]
        state = [c.arrays for c in self.static]

        def forward(y: mx.array) -> mx.array:
            return model(y[None], cache=self.static)[:, -1, :]

        self._forward: Callable = mx.compile(forward, inputs=state, outputs=state)

    def step(self, y: mx.array) -> mx.array:
        self.length += y.size
        return self._forward(y)

    def finish(self) -> None:
        for static, plain in zip(self.static, self.plain, strict=True):
            static.write_back(plain, self.length)


def compiled_decoder(model: Any, caches: list, max_new_tokens: int) -> CompiledDecoder | None:
    """A :class:`CompiledDecoder` for ``model``, or None where it cannot be used (see the module
    docstring). The step is traced here, with a throwaway token whose writes are then undone
    (nothing is evaluated), so a model that cannot be traced leaves ``caches`` untouched."""
    if not eligible(caches):
        return None
    decoder = CompiledDecoder(model, caches, max_new_tokens)
    saved = [dict(c.arrays) for c in decoder.static]
    try:
        decoder._forward(mx.zeros((1,), dtype=mx.uint32))
    except (ValueError, RuntimeError, TypeError) as e:
        log.debug("compiled decoding not used for %s: %s", type(model).__name__, e)
        return None
    for cache, arrays in zip(decoder.static, saved, strict=True):
        cache.arrays.update(arrays)
    return decoder
