"""A prefix cache: the KV caches of recent prompts (and finished conversations), reused by a later
request that starts with the same tokens -- the next turn of a chat, a shared system prompt,
``n > 1`` choices of one prompt.

Entries are keyed by their token ids. A lookup takes the entry sharing the longest prefix with
the new prompt: caches that can be trimmed (full attention, :class:`~mlx_zoo.KVCache`) are cut
back to the common prefix; a model with sliding-window or chunked layers reuses an entry only when
its tokens are a prefix of the new prompt. Memory is bounded (``max_bytes``, least recently used
entries evicted first); lookups hand out copies, so an entry is never modified by its users.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import mlx.core as mx

from ..cache import _Cache


def _arrays(state: Any) -> list[mx.array]:
    out = []
    for item in state:
        out.extend(_arrays(item) if isinstance(item, (tuple, list)) else [item])
    return out


def cache_nbytes(cache: list) -> int:
    return sum(a.nbytes for c in cache for a in _arrays(c.state))


def copy_cache(cache: list, keep: int | None = None) -> list:
    """New cache objects with the same contents (their own array objects, so that in-place
    writes of the copy never reach the original); ``keep`` positions only, for trimmable caches."""
    copies = []
    for c in cache:
        new = type(c).__new__(type(c))
        _Cache.__init__(new)
        new.keys = new.values = None
        new.meta_state = c.meta_state
        state = c.state
        if state:
            if keep is not None and c.is_trimmable():
                state = tuple(tuple(a[..., :keep, :] for a in s) if isinstance(s, tuple)
                              else s[..., :keep, :] for s in state)
            else:
                state = tuple(tuple(mx.array(a) for a in s) if isinstance(s, tuple)
                              else mx.array(s) for s in state)
            new.state = state
        if keep is not None and c.is_trimmable():
            new.offset = min(c.offset, keep)
        copies.append(new)
    return copies


class PrefixCache:
    """LRU map from token prefixes to KV caches, at most ``max_bytes`` in total."""

    def __init__(self, max_bytes: int, max_entries: int = 256):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, ...], tuple[list, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def insert(self, tokens: Sequence[int], cache: list) -> None:
        """Remember ``cache`` (holding exactly ``tokens``); evaluated, not copied: the caller
        must not write to it afterwards (or pass a :func:`copy_cache`)."""
        if self.max_bytes <= 0 or not tokens:
            return
        key = tuple(tokens)
        size = cache_nbytes(cache)
        if size > self.max_bytes:
            return
        trimmable = all(c.is_trimmable() for c in cache)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            if trimmable:  # a longer entry serves every prefix of it: drop those it covers
                for old in [k for k in self._entries if len(k) < len(key)
                            and key[:len(k)] == k]:
                    self._bytes -= self._entries.pop(old)[1]
            self._entries[key] = (cache, size)
            self._bytes += size
            while self._entries and (self._bytes > self.max_bytes
                                     or len(self._entries) > self.max_entries):
                _, (_, freed) = self._entries.popitem(last=False)
                self._bytes -= freed

    def lookup(self, tokens: Sequence[int]) -> tuple[list | None, int]:
        """A copy of the cache sharing the longest prefix with ``tokens`` and how many leading
        tokens it holds (at most ``len(tokens) - 1``: one token is always left to feed), or
        ``(None, 0)``."""
        limit = len(tokens) - 1
        best_key, best_len = None, 0
        with self._lock:
            for key, (cache, _) in self._entries.items():
                common = 0
                for a, b in zip(key, tokens, strict=False):
                    if a != b:
                        break
                    common += 1
                common = min(common, limit)
                if all(c.is_trimmable() for c in cache):
                    usable = common
                else:
                    usable = len(key) if common == len(key) else 0
                if usable > best_len:
                    best_key, best_len = key, usable
            if best_key is None:
                self.misses += 1
                return None, 0
            self._entries.move_to_end(best_key)
            cache = self._entries[best_key][0]
            self.hits += 1
        keep = best_len if best_len < len(best_key) else None
        return copy_cache(cache, keep), best_len
