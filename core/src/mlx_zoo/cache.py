"""Key/value caches for incremental decoding, and saving a prompt cache to disk.

A model gets one cache per attention layer that stores keys/values (:meth:`make_cache` on the
model decides which kind, see :class:`~mlx_zoo.hookspecs.MakesCache`). Every cache

* stores keys/values of shape ``(batch, kv_heads, length, head_dim)``,
* returns from :meth:`update_and_fetch` the keys/values the new queries attend to,
* builds, before its update, the attention mask for the next ``n`` queries
  (:meth:`make_mask`): ``None`` (attend to everything), ``"causal"`` or a boolean array
  ``(n, n_keys)`` -- so models never hand-build masks for sliding windows or chunks,
* has ``state``/``meta_state`` for :func:`save_prompt_cache`, and a name in the cache registry
  (:data:`BUILTIN_CACHES` plus the plugins' ``register_cache_classes`` hook) under which
  :func:`load_prompt_cache` finds its class again.

=========================  ===========================================================
:class:`KVCache`           full attention; grows in steps of :attr:`KVCache.STEP` tokens
:class:`RotatingKVCache`   sliding-window attention (last ``max_size`` positions)
:class:`ChunkedKVCache`    chunked local attention (Llama 4): keys of the current chunk only
:class:`QuantizedKVCache`  full attention with keys/values stored quantized (``mx.quantize``)
=========================  ===========================================================
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from .errors import CacheFileError

Mask = None | str | mx.array


class _Cache:
    """Common behaviour; :attr:`offset` counts every position seen so far."""

    def __init__(self):
        self.offset = 0

    def make_mask(self, n: int) -> Mask:
        return None if n == 1 else "causal"

    def is_trimmable(self) -> bool:
        return False

    def empty(self) -> bool:
        return self.offset == 0

    @property
    def meta_state(self) -> tuple[str, ...]:
        return (str(self.offset),)

    @meta_state.setter
    def meta_state(self, values: tuple[str, ...]) -> None:
        self.offset = int(values[0])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for _, a in tree_flatten(self.state))


class _Trimmable(_Cache):
    """A cache that holds every position it saw, in order: the last ``n`` can be forgotten by
    moving the offset back (the next writes overwrite them)."""

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        """Forget the last ``n`` positions (speculative decoding, prompt-cache reuse)."""
        n = min(self.offset, n)
        self.offset -= n
        return n


class KVCache(_Trimmable):
    """Full causal attention: keeps every key/value, preallocated in steps of ``STEP`` tokens so
    that decoding writes in place instead of concatenating each step."""

    STEP = 256  # tokens allocated at a time

    def __init__(self):
        super().__init__()
        self.keys: mx.array | None = None
        self.values: mx.array | None = None

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        start, n = self.offset, keys.shape[2]
        if self.keys is None or start + n > self.keys.shape[2]:
            self._grow(keys, values, start + n)
        self.keys[..., start:start + n, :] = keys
        self.values[..., start:start + n, :] = values
        self.offset += n
        return self.keys[..., :self.offset, :], self.values[..., :self.offset, :]

    def _grow(self, keys: mx.array, values: mx.array, needed: int) -> None:
        capacity = (needed + self.STEP - 1) // self.STEP * self.STEP
        batch, heads, _, k_dim = keys.shape
        new_k = mx.zeros((batch, heads, capacity, k_dim), keys.dtype)
        new_v = mx.zeros((batch, heads, capacity, values.shape[3]), values.dtype)
        if self.keys is not None:
            new_k[..., :self.offset, :] = self.keys[..., :self.offset, :]
            new_v[..., :self.offset, :] = self.values[..., :self.offset, :]
        self.keys, self.values = new_k, new_v

    @property
    def state(self) -> tuple[mx.array, mx.array] | tuple:
        if self.keys is None:
            return ()
        return self.keys[..., :self.offset, :], self.values[..., :self.offset, :]

    @state.setter
    def state(self, value) -> None:
        if value:
            self.keys, self.values = value
            self.offset = self.keys.shape[2]

    def to_quantized(self, group_size: int = 64, bits: int = 8) -> QuantizedKVCache:
        cache = QuantizedKVCache(group_size=group_size, bits=bits)
        if self.keys is not None:
            cache.update_and_fetch(*self.state)
        return cache


class RotatingKVCache(_Cache):
    """Sliding-window attention: a query at position p sees keys at positions (p - W, p],
    W = ``max_size``. Single-token steps write into a ring buffer of W slots (order does not matter
    to attention once RoPE is applied); multi-token updates first put the buffer back in temporal
    order and keep the W - 1 newest positions that the new queries can still see."""

    def __init__(self, max_size: int):
        super().__init__()
        self.max_size = max_size
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self._write = 0  # next ring slot once the buffer is full

    def _temporal(self, a: mx.array) -> mx.array:
        if a.shape[2] < self.max_size or self._write == 0:
            return a
        return mx.concatenate([a[..., self._write:, :], a[..., :self._write, :]], axis=2)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        n = keys.shape[2]
        if n == 1 and self.keys is not None and self.keys.shape[2] == self.max_size:
            self.keys[..., self._write:self._write + 1, :] = keys
            self.values[..., self._write:self._write + 1, :] = values
            self._write = (self._write + 1) % self.max_size
            self.offset += 1
            return self.keys, self.values
        if self.keys is None:
            all_k, all_v = keys, values
        else:
            history = self.max_size - 1  # positions the first new query can still see
            all_k = mx.concatenate([self._temporal(self.keys)[..., -history:, :], keys], axis=2)
            all_v = mx.concatenate([self._temporal(self.values)[..., -history:, :], values], axis=2)
        self.offset += n
        self.keys, self.values = all_k[..., -self.max_size:, :], all_v[..., -self.max_size:, :]
        self._write = 0
        return all_k, all_v

    def make_mask(self, n: int) -> Mask:
        if n == 1:
            return None
        stored = 0 if self.keys is None else min(self.keys.shape[2], self.max_size - 1)
        query_pos = mx.arange(self.offset, self.offset + n)[:, None]
        key_pos = mx.arange(self.offset - stored, self.offset + n)[None]
        return (key_pos <= query_pos) & (query_pos - key_pos < self.max_size)

    @property
    def state(self):
        if self.keys is None:
            return ()
        return self._temporal(self.keys), self._temporal(self.values)

    @state.setter
    def state(self, value) -> None:
        if value:
            self.keys, self.values = value
            self._write = 0

    @property
    def meta_state(self) -> tuple[str, ...]:
        return (str(self.offset), str(self.max_size))

    @meta_state.setter
    def meta_state(self, values: tuple[str, ...]) -> None:
        self.offset, self.max_size = int(values[0]), int(values[1])


class ChunkedKVCache(_Cache):
    """Chunked local attention (Llama 4's local layers): positions are split into chunks of
    ``chunk_size``; a query attends causally to keys of its own chunk only, so the cache keeps
    just the keys from the start of the current chunk."""

    def __init__(self, chunk_size: int):
        super().__init__()
        self.chunk_size = chunk_size
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.start = 0  # position of the first stored key

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        if self.keys is None:
            all_k, all_v = keys, values
        else:
            all_k = mx.concatenate([self.keys, keys], axis=2)
            all_v = mx.concatenate([self.values, values], axis=2)
        first = self.start
        self.offset += keys.shape[2]
        # Keep only what the next query (at position self.offset) can see: its chunk so far.
        chunk_start = self.offset // self.chunk_size * self.chunk_size
        drop = chunk_start - first
        self.keys, self.values = all_k[..., drop:, :], all_v[..., drop:, :]
        self.start = chunk_start
        return all_k, all_v

    def make_mask(self, n: int) -> Mask:
        stored = self.offset - self.start
        if n == 1:
            return None
        if self.start // self.chunk_size == (self.offset + n - 1) // self.chunk_size:
            return "causal"  # all keys and queries in one chunk: plain causal, the fast kernel
        return chunked_causal_mask(self.offset, n, stored, self.chunk_size)

    @property
    def state(self):
        return () if self.keys is None else (self.keys, self.values)

    @state.setter
    def state(self, value) -> None:
        if value:
            self.keys, self.values = value

    @property
    def meta_state(self) -> tuple[str, ...]:
        return (str(self.offset), str(self.chunk_size), str(self.start))

    @meta_state.setter
    def meta_state(self, values: tuple[str, ...]) -> None:
        self.offset, self.chunk_size, self.start = (int(v) for v in values)


def chunked_causal_mask(offset: int, n: int, stored: int, chunk_size: int) -> mx.array:
    """Boolean mask ``(n, stored + n)`` of chunked local attention.

    1. the ``n`` queries sit at positions ``offset .. offset + n - 1``;
    2. the keys are the ``stored`` cached positions before them, then the queries' own;
    3. a query sees a key if the key is not in the future (causal) ...
    4. ... and both fall in the same chunk: ``pos // chunk_size`` equal.
    """
    query_pos = mx.arange(offset, offset + n)[:, None]
    key_pos = mx.arange(offset - stored, offset + n)[None]
    causal = key_pos <= query_pos
    same_chunk = (key_pos // chunk_size) == (query_pos // chunk_size)
    return causal & same_chunk


class QuantizedKVCache(_Trimmable):
    """Full attention with keys and values stored quantized (``bits`` per element in groups of
    ``group_size``); :func:`mlx_zoo.layers.attention` reads it with quantized matmuls. Like
    :class:`KVCache`, storage is preallocated in steps of ``STEP`` tokens and written in place."""

    STEP = KVCache.STEP

    def __init__(self, group_size: int = 64, bits: int = 8):
        super().__init__()
        self.group_size = group_size
        self.bits = bits
        # (packed values, scales, biases) each, shape (B, heads, capacity, ...)
        self.keys: tuple[mx.array, ...] | None = None
        self.values: tuple[mx.array, ...] | None = None

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        start, n = self.offset, keys.shape[2]
        qk = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        qv = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        if self.keys is None or start + n > self.keys[0].shape[2]:
            self.keys = _grown(self.keys, qk, start, start + n, self.STEP)
            self.values = _grown(self.values, qv, start, start + n, self.STEP)
        for stored, new in zip(self.keys + self.values, tuple(qk) + tuple(qv), strict=True):
            stored[..., start:start + n, :] = new
        self.offset += n
        return self._filled(self.keys), self._filled(self.values)

    def _filled(self, arrays: tuple[mx.array, ...]) -> tuple[mx.array, ...]:
        return tuple(a[..., :self.offset, :] for a in arrays)

    @property
    def state(self):
        return () if self.keys is None else (self._filled(self.keys), self._filled(self.values))

    @state.setter
    def state(self, value) -> None:
        if value:
            self.keys, self.values = (tuple(v) for v in value)

    @property
    def meta_state(self) -> tuple[str, ...]:
        return (str(self.offset), str(self.group_size), str(self.bits))

    @meta_state.setter
    def meta_state(self, values: tuple[str, ...]) -> None:
        self.offset, self.group_size, self.bits = (int(v) for v in values)


def _grown(stored: tuple[mx.array, ...] | None, new: Any, kept: int, needed: int,
           step: int) -> tuple[mx.array, ...]:
    """Buffers shaped like ``new``'s arrays along every axis but the positions (axis 2), with room
    for ``needed`` positions rounded up to ``step``, holding the first ``kept`` of ``stored``."""
    capacity = (needed + step - 1) // step * step
    grown = []
    for i, array in enumerate(new):
        batch, heads, _, width = array.shape
        buffer = mx.zeros((batch, heads, capacity, width), array.dtype)
        if stored is not None and kept:
            buffer[..., :kept, :] = stored[i][..., :kept, :]
        grown.append(buffer)
    return tuple(grown)


BUILTIN_CACHES: dict[str, type] = {
    "mlx_zoo.KVCache": KVCache,
    "mlx_zoo.RotatingKVCache": RotatingKVCache,
    "mlx_zoo.ChunkedKVCache": ChunkedKVCache,
    "mlx_zoo.QuantizedKVCache": QuantizedKVCache,
}


def cache_classes() -> dict[str, type]:
    """The cache registry: built-in classes and those of the registered plugins."""
    from .registry import call_hook

    classes = dict(BUILTIN_CACHES)
    for contributed in call_hook("register_cache_classes"):
        classes.update(contributed or {})
    return classes


def _registered_name(cache: Any, registry: dict[str, type]) -> str:
    for name, cls in registry.items():
        if type(cache) is cls:
            return name
    raise CacheFileError(f"cache class {type(cache).__qualname__} is not registered: add it to "
                         "the plugin's register_cache_classes hook to save it")


def make_prompt_cache(model: Any) -> list:
    """The model's own caches (its ``make_cache``), else one :class:`KVCache` per layer."""
    if hasattr(model, "make_cache"):
        return model.make_cache()
    return [KVCache() for _ in model.layers]


CACHE_FORMAT = "mlx_zoo.prompt_cache/1"


def save_prompt_cache(path: str | Path, cache: list,
                      metadata: dict[str, str] | None = None) -> None:
    """Save ``cache`` (a list from :func:`make_prompt_cache`) to a safetensors file."""
    registry = cache_classes()
    arrays = {}
    for i, c in enumerate(cache):
        arrays.update(tree_flatten(list(c.state), prefix=f".{i}"))
    layout = [{"class": _registered_name(c, registry), "meta": list(c.meta_state)} for c in cache]
    header = {"format": CACHE_FORMAT, "layers": json.dumps(layout),
              "user": json.dumps(metadata or {})}
    mx.save_safetensors(str(path), arrays, metadata=header)


def load_prompt_cache(path: str | Path, return_metadata: bool = False):
    """Rebuild the caches saved by :func:`save_prompt_cache`, each with its registered class."""
    path = Path(path)
    if not path.is_file():
        raise CacheFileError(f"{path}: prompt cache file not found")
    try:
        arrays, header = mx.load(str(path), return_metadata=True)
    except Exception as e:  # mlx raises RuntimeError/ValueError on malformed files
        raise CacheFileError(f"{path}: not a readable safetensors file ({e})") from e
    if header.get("format") != CACHE_FORMAT:
        raise CacheFileError(f"{path}: key 'format' is {header.get('format')!r}, expected "
                             f"{CACHE_FORMAT!r} (a file written by mlx_zoo.save_prompt_cache)")
    layout = json.loads(header["layers"])
    registry = cache_classes()
    by_layer: dict[int, list] = {}
    for key, array in arrays.items():
        layer, _, rest = key.partition(".")
        by_layer.setdefault(int(layer), []).append((rest, array))
    caches = []
    for i, entry in enumerate(layout):
        cls = registry.get(entry["class"])
        if cls is None:
            known = ", ".join(sorted(registry))
            raise CacheFileError(f"{path}: layer {i} uses cache class {entry['class']!r}, which no "
                                 f"installed plugin registers (known: {known})")
        cache = cls.__new__(cls)
        _Cache.__init__(cache)
        for attr in ("keys", "values"):
            setattr(cache, attr, None)
        cache.meta_state = tuple(entry["meta"])
        if i in by_layer:
            cache.state = tree_unflatten(by_layer[i])
        caches.append(cache)
    if return_metadata:
        return caches, json.loads(header.get("user", "{}"))
    return caches
