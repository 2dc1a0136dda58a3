"""Interop with mlx-lm's generation stack: the batch cache its ``BatchGenerator`` drives.

mlx-lm's ``batch_generate``, ``BatchGenerator`` and ``mlx_lm.server`` make one cache list per
sequence with the model's ``make_cache`` (mlx-zoo's caches), then call, for each layer,
``caches[0].merge([...])`` and, on the result, the batch operations below. mlx-zoo's
:class:`~mlx_zoo.KVCache`, :class:`~mlx_zoo.RotatingKVCache` and :class:`~mlx_zoo.ChunkedKVCache`
merge into a :class:`BatchCache`; models need nothing special: they read ``cache.offset`` (an
``mx.array`` of one position per row, which RoPE applies per row) and take the mask of
``mask_for(cache, n)``.

Layout. One buffer ``(B, kv_heads, capacity, head_dim)`` per keys/values; the batch writes its
next keys at column :attr:`BatchCache.idx` together. Column ``j`` of row ``b`` holds position
``j - pad[b]``: the rows are right-aligned, the first ``pad[b]`` columns of a row are left
padding (never attended to). ``pad[b]`` is negative for a sliding-window or chunked row whose
older positions were dropped before it joined: those columns hold nothing and the window or
chunk mask hides them. Bookkeeping (``pad``) is in Python ints: no device synchronisation.

The operations (mlx-lm's protocol, ``mlx_lm.models.cache``):

=====================  ==========================================================================
``merge(caches)``      single-sequence caches (with or without history) -> one batch, right-aligned
``prepare(...)``       ``right_padding``: the next input is right-padded (prompts of different
                       lengths); ``left_padding``: left-padded (empty caches only)
``finalize()``         after a right-padded prompt: each row rolled right by its padding, which
                       becomes left padding
``filter(rows)``       keep these rows; leading columns no row needs are dropped
``extend(other)``      append the rows of another batch cache
``extract(row)``       one row as a single-sequence cache of the layer's own kind
``make_mask``          ``(B, 1, n, idx + n)`` booleans: not padding, causal, in window / chunk
=====================  ==========================================================================

Sliding-window and chunked rows keep every position from the merge on (memory grows with the
generation, as a full cache's does); only :meth:`BatchCache.filter` drops columns no row can
attend to any more. Quantized caches have no batched form (mlx-lm's server serves them one
request at a time).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

MODES = ("full", "window", "chunk")
"""What a batched layer keeps: every position, a sliding window, or the current chunk. A
single-sequence cache class states its mode as ``batch_mode`` (:mod:`mlx_zoo.cache`); this
module reads that declaration instead of importing the classes, so that ``cache`` can hand its
caches to :class:`BatchCache` without an import cycle."""

WINDOW_SIZE_ATTRIBUTE = {"window": "max_size", "chunk": "chunk_size"}
"""Where a single-sequence cache of each mode keeps its window or chunk size."""


def _mode_of(cache: Any) -> tuple[str, int | None]:
    mode = getattr(type(cache), "batch_mode", None)
    if mode not in MODES:
        raise TypeError(f"{type(cache).__qualname__} has no batched form (mlx_zoo.compat."
                        "BatchCache merges KVCache, RotatingKVCache and ChunkedKVCache)")
    attribute = WINDOW_SIZE_ATTRIBUTE.get(mode)
    return mode, None if attribute is None else getattr(cache, attribute)


def _capacity(columns: int, step: int) -> int:
    return max(1, (columns + step - 1) // step) * step


class BatchCache:
    """One attention layer's keys/values for a batch of sequences (see the module docstring).

    ``mode`` is ``"full"`` (causal attention over every position), ``"window"`` (the last
    ``size`` positions, as :class:`~mlx_zoo.RotatingKVCache`) or ``"chunk"`` (positions of the
    query's chunk of ``size``, as :class:`~mlx_zoo.ChunkedKVCache`)."""

    STEP = 256  # columns allocated at a time

    def __init__(self, left_padding: list[int], mode: str = "full", size: int | None = None,
                 single: type | None = None):
        """``single``: the single-sequence cache class :meth:`extract` hands rows back as
        (set by :meth:`merge` from the caches it merges)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "full" and (size is None or size < 1):
            raise ValueError(f"mode {mode!r} needs a window/chunk size >= 1, got {size!r}")
        self.mode, self.size, self.single = mode, size, single
        self.pad = [int(p) for p in left_padding]
        self.idx = 0  # columns in use
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self._right: list[int] | None = None  # right padding of the input being prefilled

    # -- what the model reads ----------------------------------------------------------------

    @property
    def offsets(self) -> list[int]:
        """Per row, the position of the next query (Python ints)."""
        return [self.idx - p for p in self.pad]

    @property
    def offset(self) -> mx.array:
        """Per-row positions of the next query, ``(B,)`` int32: RoPE rotates each row by its own."""
        return mx.array(self.offsets, dtype=mx.int32)

    def make_mask(self, n: int, return_array: bool = False,
                  window_size: int | None = None) -> mx.array:
        """``(B, 1, n, idx + n)`` booleans: True where a query may attend to a column (always an
        array: rows differ). ``window_size`` (mlx-lm's option) narrows any mode to a window."""
        pad = mx.array(self.pad, dtype=mx.int32)[:, None, None, None]
        column = mx.arange(self.idx + n, dtype=mx.int32)[None, None, None, :]
        query = (self.idx + mx.arange(n, dtype=mx.int32))[None, None, :, None]
        visible = (column >= pad) & (column <= query)
        window = self.size if self.mode == "window" else None
        if window_size is not None:
            window = window_size if window is None else min(window, window_size)
        if window is not None:
            visible = visible & (query - column < window)
        if self.mode == "chunk":
            visible = visible & ((column - pad) // self.size == (query - pad) // self.size)
        return visible

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        n = keys.shape[2]
        if self.keys is None or self.idx + n > self.keys.shape[2]:
            self._resize(keys, values, self.idx + n)
        self.keys[..., self.idx:self.idx + n, :] = keys
        self.values[..., self.idx:self.idx + n, :] = values
        self.idx += n
        return self.keys[..., :self.idx, :], self.values[..., :self.idx, :]

    def _resize(self, keys: mx.array, values: mx.array, needed: int, shift: int = 0) -> None:
        """Buffers with room for ``needed`` columns, holding the used ones moved right by
        ``shift`` columns."""
        capacity = _capacity(needed, self.STEP)
        rows, heads = keys.shape[:2]
        new_k = mx.zeros((rows, heads, capacity, keys.shape[3]), keys.dtype)
        new_v = mx.zeros((rows, heads, capacity, values.shape[3]), values.dtype)
        if self.keys is not None and self.idx:
            new_k[..., shift:shift + self.idx, :] = self.keys[..., :self.idx, :]
            new_v[..., shift:shift + self.idx, :] = self.values[..., :self.idx, :]
        self.keys, self.values = new_k, new_v

    # -- mlx-lm's protocol -------------------------------------------------------------------

    @property
    def state(self) -> tuple[mx.array, mx.array] | tuple:
        if self.keys is None:
            return ()
        return self.keys[..., :self.idx, :], self.values[..., :self.idx, :]

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    def size(self) -> int:
        return self.idx

    def empty(self) -> bool:
        return self.keys is None

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
        modes = {_mode_of(c) for c in caches}
        if len(modes) != 1:
            raise ValueError(f"cannot batch caches of different kinds: {sorted(map(str, modes))}")
        (mode, size), = modes
        rows = []
        for c in caches:
            state = c.state
            stored = state[0].shape[2] if state else 0
            rows.append((state, stored, c.offset))
        idx = max(stored for _, stored, _ in rows)
        batch = cls([idx - offset for _, _, offset in rows], mode, size, type(caches[0]))
        if idx == 0:
            return batch
        first = next(state for state, stored, _ in rows if stored)
        keys, values = first
        batch.keys = mx.zeros((len(rows), keys.shape[1], _capacity(idx, cls.STEP),
                               keys.shape[3]), keys.dtype)
        batch.values = mx.zeros((len(rows), values.shape[1], batch.keys.shape[2],
                                 values.shape[3]), values.dtype)
        for b, (state, stored, _) in enumerate(rows):
            if stored:
                batch.keys[b:b + 1, :, idx - stored:idx, :] = state[0]
                batch.values[b:b + 1, :, idx - stored:idx, :] = state[1]
        batch.idx = idx
        return batch

    def prepare(self, *, left_padding: list[int] | None = None, lengths: Any = None,
                right_padding: list[int] | None = None) -> None:
        """Before a batched input: ``left_padding`` (only on an empty cache) marks the first
        columns of each row as padding; ``right_padding`` says how many trailing tokens of each
        row's input are padding, rolled to the front by :meth:`finalize`. ``lengths`` (used by
        mlx-lm's state-space caches) is not needed here."""
        if left_padding is not None:
            if self.keys is not None:
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
        if self.keys is None or self.idx == 0:
            return
        shifts = mx.array(right, dtype=mx.int32)[:, None]
        source = (mx.arange(self.idx, dtype=mx.int32)[None] - shifts) % self.idx  # (B, idx)
        index = source[:, None, :, None]
        keys = mx.take_along_axis(self.keys[..., :self.idx, :], index, axis=2)
        values = mx.take_along_axis(self.values[..., :self.idx, :], index, axis=2)
        self.keys, self.values = keys, values
        self.pad = [p + r for p, r in zip(self.pad, right, strict=True)]

    def _first_needed(self, row: int) -> int:
        """The first column row ``row``'s next query may attend to."""
        offset = self.idx - self.pad[row]
        if self.mode == "window":
            first = max(0, offset - self.size + 1)
        elif self.mode == "chunk":
            first = offset // self.size * self.size
        else:
            first = 0
        return max(0, first + self.pad[row])

    def filter(self, batch_indices: list[int] | mx.array) -> None:
        """Keep only the given rows (in that order), then drop the leading columns none of them
        can attend to any more."""
        rows = [int(i) for i in (batch_indices.tolist() if isinstance(batch_indices, mx.array)
                                 else batch_indices)]
        self.pad = [self.pad[i] for i in rows]
        if self.keys is not None:
            index = mx.array(rows, dtype=mx.int32)
            self.keys, self.values = self.keys[index], self.values[index]
        if not rows:
            return
        drop = min(min(self._first_needed(r) for r in range(len(rows))), self.idx)
        if drop > 0:
            if self.keys is not None:
                self.keys = self.keys[..., drop:self.idx, :]
                self.values = self.values[..., drop:self.idx, :]
            self.idx -= drop
            self.pad = [p - drop for p in self.pad]

    def extend(self, other: BatchCache) -> None:
        """Append the rows of ``other`` (same kind), right-aligned with these."""
        if (self.mode, self.size) != (other.mode, other.size):
            raise ValueError(f"cannot extend a {self.mode} batch cache with a {other.mode} one")
        idx = max(self.idx, other.idx)
        like = self if self.keys is not None else other
        if like.keys is None:  # neither holds keys yet: only the bookkeeping
            self.pad = ([p + idx - self.idx for p in self.pad]
                        + [p + idx - other.idx for p in other.pad])
            self.idx = idx
            return
        parts_k, parts_v = [], []
        for c in (self, other):
            rows = len(c.pad)
            k = mx.zeros((rows, like.keys.shape[1], idx, like.keys.shape[3]), like.keys.dtype)
            v = mx.zeros((rows, like.values.shape[1], idx, like.values.shape[3]),
                         like.values.dtype)
            if c.keys is not None and c.idx:
                k[..., idx - c.idx:, :] = c.keys[..., :c.idx, :]
                v[..., idx - c.idx:, :] = c.values[..., :c.idx, :]
            parts_k.append(k)
            parts_v.append(v)
        self.keys = mx.concatenate(parts_k)
        self.values = mx.concatenate(parts_v)
        self.pad = ([p + idx - self.idx for p in self.pad]
                    + [p + idx - other.idx for p in other.pad])
        self.idx = idx

    def extract(self, idx: int) -> Any:
        """Row ``idx`` as a single-sequence cache of the layer's own kind (what mlx-lm hands
        back for a finished sequence and the server keeps in its prompt cache)."""
        if self.single is None:
            raise ValueError("this BatchCache was not made by merge(): it does not know which "
                             "single-sequence cache class to hand rows back as")
        pad, offset = self.pad[idx], self.idx - self.pad[idx]
        if self.mode == "full":
            cache, first = self.single(), max(pad, 0)
        elif self.mode == "window":
            cache = self.single(self.size)
            first = max(self.idx - self.size, pad, 0)
        else:
            cache = self.single(self.size)
            cache.start = offset // self.size * self.size
            first = max(pad + cache.start, 0)
        if self.keys is not None and first < self.idx:
            cache.keys = mx.contiguous(self.keys[idx:idx + 1, :, first:self.idx, :])
            cache.values = mx.contiguous(self.values[idx:idx + 1, :, first:self.idx, :])
        cache.offset = offset
        return cache
