"""Prompt caches that do not belong to the model, and prompt-cache files with broken metadata:
each is refused with an error naming what differs (or the file and key), never run with the
wrong number of layers, another architecture's caches, or a KeyError/ValueError/JSON error."""

import json

import mlx.core as mx
import pytest

import mlx_zoo
from mlx_zoo.cache import ChunkedKVCache, KVCache, QuantizedKVCache, RotatingKVCache
from mlx_zoo.errors import CacheFileError, GenerationArgumentError


@pytest.fixture(scope="module")
def qwen2():
    model, _ = mlx_zoo.load("demo:qwen2")
    return model, mlx_zoo.load_tokenizer("demo:qwen2")


@pytest.fixture(scope="module")
def llama4():
    model, _ = mlx_zoo.load("demo:llama4")
    return model


@pytest.fixture(scope="module")
def hunyuan():
    model, _ = mlx_zoo.load("demo:hunyuan")
    return model


def filled_cache(model, tokens=(1, 2, 3, 4, 5)):
    cache = mlx_zoo.make_prompt_cache(model)
    model(mx.array([list(tokens)]), cache=cache)
    mx.eval([c.state for c in cache])
    return cache


# -- in memory: generate_step -------------------------------------------------------------------


def test_a_cache_with_too_few_layers_is_refused(qwen2):
    model, tokenizer = qwen2
    with pytest.raises(GenerationArgumentError, match="has 2 layer caches, the model \\(qwen2\\) "
                                                      "needs 4"):
        mlx_zoo.generate(model, tokenizer, "hello", max_tokens=2,
                         prompt_cache=mlx_zoo.make_prompt_cache(model)[:2])


def test_an_empty_cache_list_is_not_no_cache(qwen2):
    model, tokenizer = qwen2
    with pytest.raises(GenerationArgumentError, match="has 0 layer caches"):
        mlx_zoo.generate(model, tokenizer, "hello", max_tokens=2, prompt_cache=[])


def test_another_architectures_cache_is_refused(qwen2, llama4):
    model, tokenizer = qwen2
    with pytest.raises(GenerationArgumentError, match="layer 0 is a ChunkedKVCache, the model "
                                                      "\\(qwen2\\) needs a KVCache"):
        mlx_zoo.generate(model, tokenizer, "hello", max_tokens=2,
                         prompt_cache=mlx_zoo.make_prompt_cache(llama4))


def test_window_and_chunk_sizes_are_part_of_the_layout(llama4):
    cache = mlx_zoo.make_prompt_cache(llama4)
    chunked = next(i for i, c in enumerate(cache) if isinstance(c, ChunkedKVCache))
    cache[chunked] = ChunkedKVCache(cache[chunked].chunk_size * 2)
    with pytest.raises(GenerationArgumentError, match=f"layer {chunked}: chunk_size"):
        next(mlx_zoo.generate_step([1, 2, 3], llama4, max_tokens=2, prompt_cache=cache))


def test_layers_at_different_positions_are_refused(qwen2):
    model, _ = qwen2
    cache = filled_cache(model)
    cache[1] = KVCache()
    with pytest.raises(GenerationArgumentError, match="different numbers of positions"):
        next(mlx_zoo.generate_step([1, 2, 3], model, max_tokens=2, prompt_cache=cache))


def test_not_a_list_is_refused(qwen2):
    model, _ = qwen2
    with pytest.raises(GenerationArgumentError, match="expected a list of caches"):
        next(mlx_zoo.generate_step([1], model, max_tokens=2, prompt_cache=KVCache()))


def test_the_models_own_and_a_quantized_cache_are_accepted(qwen2):
    model, tokenizer = qwen2
    cache = filled_cache(model)
    cache[0] = cache[0].to_quantized(group_size=32, bits=8)
    assert isinstance(cache[0], QuantizedKVCache)
    result = mlx_zoo.generate(model, tokenizer, [6, 7], max_tokens=3, prompt_cache=cache)
    assert result.generation_tokens == 3 and cache[1].offset == 5 + 2 + 2


# -- files: the model's identity ----------------------------------------------------------------


def test_round_trip_with_the_model(tmp_path, qwen2):
    model, _ = qwen2
    path = tmp_path / "c.safetensors"
    mlx_zoo.save_prompt_cache(path, filled_cache(model), {"turn": "1"}, model=model)
    header = mx.load(str(path), return_metadata=True)[1]
    assert json.loads(header["model"]) == {"model_type": "qwen2", "num_layers": 4,
                                           "cache_entries": 4, "vocab_size": 1024}
    loaded, meta = mlx_zoo.load_prompt_cache(path, return_metadata=True, model=model)
    assert meta == {"turn": "1"} and [c.offset for c in loaded] == [5] * 4


def test_a_file_saved_for_another_model_is_refused(tmp_path, qwen2, hunyuan, llama4):
    model, _ = qwen2
    path = tmp_path / "c.safetensors"
    mlx_zoo.save_prompt_cache(path, filled_cache(model), model=model)
    # hunyuan's demo has the same layout (4 x KVCache): only the recorded identity tells them apart
    with pytest.raises(CacheFileError, match="key 'model': saved for model_type 'qwen2'"):
        mlx_zoo.load_prompt_cache(path, model=hunyuan)
    with pytest.raises(CacheFileError, match="c.safetensors: key 'model'"):
        mlx_zoo.load_prompt_cache(path, model=llama4)


def test_a_file_saved_without_a_model_is_checked_by_layout(tmp_path, qwen2, llama4):
    model, _ = qwen2
    path = tmp_path / "c.safetensors"
    mlx_zoo.save_prompt_cache(path, filled_cache(model))
    assert len(mlx_zoo.load_prompt_cache(path, model=model)) == 4
    with pytest.raises(CacheFileError, match="does not fit the model given: layer 0 is a KVCache"):
        mlx_zoo.load_prompt_cache(path, model=llama4)


def test_saving_a_cache_that_does_not_fit_the_model_is_refused(tmp_path, qwen2):
    model, _ = qwen2
    with pytest.raises(CacheFileError, match="has 2 layer caches"):
        mlx_zoo.save_prompt_cache(tmp_path / "c.safetensors", filled_cache(model)[:2],
                                  model=model)


@pytest.mark.parametrize("metadata", [{"a": 1}, {1: "a"}, ["a"], {"a": None}])
def test_non_string_metadata_is_refused_on_save(tmp_path, metadata):
    with pytest.raises(CacheFileError, match="metadata must be a dict of strings"):
        mlx_zoo.save_prompt_cache(tmp_path / "c.safetensors", [KVCache()], metadata)


# -- files: malformed metadata ------------------------------------------------------------------


def saved(tmp_path, caches=None):
    """A valid file (one filled KVCache of 3 positions, plus an empty one), then its parts."""
    if caches is None:
        cache = KVCache()
        cache.update_and_fetch(mx.zeros((1, 2, 3, 8)), mx.zeros((1, 2, 3, 8)))
        caches = [cache, KVCache()]
    path = tmp_path / "c.safetensors"
    mlx_zoo.save_prompt_cache(path, caches)
    arrays, header = mx.load(str(path), return_metadata=True)
    return path, arrays, header


def rewrite(path, arrays, header):
    mx.save_safetensors(str(path), arrays, metadata=header)
    return path


def layers_set(value):
    return lambda arrays, header: header.__setitem__("layers", value)


def layout_edit(edit):
    def apply(arrays, header):
        layout = json.loads(header["layers"])
        edit(layout)
        header["layers"] = json.dumps(layout)
    return apply


def drop_layers(arrays, header):
    del header["layers"]


def rename_tensor(old, new):
    def apply(arrays, header):
        arrays[new] = arrays.pop(old)
    return apply


def reshape_tensor(name, shape):
    def apply(arrays, header):
        arrays[name] = mx.zeros(shape)
    return apply


def drop_tensors(arrays, header):
    for key in [k for k in arrays if k.startswith("0.")]:
        del arrays[key]


@pytest.mark.parametrize(("edit", "expected"), [
    (drop_layers, "key 'layers' is missing"),
    (layers_set("[{not json"), "key 'layers' is not valid JSON"),
    (layers_set('{"class": "mlx_zoo.KVCache"}'), "key 'layers' must be a JSON list, got dict"),
    (layers_set('[42]'), "key 'layers', entry 0: expected an object"),
    (layout_edit(lambda lay: lay[0].pop("class")), "entry 0: expected an object with a string"),
    (layout_edit(lambda lay: lay[0].pop("meta")), "entry 0: 'meta' must be a list"),
    (layout_edit(lambda lay: lay[0].__setitem__("meta", ["three"])), "entry 0: 'meta' must be"),
    (layout_edit(lambda lay: lay[0].__setitem__("meta", ["-3"])), "entry 0: 'meta' must be"),
    (layout_edit(lambda lay: lay[0].__setitem__("meta", [3])), "entry 0: 'meta' must be"),
    (layout_edit(lambda lay: lay[0].__setitem__("meta", "3")), "entry 0: 'meta' must be"),
    (layout_edit(lambda lay: lay[0].__setitem__("meta", ["5"])), "offset 5"),
    (layout_edit(lambda lay: lay[1].__setitem__("meta", ["2"])), "offset 2 but no arrays"),
    (layout_edit(lambda lay: lay[0].__setitem__("class", "mlx_zoo.QuantizedKVCache")),
     "entry 0 \\(mlx_zoo.QuantizedKVCache\\)"),
    (layout_edit(lambda lay: lay[0].__setitem__("class", "mlx_zoo.RotatingKVCache")),
     "entry 0 \\(mlx_zoo.RotatingKVCache\\)"),
    (layout_edit(lambda lay: lay.pop()), None),  # fine: the empty cache had no tensors
    (layout_edit(lambda lay: lay.pop(0)), "entry 0 .*offset 0 but 2 arrays stored"),
    (rename_tensor("0.0", "7.0"), "tensor '7.0': expected '<layer>.<index>' with a layer in 0"),
    (rename_tensor("0.0", "x.0"), "tensor 'x.0'"),
    (rename_tensor("0.0", "0"), "tensor '0'"),
    (reshape_tensor("0.0", (1, 2, 4, 8)), "tensor '0': shape \\(1, 2, 4, 8\\), expected"),
    (reshape_tensor("0.1", (2, 3)), "tensor '1': shape \\(2, 3\\)"),
    (reshape_tensor("0.1", (1, 3, 3, 8)), "keys and values differ in batch or heads"),
    (drop_tensors, "offset 3 but no arrays stored"),
    (lambda arrays, header: header.__setitem__("user", "{oops"), "key 'user' is not valid JSON"),
    (lambda arrays, header: header.__setitem__("user", "[1]"), "key 'user' must be a JSON dict"),
    (lambda arrays, header: header.__setitem__("user", '{"a": 1}'),
     "key 'user' must map strings to strings"),
])
def test_malformed_files_name_the_file_and_key(tmp_path, edit, expected):
    path, arrays, header = saved(tmp_path)
    edit(arrays, header)
    rewrite(path, arrays, header)
    if expected is None:
        assert len(mlx_zoo.load_prompt_cache(path)) == 1
        return
    with pytest.raises(CacheFileError, match=expected) as info:
        mlx_zoo.load_prompt_cache(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("cache", "meta", "expected"), [
    (RotatingKVCache(8), ["3", "0"], "max_size must be >= 1"),
    (ChunkedKVCache(4), ["3", "0", "0"], "chunk_size must be >= 1"),
    (ChunkedKVCache(4), ["6", "4", "3"], "start 3 must be a multiple of chunk_size 4"),
    (ChunkedKVCache(4), ["3", "4", "8"], "start 8 must be a multiple of chunk_size 4 and <= "
                                         "offset 3"),
    (QuantizedKVCache(32, 8), ["3", "32", "7"], "bits 7 / group_size 32"),
    (QuantizedKVCache(32, 8), ["3", "32"], "do not make a mlx_zoo.QuantizedKVCache"),
])
def test_inconsistent_meta_values_are_refused(tmp_path, cache, meta, expected):
    cache.update_and_fetch(mx.zeros((1, 2, 3, 32)), mx.zeros((1, 2, 3, 32)))
    path, arrays, header = saved(tmp_path, [cache])
    layout = json.loads(header["layers"])
    layout[0]["meta"] = meta
    header["layers"] = json.dumps(layout)
    rewrite(path, arrays, header)
    with pytest.raises(CacheFileError, match=expected):
        mlx_zoo.load_prompt_cache(path)
