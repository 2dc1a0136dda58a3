"""Batched KV caches: one attention layer's keys/values for every sequence of a batch.

One class, :class:`BatchCache`, serves both batch drivers: mlx-lm's ``BatchGenerator`` /
``mlx_lm.server`` (through ``merge`` on mlx-zoo's single-sequence caches, :mod:`mlx_zoo.compat`)
and ``mlx-zoo serve``'s engine (:mod:`mlx_zoo.serve.engine`). Models need nothing special: they
read ``cache.offset`` (an ``mx.array`` of one position per row, which RoPE applies per row), take
the mask of ``mask_for(cache, n)`` and call ``update_and_fetch`` as with one sequence.

Layout. One buffer ``(B, kv_heads, capacity, head_dim)`` per keys/values (with ``quantized``, the
``mx.quantize`` parts of each); the batch writes its next keys at column :attr:`BatchCache.idx`
together. Column ``j`` of row ``b`` holds position ``j - pad[b]``: the rows are right-aligned,
the first ``pad[b]`` columns of a row are left padding (never attended to). ``pad[b]`` is
negative for a sliding-window or chunked row whose older positions were dropped before it
joined: those columns hold nothing and the window or chunk mask hides them. Bookkeeping
(``pad``, ``idx``) is in Python ints: no device synchronisation.

=====================  ==========================================================================
``merge(caches)``      single-sequence caches (with or without history) -> one batch, right-aligned
``like(cache)``        an empty batch of a single-sequence cache's kind (``kv_bits``: quantized)
``add_row(cache)``     append one sequence from its single-sequence cache; a newcomer storing more
                       positions than the batch has columns pads the other rows on the left
``extend(other)``      append the rows of another batch cache
``filter(rows)``       keep these rows; leading columns no row needs any more are dropped
``drop_unseen()``      drop leading columns no row can attend to (window/chunk keys gone by)
``extract(row)``       one row as a single-sequence cache of the layer's own kind
``prepare(...)``       ``right_padding``: the next input is right-padded (prompts of different
                       lengths); ``left_padding``: left-padded (empty caches only)
``finalize()``         after a right-padded input: each row rolled right by its padding, which
                       becomes left padding
``make_mask(n)``       ``(B, 1, n, idx + n)`` booleans: not padding, causal, in window / chunk
                       (None for one query of a full-attention batch without padding)
=====================  ==========================================================================

``mode`` is what a layer keeps: ``"full"`` (causal attention over every position), ``"window"``
(the last ``window`` positions, as :class:`~mlx_zoo.RotatingKVCache`) or ``"chunk"`` (positions of
the query's chunk of ``window``, as :class:`~mlx_zoo.ChunkedKVCache`). A single-sequence cache
class declares its mode as ``batch_mode``; a quantized one (``group_size`` and ``bits``
attributes, state of ``mx.quantize`` triples, as :class:`~mlx_zoo.QuantizedKVCache`) batches as
``"full"`` with quantized storage. This module reads those declarations instead of importing the
classes, so that :mod:`mlx_zoo.cache` can hand its caches to it without an import cycle.

With ``quantized=(group_size, bits)`` (``--kv-bits``) the buffers hold ``mx.quantize`` parts and
are dequantized for attention: the batch's memory is the quantized one, the attention kernel the
plain one. Window and chunk rows keep every position until :meth:`BatchCache.drop_unseen` or
:meth:`BatchCache.filter` drops those no row can attend to any more.

Masks and offsets are remembered by a :class:`MaskMemo` each cache holds (``cache.memo``): the
layer caches of one batch share one (:func:`share_memo`; the serve engine does), so that a step
builds them once for all layers. The module keeps no state of its own: a batch behaves the same
whichever thread runs it. (mlx-lm merges each layer on its own: there, each layer has its memo.)
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

MODES = ("full", "window", "chunk")
"""What a batched layer keeps: every position, a sliding window, or the current chunk."""

WINDOW_SIZE_ATTRIBUTE = {"window": "max_size", "chunk": "chunk_size"}
"""Where a single-sequence cache of each mode keeps its window or chunk size."""


def layout_of(cache: Any) -> tuple[str, int | None, tuple[int, int] | None]:
    """``(mode, window or chunk size, (group_size, bits) or None)`` of a single-sequence cache,
    from its class's declared ``batch_mode`` (or its quantization attributes)."""
    mode = getattr(type(cache), "batch_mode", None)
    if mode in MODES:
        attribute = WINDOW_SIZE_ATTRIBUTE.get(mode)
        return mode, None if attribute is None else getattr(cache, attribute), None
    group, bits = getattr(cache, "group_size", None), getattr(cache, "bits", None)
    if mode is None and isinstance(group, int) and isinstance(bits, int):
        return "full", None, (group, bits)
    raise TypeError(f"{type(cache).__qualname__} has no batched form (mlx_zoo.batch_cache."
                    "BatchCache takes KVCache, RotatingKVCache, ChunkedKVCache and "
                    "QuantizedKVCache)")


def _capacity(columns: int, step: int) -> int:
    return max(1, (columns + step - 1) // step) * step


class MaskMemo:
    """Recent masks and offsets of batched layers, by everything they depend on (mode, window,
    columns, padding, query count): the layer caches of one batch share one memo (given to each
    by :func:`share_memo` or the ``memo`` argument), so that a model step builds its mask and
    its ``(B,)`` offsets once, not once per layer. A pure function cache: caches that share a
    memo never see each other's state through it. At most ``size`` entries (emptied when full:
    one step adds one or two)."""

    def __init__(self, size: int = 16):
        self.size = size
        self._found: dict[tuple, Any] = {}

    def __len__(self) -> int:
        return len(self._found)

    def get(self, key: tuple, build: Any) -> Any:
        """The value remembered for ``key``, else ``build()`` remembered."""
        found = self._found.get(key)
        if found is None:
            if len(self._found) >= self.size:
                self._found.clear()
            found = self._found[key] = build()
        return found

    def clear(self) -> None:
        """Forget every entry (a thread that ends hands no MLX arrays to the interpreter's exit
        through a memo it leaves behind: the serve engine clears its memo when its loop ends)."""
        self._found.clear()


def share_memo(caches: list[BatchCache], memo: MaskMemo | None = None) -> MaskMemo:
    """Make the layer caches ``caches`` (of one batch) use one memo -- ``memo``, or a new one --
    and return it."""
    memo = memo if memo is not None else MaskMemo()
    for cache in caches:
        cache.memo = memo
    return memo


class BatchCache:
    """One attention layer's keys/values for a batch of sequences (see the module docstring)."""

    STEP = 256  # columns allocated at a time

    def __init__(self, left_padding: Any = (), mode: str = "full", size: int | None = None,
                 single: type | None = None, quantized: tuple[int, int] | None = None,
                 memo: MaskMemo | None = None):
        """``size``: the window or chunk size (``"window"`` / ``"chunk"`` modes); ``single``: the
        single-sequence cache class :meth:`extract` hands rows back as; ``quantized``:
        ``(group_size, bits)`` of the stored keys/values; ``memo``: the :class:`MaskMemo` shared
        with the batch's other layers (default: one of its own)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "full" and (size is None or size < 1):
            raise ValueError(f"mode {mode!r} needs a window/chunk size >= 1, got {size!r}")
        self.mode, self.window, self.single, self.quantized = mode, size, single, quantized
        self.pad = [int(p) for p in left_padding]
        self.idx = 0  # columns in use
        self.parts: list[mx.array] | None = None  # the keys' parts, then the values'
        self.n_key_parts = 1 if quantized is None else 3
        self._right: list[int] | None = None  # right padding of the input being prefilled
        self.memo = memo if memo is not None else MaskMemo()

    @classmethod
    def like(cls, cache: Any, kv_bits: int | None = None, kv_group_size: int = 64,
             memo: MaskMemo | None = None) -> BatchCache:
        """An empty batch for single-sequence caches of ``cache``'s kind; ``kv_bits`` stores a
        full-attention layer quantized; ``memo``: shared with the batch's other layers."""
        mode, size, quantized = layout_of(cache)
        if quantized is None and mode == "full" and kv_bits is not None:
            quantized = (kv_group_size, kv_bits)
        return cls((), mode, size, type(cache), quantized, memo)

    # -- what the model reads ----------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return len(self.pad)

    @property
    def offsets(self) -> list[int]:
        """Per row, the position of the next query (Python ints)."""
        return [self.idx - p for p in self.pad]

    @property
    def offset(self) -> mx.array:
        """Per-row positions of the next query, ``(B,)`` int32: RoPE rotates each row by its own."""
        return self.memo.get(("offset", self.idx, *self.pad),
                             lambda: mx.array(self.offsets, dtype=mx.int32))

    def make_mask(self, n: int, return_array: bool = False,
                  window_size: int | None = None) -> mx.array | None:
        """``(B, 1, n, idx + n)`` booleans: True where a query may attend to a column; None for
        one query of a full-attention batch with no padding. ``window_size`` (mlx-lm's option)
        narrows any mode to a window."""
        if (n == 1 and self.mode == "full" and window_size is None and not return_array
                and not any(self.pad)):
            return None
        key = ("mask", self.mode, self.window, self.idx, n, window_size, *self.pad)
        return self.memo.get(key, lambda: self._mask(n, window_size))

    def _mask(self, n: int, window_size: int | None) -> mx.array:
        pad = mx.array(self.pad, dtype=mx.int32)[:, None, None, None]
        column = mx.arange(self.idx + n, dtype=mx.int32)[None, None, None, :]
        query = (self.idx + mx.arange(n, dtype=mx.int32))[None, None, :, None]
        visible = (column >= pad) & (column <= query)
        window = self.window if self.mode == "window" else None
        if window_size is not None:
            window = window_size if window is None else min(window, window_size)
        if window is not None:
            visible = visible & (query - column < window)
        if self.mode == "chunk":
            visible = visible & ((column - pad) // self.window == (query - pad) // self.window)
        return visible

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[Any, Any]:
        n = keys.shape[2]
        new = self._encode(keys, values)
        if self.parts is None or self.idx + n > self.parts[0].shape[2]:
            self._reserve(new, self.idx + n)
        for stored, part in zip(self.parts, new, strict=True):
            stored[..., self.idx:self.idx + n, :] = part
        self.idx += n
        return self._decode([a[..., :self.idx, :] for a in self.parts], keys.dtype)

    # -- storage -------------------------------------------------------------------------------

    def _encode(self, keys: mx.array, values: mx.array) -> list[mx.array]:
        """Keys and values in this batch's storage format (their quantized parts, or as is)."""
        if self.quantized is None:
            return [keys, values]
        group, bits = self.quantized
        qk = list(mx.quantize(keys, group_size=group, bits=bits))
        self.n_key_parts = len(qk)
        return qk + list(mx.quantize(values, group_size=group, bits=bits))

    def _decode(self, parts: list[mx.array], dtype: Any) -> tuple[mx.array, mx.array]:
        if self.quantized is None:
            return parts[0], parts[1]
        group, bits = self.quantized
        k, v = parts[:self.n_key_parts], parts[self.n_key_parts:]
        return (mx.dequantize(*k, group_size=group, bits=bits).astype(dtype),
                mx.dequantize(*v, group_size=group, bits=bits).astype(dtype))

    def _reserve(self, like: list[mx.array], needed: int) -> None:
        """Buffers with room for ``needed`` columns (rounded up to :attr:`STEP`), holding the
        used ones."""
        capacity = _capacity(needed, self.STEP)
        grown = []
        for i, part in enumerate(like):
            rows, heads, _, width = part.shape
            buffer = mx.zeros((rows, heads, capacity, width), part.dtype)
            if self.parts is not None and self.idx:
                buffer[..., :self.idx, :] = self.parts[i][..., :self.idx, :]
            grown.append(buffer)
        self.parts = grown

    def _row_parts(self, cache: Any) -> list[mx.array] | None:
        """A single-sequence cache's stored positions, oldest first, in this batch's storage
        format; None when it holds none."""
        state = cache.state
        if not state or state[0] is None:
            return None
        keys, values = state
        if isinstance(keys, (tuple, list)):  # quantized triples
            if keys[0].shape[2] == 0:
                return None
            if self.quantized == (cache.group_size, cache.bits):
                self.n_key_parts = len(keys)
                return [*keys, *values]
            keys, values = (mx.dequantize(*p, group_size=cache.group_size, bits=cache.bits)
                            for p in (keys, values))
        if keys.shape[2] == 0:
            return None
        return self._encode(keys, values)

    # -- mlx-lm's protocol -------------------------------------------------------------------

    @property
    def state(self) -> tuple:
        if self.parts is None:
            return ()
        used = [a[..., :self.idx, :] for a in self.parts]
        if self.quantized is None:
            return used[0], used[1]
        return tuple(used[:self.n_key_parts]), tuple(used[self.n_key_parts:])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.parts or ())

    def size(self) -> int:
        return self.idx

    def empty(self) -> bool:
        return self.parts is None

    def is_trimmable(self) -> bool:
        return self.mode == "full"

    def trim(self, n: int) -> int:
        """Forget the last ``n`` columns of every row."""
        n = min(self.idx, n)
        self.idx -= n
        return n

    @classmethod
    def merge(cls, caches: list) -> BatchCache:
        """One batch of the single-sequence caches ``caches`` (one layer each, all of one kind),
        right-aligned: each keeps its stored positions and offset."""
        layouts = {layout_of(c) for c in caches}
        if len(layouts) != 1:
            raise ValueError(f"cannot batch caches of different kinds: {sorted(map(str, layouts))}")
        (mode, size, quantized), = layouts
        batch = cls((), mode, size, type(caches[0]), quantized)
        batch._fill(caches)
        return batch

    def _fill(self, caches: list) -> None:
        """Make this (empty) batch hold ``caches``, right-aligned."""
        rows = [(self._row_parts(c), c.offset) for c in caches]
        stored = [0 if parts is None else parts[0].shape[2] for parts, _ in rows]
        self.idx = max(stored, default=0)
        self.pad = [self.idx - offset for _, offset in rows]
        like = next((parts for parts, _ in rows if parts is not None), None)
        if like is None:
            return
        capacity = _capacity(self.idx, self.STEP)
        self.parts = [mx.zeros((len(rows), p.shape[1], capacity, p.shape[3]), p.dtype)
                      for p in like]
        for b, ((parts, _), n) in enumerate(zip(rows, stored, strict=True)):
            if parts is None:
                continue
            for buffer, part in zip(self.parts, parts, strict=True):
                buffer[b:b + 1, :, self.idx - n:self.idx, :] = part.astype(buffer.dtype)

    def add_row(self, cache: Any) -> None:
        """Append the sequence held by the single-sequence ``cache`` (batch size 1) as the last
        row, stored in this batch's format."""
        mode, size, _ = layout_of(cache)
        if (mode, size) != (self.mode, self.window):
            raise ValueError(f"cannot add a {mode} cache to a {self.mode} batch cache")
        row = type(self)((), self.mode, self.window, self.single, self.quantized, self.memo)
        row._fill([cache])
        self.extend(row)

    def prepare(self, *, left_padding: list[int] | None = None, lengths: Any = None,
                right_padding: list[int] | None = None) -> None:
        """Before a batched input: ``left_padding`` (only on an empty cache) marks the first
        columns of each row as padding; ``right_padding`` says how many trailing tokens of each
        row's input are padding, rolled to the front by :meth:`finalize`. ``lengths`` (used by
        mlx-lm's state-space caches) is not needed here."""
        if left_padding is not None:
            if self.parts is not None:
                raise ValueError("left padding can only be added to an empty batch cache")
            self.pad = [p + int(extra) for p, extra in zip(self.pad, left_padding, strict=True)]
        if right_padding is not None and max(right_padding) > 0:
            self._right = [int(r) for r in right_padding]

    def finalize(self) -> None:
        """After a right-padded input: roll each row right by its padding (the padding's keys
        land in front, where they count as left padding)."""
        if self._right is None:
            return
        right, self._right = self._right, None
        if self.parts is None or self.idx == 0:
            return
        shifts = mx.array(right, dtype=mx.int32)[:, None]
        source = (mx.arange(self.idx, dtype=mx.int32)[None] - shifts) % self.idx  # (B, idx)
        index = source[:, None, :, None]
        self.parts = [mx.take_along_axis(a[..., :self.idx, :], index, axis=2)
                      for a in self.parts]
        self.pad = [p + r for p, r in zip(self.pad, right, strict=True)]

    def _first_needed(self, row: int) -> int:
        """The first column row ``row``'s next query may attend to."""
        offset = self.idx - self.pad[row]
        if self.mode == "window":
            first = max(0, offset - self.window + 1)
        elif self.mode == "chunk":
            first = offset // self.window * self.window
        else:
            first = 0
        return max(0, first + self.pad[row])

    def filter(self, batch_indices: list[int] | mx.array) -> None:
        """Keep only the given rows (in that order), then drop the leading columns none of them
        can attend to any more."""
        rows = [int(i) for i in (batch_indices.tolist() if isinstance(batch_indices, mx.array)
                                 else batch_indices)]
        if not rows:
            self.parts, self.idx, self.pad = None, 0, []
            return
        if rows != list(range(self.batch_size)):
            self.pad = [self.pad[i] for i in rows]
            if self.parts is not None:
                index = mx.array(rows, dtype=mx.int32)
                self.parts = [a[index] for a in self.parts]
        self.drop_unseen()

    def drop_unseen(self, at_least: int = 1) -> None:
        """Drop the leading columns no row can attend to any more, when there are at least
        ``at_least`` of them (the next write copies the buffer: a caller dropping after every
        step amortises with a larger ``at_least``)."""
        if not self.pad:
            return
        drop = min(min(self._first_needed(r) for r in range(self.batch_size)), self.idx)
        if drop < at_least:
            return
        if self.parts is not None:
            self.parts = [a[..., drop:self.idx, :] for a in self.parts]
        self.idx -= drop
        self.pad = [p - drop for p in self.pad]

    def extend(self, other: BatchCache) -> None:
        """Append the rows of ``other`` (same kind), right-aligned with these."""
        if (self.mode, self.window, self.quantized) != (other.mode, other.window,
                                                        other.quantized):
            raise ValueError(f"cannot extend a {self.mode} batch cache with a {other.mode} one")
        idx = max(self.idx, other.idx)
        source = self if self.parts is not None else other
        like = source.parts
        if like is not None:
            self.n_key_parts = source.n_key_parts
            capacity = _capacity(idx, self.STEP)
            blocks = []
            for c in (self, other):
                arrays = [mx.zeros((c.batch_size, p.shape[1], capacity, p.shape[3]), p.dtype)
                          for p in like]
                if c.parts is not None and c.idx:
                    for buffer, part in zip(arrays, c.parts, strict=True):
                        buffer[..., idx - c.idx:idx, :] = part[..., :c.idx, :].astype(
                            buffer.dtype)
                blocks.append(arrays)
            self.parts = [mx.concatenate(pair) for pair in zip(*blocks, strict=True)]
        self.pad = ([p + idx - self.idx for p in self.pad]
                    + [p + idx - other.idx for p in other.pad])
        self.idx = idx

    def extract(self, idx: int) -> Any:
        """Row ``idx`` as a single-sequence cache of the layer's own kind (what mlx-lm hands
        back for a finished sequence and the servers keep in their prompt caches); unquantized
        batches only."""
        if self.single is None:
            raise ValueError("this BatchCache does not know which single-sequence cache class "
                             "to hand rows back as (made by merge() or like(), it does)")
        if self.quantized is not None:
            raise ValueError("a quantized BatchCache hands no rows back")
        pad, offset = self.pad[idx], self.idx - self.pad[idx]
        if self.mode == "full":
            cache, first = self.single(), max(pad, 0)
        elif self.mode == "window":
            cache = self.single(self.window)
            first = max(self.idx - self.window, pad, 0)
        else:
            cache = self.single(self.window)
            cache.start = offset // self.window * self.window
            first = max(pad + cache.start, 0)
        if self.parts is not None and first < self.idx:
            cache.keys, cache.values = (mx.contiguous(a[idx:idx + 1, :, first:self.idx, :])
                                        for a in self.parts)
        cache.offset = offset
        return cache
