"""Batched KV caches: one layer's keys/values for every sequence of a running batch.

The sequences of a batch have different lengths and join and leave between decode steps. Each
layer's :class:`BatchKVCache` keeps one buffer ``(B, kv_heads, capacity, head_dim)`` whose
columns are *shared time slots*: all rows write their next key at column :attr:`idx` together.
Row ``i`` is aligned so that its newest position sits at the last column: column ``j`` holds its
position ``base[i] + j``, and ``base[i] < 0`` means the first ``-base[i]`` columns are left
padding (never attended to). So

* the RoPE offset of row ``i`` is ``base[i] + idx`` -- :attr:`offset` is an ``mx.array`` of shape
  ``(B,)``, which ``mx.fast.rope`` applies per row;
* :meth:`make_mask` gives a boolean ``(B, 1, n, columns)`` mask: a query sees a key when the key's
  position is >= 0 (not padding), not in the future, and -- for the ``"window"`` (sliding) and
  ``"chunk"`` (Llama 4 local attention) modes -- inside the query's window or chunk;
* a new sequence joins (:meth:`add_row`) with the contents of its own prefilled single-sequence
  cache (:class:`~mlx_zoo.KVCache`, :class:`~mlx_zoo.RotatingKVCache`,
  :class:`~mlx_zoo.ChunkedKVCache`, :class:`~mlx_zoo.QuantizedKVCache`), right-aligned; when it
  stores more positions than the batch has columns, every other row gets more left padding;
* a finished sequence leaves (:meth:`keep_rows`); leading columns that no row can attend to any
  more (common padding, keys of past windows/chunks) are dropped, so memory follows the live
  sequences.

With ``quantized=(group_size, bits)`` (``--kv-bits``) the buffer is stored as ``mx.quantize``
triples (packed values, scales, biases) and dequantized for attention: the batch's memory is the
quantized one, the attention kernel the plain one (mlx_zoo's quantized attention takes 4-D masks
of one sequence only).

Models need nothing special: they read ``cache.offset``, call ``mask_for(cache, n)`` and
``cache.update_and_fetch(k, v)`` as with the single-sequence caches.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from ..cache import ChunkedKVCache, KVCache, QuantizedKVCache, RotatingKVCache

MODES = ("full", "window", "chunk")
BATCHABLE = (KVCache, QuantizedKVCache, RotatingKVCache, ChunkedKVCache)
"""Single-sequence cache classes whose contents a :class:`BatchKVCache` can take over (exact
classes; a plugin's own cache class makes the server fall back to per-sequence decoding)."""


def batchable(cache: list) -> bool:
    """Whether every layer cache of a model's ``make_prompt_cache`` has a batched counterpart."""
    return all(type(c) in BATCHABLE for c in cache)


class BatchKVCache:
    """One attention layer's cache for a batch (see the module docstring)."""

    STEP = 256  # columns allocated at a time

    def __init__(self, mode: str = "full", size: int | None = None,
                 quantized: tuple[int, int] | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "full" and (size is None or size < 1):
            raise ValueError(f"mode {mode!r} needs a window/chunk size >= 1, got {size!r}")
        self.mode, self.size, self.quantized = mode, size, quantized
        self.arrays: list[mx.array] | None = None  # keys then values (or their quantized parts)
        self.n_key_parts = 1
        self.idx = 0  # columns in use
        self.base: list[int] = []  # per row: the position held by column 0

    @classmethod
    def like(cls, cache: Any, kv_bits: int | None = None, kv_group_size: int = 64
             ) -> BatchKVCache:
        """The batched counterpart of a single-sequence cache (its class, window, chunk)."""
        if isinstance(cache, RotatingKVCache):
            return cls("window", cache.max_size)
        if isinstance(cache, ChunkedKVCache):
            return cls("chunk", cache.chunk_size)
        if isinstance(cache, QuantizedKVCache):
            return cls("full", quantized=(cache.group_size, cache.bits))
        if kv_bits is not None:
            return cls("full", quantized=(kv_group_size, kv_bits))
        return cls("full")

    # -- what the model reads ----------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return len(self.base)

    @property
    def offsets(self) -> list[int]:
        """Positions seen so far, per row (Python ints)."""
        return [b + self.idx for b in self.base]

    @property
    def offset(self) -> mx.array:
        """Per-row positions of the next query, ``(B,)`` int32 (RoPE takes it per row)."""
        return mx.array(self.offsets, dtype=mx.int32)

    def make_mask(self, n: int) -> mx.array:
        """``(B, 1, n, idx + n)`` booleans: True where a query may attend to a column."""
        base = mx.array(self.base, dtype=mx.int32)[:, None, None, None]
        key_pos = base + mx.arange(self.idx + n, dtype=mx.int32)[None, None, None, :]
        query_pos = base + self.idx + mx.arange(n, dtype=mx.int32)[None, None, :, None]
        visible = (key_pos >= 0) & (key_pos <= query_pos)
        if self.mode == "window":
            visible = visible & (query_pos - key_pos < self.size)
        elif self.mode == "chunk":
            visible = visible & (key_pos // self.size == query_pos // self.size)
        return visible

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        n = keys.shape[2]
        new = self._encode(keys, values)
        if self.arrays is None or self.idx + n > self.arrays[0].shape[2]:
            self._reserve(new, self.idx + n)
        for stored, part in zip(self.arrays, new, strict=True):
            stored[..., self.idx:self.idx + n, :] = part
        self.idx += n
        return self._decode([a[..., :self.idx, :] for a in self.arrays], keys.dtype)

    def is_trimmable(self) -> bool:
        return False

    def empty(self) -> bool:
        return self.idx == 0

    # -- storage -------------------------------------------------------------------------------

    def _encode(self, keys: mx.array, values: mx.array) -> list[mx.array]:
        if self.quantized is None:
            self.n_key_parts = 1
            return [keys, values]
        group, bits = self.quantized
        qk = list(mx.quantize(keys, group_size=group, bits=bits))
        qv = list(mx.quantize(values, group_size=group, bits=bits))
        self.n_key_parts = len(qk)
        return qk + qv

    def _decode(self, parts: list[mx.array], dtype: Any) -> tuple[mx.array, mx.array]:
        if self.quantized is None:
            return parts[0], parts[1]
        group, bits = self.quantized
        k = parts[:self.n_key_parts]
        v = parts[self.n_key_parts:]
        return (mx.dequantize(*k, group_size=group, bits=bits).astype(dtype),
                mx.dequantize(*v, group_size=group, bits=bits).astype(dtype))

    def _reserve(self, like: list[mx.array], needed: int) -> None:
        """Room for ``needed`` columns (rounded up to :attr:`STEP`), keeping the used ones."""
        capacity = (needed + self.STEP - 1) // self.STEP * self.STEP
        rows = self.batch_size if self.arrays is None else self.arrays[0].shape[0]
        grown = []
        for i, part in enumerate(like):
            _, heads, _, width = part.shape
            buffer = mx.zeros((rows, heads, capacity, width), part.dtype)
            if self.arrays is not None and self.idx:
                buffer[..., :self.idx, :] = self.arrays[i][..., :self.idx, :]
            grown.append(buffer)
        self.arrays = grown

    # -- rows joining and leaving --------------------------------------------------------------

    def add_row(self, cache: Any) -> None:
        """Append a sequence whose keys/values are in the single-sequence ``cache`` (batch size
        1), right-aligned with the other rows."""
        offset = cache.offset
        parts = self._row_parts(cache)
        stored = 0 if parts is None else parts[0].shape[2]
        if stored > self.idx:  # more positions than columns: pad every other row on the left
            self._pad_left(stored - self.idx)
        self.base.append(offset - self.idx)
        if parts is None:
            if self.arrays is not None:
                self.arrays = [mx.concatenate([a, mx.zeros((1, *a.shape[1:]), a.dtype)])
                               for a in self.arrays]
            return
        if self.arrays is None:
            capacity = (max(self.idx, 1) + self.STEP - 1) // self.STEP * self.STEP
            self.arrays = [mx.zeros((self.batch_size - 1, p.shape[1], capacity, p.shape[3]),
                                    p.dtype) for p in parts]
        capacity = self.arrays[0].shape[2]
        rows = []
        for array, part in zip(self.arrays, parts, strict=True):
            row = mx.zeros((1, *array.shape[1:]), array.dtype)
            row[..., self.idx - stored:self.idx, :] = part.astype(array.dtype)
            rows.append(row)
        self.arrays = [mx.concatenate([a, r]) for a, r in zip(self.arrays, rows, strict=True)]
        assert self.arrays[0].shape[2] == capacity

    def _row_parts(self, cache: Any) -> list[mx.array] | None:
        """The single-sequence cache's stored positions, oldest first, in this cache's storage
        format (quantized or not); None when it holds none."""
        state = cache.state
        if not state or state[0] is None or _length(state[0]) == 0:
            return None
        if isinstance(cache, QuantizedKVCache):
            keys, values = (list(s) for s in state)
            if self.quantized == (cache.group_size, cache.bits):
                self.n_key_parts = len(keys)
                return keys + values
            dense = (mx.dequantize(*keys, group_size=cache.group_size, bits=cache.bits),
                     mx.dequantize(*values, group_size=cache.group_size, bits=cache.bits))
        else:
            dense = state
        if self.quantized is not None:
            return self._encode(*dense)
        return list(dense)

    def _pad_left(self, columns: int) -> None:
        if self.arrays is not None:
            padded = []
            for a in self.arrays:
                b, h, cap, w = a.shape
                needed = self.idx + columns
                capacity = max(cap, (needed + self.STEP - 1) // self.STEP * self.STEP)
                buffer = mx.zeros((b, h, capacity, w), a.dtype)
                if self.idx:
                    buffer[..., columns:columns + self.idx, :] = a[..., :self.idx, :]
                padded.append(buffer)
            self.arrays = padded
        self.base = [b - columns for b in self.base]
        self.idx += columns

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only the given rows (in that order); drop columns no remaining row needs."""
        self.base = [self.base[i] for i in rows]
        if not rows:
            self.arrays, self.idx, self.base = None, 0, []
            return
        if self.arrays is not None:
            index = mx.array(rows, dtype=mx.int32)
            self.arrays = [a[index] for a in self.arrays]
        self.drop_unseen()

    def first_needed_column(self, row: int) -> int:
        """The first column row ``row``'s next query can attend to."""
        base, offset = self.base[row], self.base[row] + self.idx
        if self.mode == "window":
            first = max(0, offset - self.size + 1)
        elif self.mode == "chunk":
            first = offset // self.size * self.size
        else:
            first = 0
        return max(0, first - base)

    def drop_unseen(self, at_least: int = 1) -> None:
        """Drop the leading columns no row can attend to any more, when there are at least
        ``at_least`` of them (slicing copies the buffer: the caller amortises)."""
        if not self.base or self.arrays is None:
            return
        drop = min(self.first_needed_column(i) for i in range(self.batch_size))
        drop = min(drop, self.idx)
        if drop < at_least:
            return
        kept = self.idx - drop
        capacity = (max(kept, 1) + self.STEP - 1) // self.STEP * self.STEP
        trimmed = []
        for a in self.arrays:
            b, h, _, w = a.shape
            buffer = mx.zeros((b, h, capacity, w), a.dtype)
            if kept:
                buffer[..., :kept, :] = a[..., drop:self.idx, :]
            trimmed.append(buffer)
        self.arrays = trimmed
        self.base = [b + drop for b in self.base]
        self.idx = kept

    def extract_row(self, row: int) -> KVCache | None:
        """Row ``row`` as a single-sequence :class:`KVCache` (full, unquantized mode only: the
        positions ``0 .. offset - 1`` are all stored), for the prefix cache; else None."""
        if self.mode != "full" or self.quantized is not None or self.arrays is None:
            return None
        first = -self.base[row]
        if first < 0:
            return None
        cache = KVCache()
        cache.state = tuple(a[row:row + 1, :, first:self.idx, :] for a in self.arrays)
        return cache

    @property
    def state(self) -> list[mx.array]:
        return [] if self.arrays is None else [a[..., :self.idx, :] for a in self.arrays]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays or ())


def _length(part: Any) -> int:
    """Positions held by a cache's key array (or the first array of a quantized triple)."""
    return (part[0] if isinstance(part, (tuple, list)) else part).shape[2]
