"""Caches: feeding a sequence through a cache in pieces gives the same attention output as one
pass with the equivalent explicit mask; prompt caches round-trip through a file."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_zoo
from mlx_zoo import CacheFileError, ChunkedKVCache, KVCache, QuantizedKVCache, RotatingKVCache
from mlx_zoo.cache import chunked_causal_mask
from mlx_zoo.testing import relative_error as rel_err

LENGTH, HEADS, KV_HEADS, DIM = 45, 4, 2, 32
PIECES = [13, 6, 1, 1, 1, 9, 1, 1, 4, 1, 1, 1, 5]  # prefill, chunks and single steps


def qkv(seed=0):
    mx.random.seed(seed)
    q = mx.random.normal((1, HEADS, LENGTH, DIM)) * 2
    k = mx.random.normal((1, KV_HEADS, LENGTH, DIM)) * 2
    v = mx.random.normal((1, KV_HEADS, LENGTH, DIM))
    return q, k, v


def full_attention(q, k, v, allowed: np.ndarray) -> np.ndarray:
    return np.array(mx.fast.scaled_dot_product_attention(q, k, v, scale=DIM**-0.5,
                                                         mask=mx.array(allowed)))


def through_cache(cache, q, k, v) -> np.ndarray:
    assert sum(PIECES) == LENGTH
    outs, start = [], 0
    for n in PIECES:
        mask = cache.make_mask(n)
        keys, values = cache.update_and_fetch(k[:, :, start:start + n], v[:, :, start:start + n])
        outs.append(np.array(mlx_zoo.attention(q[:, :, start:start + n], keys, values,
                                               scale=DIM**-0.5, mask=mask, cache=cache)))
        start += n
    return np.concatenate(outs, axis=2)


def positions():
    pos = np.arange(LENGTH)
    return pos[:, None], pos[None]


def test_kv_cache_matches_causal_attention():
    q, k, v = qkv()
    query, key = positions()
    ref = full_attention(q, k, v, key <= query)
    assert rel_err(through_cache(KVCache(), q, k, v), ref) < 1e-5


def test_kv_cache_grows_past_its_step():
    cache = KVCache()
    k = mx.ones((1, 1, KVCache.STEP + 3, 4))
    keys, _ = cache.update_and_fetch(k, k)
    assert keys.shape[2] == KVCache.STEP + 3 and cache.offset == KVCache.STEP + 3
    assert cache.trim(3) == 3 and cache.offset == KVCache.STEP


@pytest.mark.parametrize("window", [4, 8, 16])
def test_rotating_cache_matches_sliding_window(window):
    q, k, v = qkv(1)
    query, key = positions()
    ref = full_attention(q, k, v, (key <= query) & (query - key < window))
    ours = through_cache(RotatingKVCache(max_size=window), q, k, v)
    assert rel_err(ours, ref) < 1e-5
    # and the window matters: plain causal attention differs
    assert rel_err(full_attention(q, k, v, key <= query), ref) > 1e-2


@pytest.mark.parametrize("chunk", [4, 7, 16])
def test_chunked_cache_matches_chunked_attention(chunk):
    q, k, v = qkv(2)
    query, key = positions()
    ref = full_attention(q, k, v, (key <= query) & (key // chunk == query // chunk))
    cache = ChunkedKVCache(chunk_size=chunk)
    assert rel_err(through_cache(cache, q, k, v), ref) < 1e-5
    assert cache.keys.shape[2] == LENGTH % chunk or cache.keys.shape[2] == chunk
    assert rel_err(full_attention(q, k, v, key <= query), ref) > 1e-2


def test_chunked_mask_helper():
    mask = np.array(chunked_causal_mask(offset=6, n=3, stored=2, chunk_size=4))
    # queries at 6, 7, 8; keys at 4..8; chunks [4..7] and [8..]
    expected = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.skipif(
    mx.default_device() == mx.gpu and not mx.metal.is_available(),
    reason="MLX 0.32.4's CUDA quantized_matmul has no kernel for float32 activations of this tiny "
           "shape (13x13x32, 8 bits, group 32): 'No implementation for problem shape'")
def test_quantized_cache_close_to_full_precision():
    q, k, v = qkv(3)
    query, key = positions()
    ref = full_attention(q, k, v, key <= query)
    ours = through_cache(QuantizedKVCache(group_size=32, bits=8), q, k, v)
    assert rel_err(ours, ref) < 2e-2


def test_quantized_cache_writes_in_place_across_steps_and_trims():
    """Keys/values written a few positions at a time, past the preallocation step, read back
    exactly as quantizing the whole sequence at once (groups run within a position); trimming
    forgets the last positions, and writing after it equals never having written them."""
    group, bits, total = 32, 8, QuantizedKVCache.STEP + 40
    k = mx.random.normal((1, 2, total, 32))
    v = mx.random.normal((1, 2, total, 32))
    cache = QuantizedKVCache(group_size=group, bits=bits)
    for start in range(0, total, 7):
        keys, values = cache.update_and_fetch(k[:, :, start:start + 7], v[:, :, start:start + 7])
    assert cache.offset == total and cache.keys[0].shape[2] == 2 * QuantizedKVCache.STEP
    for got, expected in ((keys, mx.quantize(k, group_size=group, bits=bits)),
                          (values, mx.quantize(v, group_size=group, bits=bits))):
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(np.array(a), np.array(b))

    assert cache.is_trimmable() and cache.trim(10) == 10 and cache.offset == total - 10
    other = mx.random.normal((1, 2, 3, 32))
    keys, _ = cache.update_and_fetch(other, other)
    fresh = QuantizedKVCache(group_size=group, bits=bits)
    expected, _ = fresh.update_and_fetch(mx.concatenate([k[:, :, :total - 10], other], axis=2),
                                         mx.concatenate([v[:, :, :total - 10], other], axis=2))
    for a, b in zip(keys, expected, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def test_kv_cache_converts_to_quantized():
    cache = KVCache()
    k = mx.random.normal((1, 2, 10, 32))
    cache.update_and_fetch(k, k)
    quantized = cache.to_quantized(group_size=32, bits=8)
    assert quantized.offset == 10 and quantized.keys[0].dtype == mx.uint32


def test_prompt_cache_round_trip(tmp_path):
    q, k, v = qkv(4)
    caches = [KVCache(), RotatingKVCache(8), ChunkedKVCache(5), QuantizedKVCache(32, 8),
              KVCache()]  # the last one stays empty
    for c in caches[:-1]:
        c.update_and_fetch(k[:, :, :23], v[:, :, :23])
    path = tmp_path / "prompt.safetensors"
    mlx_zoo.save_prompt_cache(path, caches, {"model": "tiny"})
    loaded, meta = mlx_zoo.load_prompt_cache(path, return_metadata=True)
    assert meta == {"model": "tiny"}
    assert [type(c) for c in loaded] == [type(c) for c in caches]
    for a, b in zip(caches, loaded, strict=True):
        assert a.meta_state == b.meta_state
        saved, restored = tree_flatten(list(a.state)), tree_flatten(list(b.state))
        assert [name for name, _ in saved] == [name for name, _ in restored]
        for (_, x), (_, y) in zip(saved, restored, strict=True):
            np.testing.assert_array_equal(np.array(x), np.array(y))
    # continuing from the reloaded caches equals continuing from the originals
    for a, b in zip(caches[:-1], loaded[:-1], strict=True):
        ka, _ = a.update_and_fetch(k[:, :, 23:24], v[:, :, 23:24])
        kb, _ = b.update_and_fetch(k[:, :, 23:24], v[:, :, 23:24])
        xs, ys = (t if isinstance(t, tuple) else [t] for t in (ka, kb))
        for x, y in zip(xs, ys, strict=True):
            np.testing.assert_array_equal(np.array(x), np.array(y))


def test_plugin_cache_class_round_trips_by_registered_name(tmp_path, tiny_checkpoint):
    model, _ = mlx_zoo.load(tiny_checkpoint)
    cache = mlx_zoo.make_prompt_cache(model)
    model(mx.array([[1, 2, 3]]), cache)
    mlx_zoo.save_prompt_cache(tmp_path / "c.safetensors", cache)
    loaded = mlx_zoo.load_prompt_cache(tmp_path / "c.safetensors")
    assert type(loaded[0]).__name__ == "TaggedKVCache" and loaded[0].offset == 3
    # the continuation from the reloaded cache equals a fresh full forward
    full = np.array(model(mx.array([[1, 2, 3, 4]])))[:, -1]
    step = np.array(model(mx.array([[4]]), loaded))[:, -1]
    assert rel_err(step, full) < 1e-5


def test_unknown_cache_class_in_file(tmp_path):
    class Unregistered(KVCache):
        pass

    with pytest.raises(CacheFileError, match="not registered"):
        mlx_zoo.save_prompt_cache(tmp_path / "x.safetensors", [Unregistered()])
    cache = KVCache()
    cache.update_and_fetch(mx.zeros((1, 1, 2, 4)), mx.zeros((1, 1, 2, 4)))
    path = tmp_path / "x.safetensors"
    mlx_zoo.save_prompt_cache(path, [cache])
    arrays, header = mx.load(str(path), return_metadata=True)
    header["layers"] = header["layers"].replace("mlx_zoo.KVCache", "someplugin.Gone")
    mx.save_safetensors(str(path), arrays, metadata=header)
    with pytest.raises(CacheFileError, match="'someplugin.Gone', which no installed plugin"):
        mlx_zoo.load_prompt_cache(path)


def test_not_a_prompt_cache_file(tmp_path):
    mx.save_safetensors(str(tmp_path / "w.safetensors"), {"a": mx.zeros(2)})
    with pytest.raises(CacheFileError, match="key 'format'"):
        mlx_zoo.load_prompt_cache(tmp_path / "w.safetensors")
