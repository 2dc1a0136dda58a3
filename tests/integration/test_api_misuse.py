"""The public API called wrongly (issue 29): arguments of the wrong type or value for ``load``,
``save``, ``generate``, ``new_plugin`` and the prompt-cache functions are a ``TypeError`` /
``ValueError`` / ``MlxZooError`` naming the argument -- never an error from deep inside MLX or
Python; ``MLX_ZOO_PLUGINS`` hiding a demo's plugin is named in the error."""

from __future__ import annotations

import os
import subprocess
import sys

import mlx.core as mx
import pytest

import mlx_zoo
from mlx_zoo.newplugin import new_plugin


@pytest.fixture(scope="module")
def demo():
    model, config = mlx_zoo.load("demo:qwen2")
    return model, config, mlx_zoo.load_tokenizer("demo:qwen2")


@pytest.mark.parametrize("kwargs,error,argument", [
    ({"dtype": 5}, TypeError, "dtype"),
    ({"dtype": "int8"}, ValueError, "dtype"),
    ({"dequantize": "yes"}, ValueError, "dequantize"),
    ({"plugin": 5}, TypeError, "plugin"),
    ({"revision": 5}, TypeError, "revision"),
    ({"fuse": "no"}, TypeError, "fuse"),
    ({"lazy": 1}, TypeError, "lazy"),
])
def test_load_arguments(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        mlx_zoo.load("demo:qwen2", **kwargs)


def test_load_reference_of_the_wrong_type():
    with pytest.raises(mlx_zoo.MlxZooError, match="no model given"):
        mlx_zoo.load(None)
    with pytest.raises(TypeError, match="path_or_repo"):
        mlx_zoo.load(5)


@pytest.mark.parametrize("argument", ["model", "config", "path"])
def test_save_arguments(demo, tmp_path, argument):
    model, config, _ = demo
    args = {"model": model, "config": config, "path": tmp_path / "out"}
    args[argument] = None
    with pytest.raises(TypeError, match=f"save: {argument}"):
        mlx_zoo.save(args["model"], args["config"], args["path"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs,argument", [
    ({"stop": 5}, "stop"), ({"stop": ["ok", 5]}, "stop"), ({"stop": [""]}, "stop"),
    ({"sampler": 5}, "sampler"), ({"logits_processors": 5}, "logits_processors"),
    ({"logits_processors": [5]}, "logits_processors"),
])
def test_generate_arguments(demo, kwargs, argument):
    model, _, tokenizer = demo
    with pytest.raises(mlx_zoo.GenerationArgumentError, match=argument):
        mlx_zoo.generate(model, tokenizer, "hi", max_tokens=2, **kwargs)


def test_new_plugin_dest(tmp_path):
    with pytest.raises(TypeError, match="dest"):
        new_plugin("foo", "foo", dest=5)
    with pytest.raises(TypeError, match="force"):
        new_plugin("foo", "foo", dest=tmp_path / "p", force="yes")
    assert not (tmp_path / "p").exists()


def filled_cache(model, tokenizer) -> list:
    cache = mlx_zoo.make_prompt_cache(model)
    mlx_zoo.generate(model, tokenizer, "hello", max_tokens=2, prompt_cache=cache)
    return cache


def test_save_prompt_cache_into_a_missing_folder(demo, tmp_path):
    model, _, tokenizer = demo
    path = tmp_path / "missing" / "cache.safetensors"
    with pytest.raises(mlx_zoo.CacheFileError, match="folder does not exist"):
        mlx_zoo.save_prompt_cache(path, filled_cache(model, tokenizer))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_save_prompt_cache_into_a_read_only_folder(demo, tmp_path):
    model, _, tokenizer = demo
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(mlx_zoo.CacheFileError, match="not writable"):
            mlx_zoo.save_prompt_cache(folder / "c.safetensors", filled_cache(model, tokenizer))
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("axis", [1, 3])  # heads, width
def test_prompt_cache_tensor_of_the_wrong_shape(demo, tmp_path, axis):
    """Keys and values of another head count or width, consistent with each other and with
    the offset: refused naming the layer, on loading for the model and before generating."""
    model, _, tokenizer = demo
    good = tmp_path / "good.safetensors"
    mlx_zoo.save_prompt_cache(good, filled_cache(model, tokenizer))
    arrays, header = mx.load(str(good), return_metadata=True)
    for key in [k for k in arrays if k.startswith("1.")]:
        index = [slice(None)] * 4
        index[axis] = slice(0, 1)
        arrays[key] = arrays[key][tuple(index)]
    bad = tmp_path / "bad.safetensors"
    mx.save_safetensors(str(bad), arrays, metadata=header)
    with pytest.raises(mlx_zoo.CacheFileError, match="layer 1: keys of shape"):
        mlx_zoo.load_prompt_cache(bad, model=model)
    cache = mlx_zoo.load_prompt_cache(bad)
    with pytest.raises(mlx_zoo.GenerationArgumentError, match="layer 1: keys of shape"):
        mlx_zoo.generate(model, tokenizer, "more", max_tokens=2, prompt_cache=cache)


@pytest.mark.parametrize("value", ["-mlx-qwen2", "mlx-llama"])
def test_plugins_variable_hiding_a_demo_is_named(value):
    code = ("import mlx_zoo\ntry:\n    mlx_zoo.load('demo:qwen2')\n"
            "except mlx_zoo.MlxZooError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "MLX_ZOO_PLUGINS": value}, timeout=120)
    assert f"MLX_ZOO_PLUGINS='{value}' switches off" in done.stdout, done.stdout + done.stderr
    assert "mlx-qwen2" in done.stdout
