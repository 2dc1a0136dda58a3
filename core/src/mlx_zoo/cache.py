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
  :func:`load_prompt_cache` finds its class again,
* follows mlx-lm's cache protocol as well, so that mlx-lm's ``generate``, ``batch_generate`` /
  ``BatchGenerator`` and ``mlx_lm.server`` drive mlx-zoo models: ``make_mask(N, return_array=,
  window_size=)``, ``size()``, ``empty()``, ``nbytes``, ``is_trimmable()``/``trim(n)``,
  ``from_state`` and, for :class:`KVCache`, :class:`RotatingKVCache` and
  :class:`ChunkedKVCache`, ``merge(caches)`` into a :class:`mlx_zoo.compat.BatchCache` (which has
  the batch operations ``BatchGenerator`` calls: ``prepare``, ``finalize``, ``filter``,
  ``extend``, ``extract``).

=========================  ===========================================================
:class:`KVCache`           full attention; grows in steps of :attr:`KVCache.STEP` tokens
:class:`RotatingKVCache`   sliding-window attention (last ``max_size`` positions)
:class:`ChunkedKVCache`    chunked local attention (Llama 4): keys of the current chunk only
:class:`QuantizedKVCache`  full attention with keys/values stored quantized (``mx.quantize``)
=========================  ===========================================================
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from .errors import CacheFileError, GenerationArgumentError
from .hookspecs import MakesCache
from .registry import call_hook, find_contribution, provider_of

Mask = None | str | mx.array


class _Cache:
    """Common behaviour; :attr:`offset` counts every position seen so far."""

    def __init__(self):
        self.offset = 0

    def make_mask(self, n: int, return_array: bool = False,
                  window_size: int | None = None) -> Mask:
        """The mask of the next ``n`` queries (mlx-lm's signature): None for one query, else
        ``"causal"``; a boolean ``(n, keys)`` array with ``return_array`` or a ``window_size``
        (keys further back than the window hidden)."""
        if window_size is None and (n == 1 or not return_array):
            return None if n == 1 else "causal"
        query_pos = mx.arange(self.offset, self.offset + n)[:, None]
        key_pos = mx.arange(self.offset + n)[None]
        visible = key_pos <= query_pos
        if window_size is not None:
            visible = visible & (query_pos - key_pos < window_size)
        return visible

    def is_trimmable(self) -> bool:
        return False

    def empty(self) -> bool:
        return self.offset == 0

    def size(self) -> int:
        """Positions stored (mlx-lm's protocol): what attention of the next query reads."""
        return self.offset

    @classmethod
    def from_state(cls, state: Any, meta_state: tuple[str, ...] | None = None) -> _Cache:
        """A cache holding ``state`` (and ``meta_state``), as mlx-lm's ``from_state``."""
        cache = cls.__new__(cls)
        _Cache.__init__(cache)
        cache.keys = cache.values = None
        if meta_state is not None:
            cache.meta_state = meta_state
        cache.state = state
        return cache

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

    batch_mode: ClassVar[str] = "full"  # how mlx_zoo.compat.BatchCache batches it

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

    @classmethod
    def merge(cls, caches: list) -> Any:
        """One batch cache for a list of single-sequence caches of one layer (mlx-lm's
        ``BatchGenerator`` and server call it): :class:`mlx_zoo.compat.BatchCache`."""
        from .compat import BatchCache
        return BatchCache.merge(caches)


class RotatingKVCache(_Cache):
    """Sliding-window attention: a query at position p sees keys at positions (p - W, p],
    W = ``max_size``. Single-token steps write into a ring buffer of W slots (order does not matter
    to attention once RoPE is applied); multi-token updates first put the buffer back in temporal
    order and keep the W - 1 newest positions that the new queries can still see."""

    batch_mode: ClassVar[str] = "window"  # how mlx_zoo.compat.BatchCache batches it

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

    def make_mask(self, n: int, return_array: bool = False,
                  window_size: int | None = None) -> Mask:
        """``(n, keys)`` booleans: causal within the last ``max_size`` positions (or the smaller
        ``window_size``); None for one query that sees every stored key."""
        window = min(window_size or self.max_size, self.max_size)
        if n == 1 and (window == self.max_size or self.offset < window):
            return None
        full = self.keys is not None and self.keys.shape[2] == self.max_size
        if n == 1 and full:  # a ring buffer: slot s holds position offset - ((write - s) % W)
            slots = mx.arange(self.max_size)
            key_pos = self.offset - ((self._write - slots) % self.max_size)
            return (self.offset - key_pos < window)[None]
        stored = 0 if self.keys is None else min(self.keys.shape[2], self.max_size - 1)
        query_pos = mx.arange(self.offset, self.offset + n)[:, None]
        key_pos = mx.arange(self.offset - stored, self.offset + n)[None]
        return (key_pos <= query_pos) & (query_pos - key_pos < window)

    def size(self) -> int:
        return 0 if self.keys is None else min(self.offset, self.keys.shape[2])

    merge = classmethod(KVCache.merge.__func__)

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

    batch_mode: ClassVar[str] = "chunk"  # how mlx_zoo.compat.BatchCache batches it

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

    def make_mask(self, n: int, return_array: bool = False,
                  window_size: int | None = None) -> Mask:
        """Chunked causal mask of the next ``n`` queries over the stored keys (``window_size``,
        an mlx-lm option, narrows it further)."""
        stored = self.offset - self.start
        if window_size is not None or (return_array and n > 1):
            mask = chunked_causal_mask(self.offset, n, stored, self.chunk_size)
            if window_size is not None:
                query_pos = mx.arange(self.offset, self.offset + n)[:, None]
                key_pos = mx.arange(self.offset - stored, self.offset + n)[None]
                mask = mask & (query_pos - key_pos < window_size)
            return mask
        if n == 1:
            return None
        if self.start // self.chunk_size == (self.offset + n - 1) // self.chunk_size:
            return "causal"  # all keys and queries in one chunk: plain causal, the fast kernel
        return chunked_causal_mask(self.offset, n, stored, self.chunk_size)

    def size(self) -> int:
        return self.offset - self.start

    merge = classmethod(KVCache.merge.__func__)

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


KV_BITS = (2, 3, 4, 5, 6, 8)
"""Bit widths MLX quantizes to (``mx.quantize``, affine mode)."""
KV_GROUP_SIZES = (32, 64, 128)
"""Group sizes MLX quantizes with: consecutive elements of a key/value vector sharing a scale."""


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


CACHE_HOOK = "register_cache_classes"


def cache_classes() -> dict[str, type]:
    """The cache registry: built-in classes and those of the registered plugins (see
    :func:`cache_class` for those of installed plugins not imported yet)."""
    classes = dict(BUILTIN_CACHES)
    for contributed in call_hook(CACHE_HOOK):
        classes.update(contributed or {})
    return classes


def cache_class(name: str, plugin: str | None = None) -> type | None:
    """The cache class registered as ``name``: built-in, of a registered plugin, or of an
    installed plugin imported for the purpose -- ``plugin`` (the distribution recorded when the
    cache was saved) first, else the likeliest (:func:`mlx_zoo.registry.find_contribution`).
    None if no plugin registers it."""
    found = cache_classes().get(name)
    if found is None:
        found = find_contribution(CACHE_HOOK, name, providers=[plugin] if plugin else ())
    return found


def _registered_name(cache: Any, registry: dict[str, type]) -> str:
    for name, cls in registry.items():
        if type(cache) is cls:
            return name
    raise CacheFileError(f"cache class {type(cache).__qualname__} is not registered: add it to "
                         "the plugin's register_cache_classes hook to save it")


def make_prompt_cache(model: Any) -> list:
    """The model's own caches (its ``make_cache``), else one :class:`KVCache` per layer."""
    if isinstance(model, MakesCache):
        return model.make_cache()
    return [KVCache() for _ in model.layers]


LAYOUT_ATTRS = ("max_size", "chunk_size")
"""Cache attributes fixed by the model's config (window, chunk): part of a layer's layout."""


def _same_kind(got: Any, want: Any) -> bool:
    """A quantized full-attention cache stands in for a plain one (``kv_bits`` makes one)."""
    return type(got) is type(want) or (type(want) is KVCache and type(got) is QuantizedKVCache)


def prompt_cache_mismatch(model: Any, cache: Any) -> str | None:
    """Why ``cache`` cannot serve ``model`` -- not a list, another number of entries, another
    cache class or window/chunk size on some layer, layers at different positions -- or None when
    it matches the model's own layout (:func:`make_prompt_cache`)."""
    if not isinstance(cache, list):
        return f"expected a list of caches (make_prompt_cache(model)), got {type(cache).__name__}"
    expected = make_prompt_cache(model)
    name = getattr(model, "model_type", type(model).__name__)
    if len(cache) != len(expected):
        return (f"it has {len(cache)} layer caches, the model ({name}) needs {len(expected)} "
                "(make_prompt_cache(model) builds them)")
    for i, (got, want) in enumerate(zip(cache, expected, strict=True)):
        if not _same_kind(got, want):
            return (f"layer {i} is a {type(got).__name__}, the model ({name}) needs a "
                    f"{type(want).__name__}")
        for attr in LAYOUT_ATTRS:
            if getattr(got, attr, None) != getattr(want, attr, None):
                return (f"layer {i}: {attr} is {getattr(got, attr, None)}, the model ({name}) "
                        f"needs {getattr(want, attr, None)}")
    offsets = {getattr(c, "offset", None) for c in cache}
    if len(offsets) > 1:
        return f"its layers hold different numbers of positions ({sorted(map(str, offsets))})"
    return None


def check_prompt_cache(model: Any, cache: Any) -> None:
    """Raise :class:`GenerationArgumentError` unless ``cache`` has ``model``'s layout
    (:func:`prompt_cache_mismatch`) and, when it holds positions, stored keys and values of the
    model's heads and width. Checked once per generation, without evaluating anything."""
    problem = prompt_cache_mismatch(model, cache)
    if problem is None and any(getattr(c, "offset", 0) for c in cache):
        problem = _shape_mismatch(model, cache)
    if problem is not None:
        raise GenerationArgumentError(f"prompt_cache does not fit the model: {problem}")


CACHE_FORMAT = "mlx_zoo.prompt_cache/1"


def model_identity(model: Any) -> dict[str, Any]:
    """What a saved prompt cache records of the model it was made for: ``model_type``, the
    number of layers and of cache entries, and the vocabulary size -- cheap to read, and enough
    to tell architectures and sizes apart (the cache layout is checked on top)."""
    args = getattr(model, "args", None)
    vocab = getattr(model, "vocab_size", None) or getattr(args, "vocab_size", None)
    return {"model_type": str(getattr(model, "model_type", type(model).__name__)),
            "num_layers": len(model.layers),
            "cache_entries": len(make_prompt_cache(model)),
            "vocab_size": vocab if isinstance(vocab, int) else None}


def save_prompt_cache(path: str | Path, cache: list, metadata: dict[str, str] | None = None,
                      model: Any = None) -> None:
    """Save ``cache`` (a list from :func:`make_prompt_cache`) to a safetensors file, with the
    string ``metadata`` given. With ``model``, the cache is first checked against it and the
    model's identity (:func:`model_identity`) is recorded, so that
    :func:`load_prompt_cache` ``(..., model=)`` refuses the file for another model."""
    if metadata is not None and (not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise CacheFileError(f"{path}: metadata must be a dict of strings to strings, got "
                             f"{metadata!r}")
    if model is not None:
        problem = prompt_cache_mismatch(model, cache)
        if problem is not None:
            raise CacheFileError(f"{path}: the cache does not fit the model given: {problem}")
    registry = cache_classes()
    arrays = {}
    for i, c in enumerate(cache):
        arrays.update(tree_flatten(list(c.state), prefix=f".{i}"))
    layout = [{"class": _registered_name(c, registry), "meta": list(c.meta_state)} for c in cache]
    for entry in layout:  # which distribution registers a plugin's class: found again on load
        if entry["class"] not in BUILTIN_CACHES:
            entry["plugin"] = provider_of(CACHE_HOOK, entry["class"])
    header = {"format": CACHE_FORMAT, "layers": json.dumps(layout),
              "user": json.dumps(metadata or {})}
    if model is not None:
        header["model"] = json.dumps(model_identity(model))
    try:
        mx.save_safetensors(str(path), arrays, metadata=header)
    except (RuntimeError, OSError) as e:  # MLX: "Failed to open file"
        parent = Path(path).parent
        why = ("the folder does not exist" if not parent.is_dir() else
               "the folder is not writable" if not os.access(parent, os.W_OK) else str(e))
        raise CacheFileError(f"{path}: cannot write the prompt cache ({why})") from e


def _json_key(path: Path, header: dict[str, str], key: str, expected: type, default: Any) -> Any:
    """``header[key]`` parsed as JSON and of type ``expected``; ``default`` when absent."""
    if key not in header:
        if default is None:
            raise CacheFileError(f"{path}: key {key!r} is missing from the metadata (a file "
                                 "written by mlx_zoo.save_prompt_cache has it)")
        return default
    try:
        value = json.loads(header[key])
    except (json.JSONDecodeError, TypeError) as e:
        raise CacheFileError(f"{path}: key {key!r} is not valid JSON ({e})") from e
    if not isinstance(value, expected):
        raise CacheFileError(f"{path}: key {key!r} must be a JSON {expected.__name__}, got "
                             f"{type(value).__name__}")
    return value


def _layout_entry(path: Path, i: int, entry: Any) -> tuple[str, tuple[str, ...], str | None]:
    where = f"{path}: key 'layers', entry {i}"
    if not isinstance(entry, dict) or not isinstance(entry.get("class"), str):
        raise CacheFileError(f"{where}: expected an object with a string 'class' and a 'meta' "
                             f"list, got {entry!r}")
    meta = entry.get("meta")
    if not isinstance(meta, list) or not all(
            isinstance(m, str) and m.isascii() and m.isdigit() for m in meta):
        raise CacheFileError(f"{where}: 'meta' must be a list of non-negative integers written "
                             f"as strings, got {meta!r}")
    plugin = entry.get("plugin")
    return entry["class"], tuple(meta), plugin if isinstance(plugin, str) else None


def _stored_length(cache: Any) -> int | None:
    """Positions a built-in cache stores for its offset (None: a plugin's class, not checked)."""
    if type(cache) in (KVCache, QuantizedKVCache):
        return cache.offset
    if type(cache) is RotatingKVCache:
        return min(cache.offset, cache.max_size)
    if type(cache) is ChunkedKVCache:
        return cache.offset - cache.start
    return None


def _check_meta(where: str, cache: Any) -> None:
    if isinstance(cache, RotatingKVCache) and cache.max_size < 1:
        raise CacheFileError(f"{where}: max_size must be >= 1, got {cache.max_size}")
    if isinstance(cache, ChunkedKVCache):
        if cache.chunk_size < 1:
            raise CacheFileError(f"{where}: chunk_size must be >= 1, got {cache.chunk_size}")
        if cache.start > cache.offset or cache.start % cache.chunk_size:
            raise CacheFileError(f"{where}: start {cache.start} must be a multiple of chunk_size "
                                 f"{cache.chunk_size} and <= offset {cache.offset}")
    if isinstance(cache, QuantizedKVCache):
        if cache.bits not in KV_BITS or cache.group_size not in KV_GROUP_SIZES:
            raise CacheFileError(f"{where}: bits {cache.bits} / group_size {cache.group_size} "
                                 f"must be in {KV_BITS} / {KV_GROUP_SIZES}")


def _check_state(where: str, cache: Any, arrays: list) -> None:
    """The arrays of a built-in cache: 4-D ``(batch, heads, positions, width)``, as many
    positions as its offset implies, keys and values alike."""
    length = _stored_length(cache)
    if length is None:
        return
    if length == 0:
        if arrays:
            raise CacheFileError(f"{where}: offset 0 but {len(arrays)} arrays stored")
        return
    if not arrays:
        raise CacheFileError(f"{where}: offset {cache.offset} but no arrays stored")
    expected_count = 6 if isinstance(cache, QuantizedKVCache) else 2
    if len(arrays) != expected_count:
        raise CacheFileError(f"{where}: expected {expected_count} arrays, found {len(arrays)}")
    for name, array in arrays:
        if array.ndim != 4 or array.shape[2] != length:
            raise CacheFileError(
                f"{where}, tensor {name!r}: shape {array.shape}, expected (batch, heads, "
                f"{length}, width) for offset {cache.offset}")
    if len({a.shape[:2] for _, a in arrays}) > 1:
        raise CacheFileError(f"{where}: keys and values differ in batch or heads "
                             f"({[a.shape for _, a in arrays]})")


def load_prompt_cache(path: str | Path, return_metadata: bool = False, model: Any = None):
    """Rebuild the caches saved by :func:`save_prompt_cache`, each with its registered class.

    Every piece of the file is checked (:class:`CacheFileError` naming the file and key): the
    metadata's JSON, each layer's class and integer meta values, tensor names, shapes against the
    offsets. With ``model``, the file must have been saved for the same model (the identity
    recorded by ``save_prompt_cache(..., model=)``, when it was) and the caches must have the
    model's layout (:func:`prompt_cache_mismatch`)."""
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
    layout = [_layout_entry(path, i, e)
              for i, e in enumerate(_json_key(path, header, "layers", list, None))]
    user = _json_key(path, header, "user", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in user.items()):
        raise CacheFileError(f"{path}: key 'user' must map strings to strings, got {user!r}")
    by_layer: dict[int, list] = {}
    for key, array in arrays.items():
        layer, _, rest = key.partition(".")
        if not (layer.isascii() and layer.isdigit() and int(layer) < len(layout) and rest):
            raise CacheFileError(f"{path}, tensor {key!r}: expected '<layer>.<index>' with a "
                                 f"layer in 0 .. {len(layout) - 1}")
        by_layer.setdefault(int(layer), []).append((rest, array))
    caches = []
    for i, (class_name, meta, plugin) in enumerate(layout):
        where = f"{path}: key 'layers', entry {i} ({class_name})"
        cls = cache_class(class_name, plugin)
        if cls is None:
            known = ", ".join(sorted(cache_classes()))
            raise CacheFileError(f"{path}: layer {i} uses cache class {class_name!r}, which no "
                                 f"installed plugin registers (known: {known})")
        cache = cls.__new__(cls)
        _Cache.__init__(cache)
        for attr in ("keys", "values"):
            setattr(cache, attr, None)
        stored = sorted(by_layer.get(i, []), key=lambda item: item[0])
        try:
            cache.meta_state = meta
            _check_meta(where, cache)
            _check_state(where, cache, stored)
            if stored:
                cache.state = tree_unflatten(stored)
        except CacheFileError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
            raise CacheFileError(f"{where}: meta {list(meta)} and tensors "
                                 f"{[k for k, _ in stored]} do not make a "
                                 f"{class_name} ({type(e).__name__}: {e})") from e
        if _stored_length(cache) is not None and cache.offset != int(meta[0]):
            raise CacheFileError(f"{where}: offset {meta[0]} does not match the stored "
                                 f"tensors ({cache.offset} positions)")
        caches.append(cache)
    if model is not None:
        _check_saved_for(path, header, model, caches)
    if return_metadata:
        return caches, user
    return caches


def _check_saved_for(path: Path, header: dict[str, str], model: Any, caches: list) -> None:
    saved = _json_key(path, header, "model", dict, {})
    if saved:
        mine = model_identity(model)
        for key, value in mine.items():
            if key in saved and saved[key] != value:
                raise CacheFileError(f"{path}: key 'model': saved for {key} {saved[key]!r}, "
                                     f"the model given has {value!r}")
    problem = prompt_cache_mismatch(model, caches) or _shape_mismatch(model, caches)
    if problem is not None:
        raise CacheFileError(f"{path}: the cache does not fit the model given: {problem}")


def _shape_mismatch(model: Any, caches: list) -> str | None:
    """Which layer's stored keys or values have other heads or width than ``model`` writes
    (found by a lazy one-token step on fresh caches: shapes only, nothing is evaluated); None
    when they match, or for caches other than the plain, rotating and chunked ones."""
    probe = make_prompt_cache(model)
    try:
        model(mx.array([[0]]), cache=probe)
    except Exception:  # noqa: BLE001 - a model that cannot be probed this way is not checked
        return None
    for i, (got, want) in enumerate(zip(caches, probe, strict=True)):
        if type(got) not in (KVCache, RotatingKVCache, ChunkedKVCache) or got.keys is None:
            continue
        for name in ("keys", "values"):
            have, need = getattr(got, name).shape, getattr(want, name, None)
            if need is not None and (have[1], have[3]) != (need.shape[1], need.shape[3]):
                return (f"layer {i}: {name} of shape {tuple(have)}, the model writes "
                        f"{need.shape[1]} heads of width {need.shape[3]}")
    return None
