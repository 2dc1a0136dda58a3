"""Configs we ship or write load in transformers: every demo checkpoint's config and tokenizer,
and what :func:`mlx_zoo.save` writes for it, plain and quantized (``trust_remote_code=False``:
transformers' own classes only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import transformers

import mlx_zoo
from mlx_zoo.demos import available_demos, demo_dir

DEMOS = available_demos()
QUANT_BITS, QUANT_GROUP = 4, 32  # the demos' widths (128, 384) divide by the group size

# Keys whose value transformers keeps under its own name: compared through rope_parameters.
ROPE_KEYS = ("rope_theta", "rope_scaling")


def test_every_architecture_has_a_demo():
    assert {"qwen2", "hunyuan", "llama4"} <= set(DEMOS)


def original_config(name: str) -> dict:
    return json.loads((demo_dir(name) / "config.json").read_text())


def assert_same_settings(hf_config, original: dict) -> None:
    """Every key of ``original`` that transformers keeps as an attribute has the same value and,
    for numbers, the same type (an int stays an int); RoPE's base is under rope_parameters. A
    null (Llama 4's ``layer_types``: "derive it") transformers fills in itself."""
    compared = 0
    for key, value in original.items():
        if key in ROPE_KEYS or value is None or not hasattr(hf_config, key):
            continue
        got = getattr(hf_config, key)
        assert got == value, key
        if isinstance(value, (int, float)):
            assert type(got) is type(value), (key, got, value)
        compared += 1
    assert compared >= 8  # the sizes, head counts, vocabulary, context, norm epsilon ...
    rope = hf_config.rope_parameters
    if "rope_theta" not in rope:  # per layer type (Gemma 3): the global layers' base
        rope = rope["full_attention"]
    assert rope["rope_theta"] == original["rope_theta"]


@pytest.mark.parametrize("name", DEMOS)
def test_demo_config_and_tokenizer_load_in_transformers(name):
    """The committed files themselves: transformers' AutoConfig (which type-checks fields --
    Llama 4's floor_scale must be an int) and AutoTokenizer read them."""
    path = demo_dir(name)
    original = original_config(name)
    assert original["model_type"] in transformers.CONFIG_MAPPING  # a class of its own
    hf_config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
    assert hf_config.model_type == original["model_type"]
    assert_same_settings(hf_config, original)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    assert tokenizer.decode(tokenizer.encode("def f():\n    return 1")) == "def f():\n    return 1"


def saved_copy(name: str, dst: Path, quantize: bool) -> Path:
    """The demo loaded and written by mlx_zoo.save into ``dst`` (nothing else copied)."""
    model, config = mlx_zoo.load(demo_dir(name))
    if quantize:
        mlx_zoo.quantize(model, config, bits=QUANT_BITS, group_size=QUANT_GROUP)
    return mlx_zoo.save(model, config, dst)


@pytest.mark.parametrize("name", DEMOS)
def test_saved_config_loads_in_transformers_unchanged(name, tmp_path):
    saved = saved_copy(name, tmp_path / "saved", quantize=False)
    written = json.loads((saved / "config.json").read_text())
    original = original_config(name)
    assert written == original
    assert {k: type(v) for k, v in written.items()} == {k: type(v) for k, v in original.items()}
    hf_config = transformers.AutoConfig.from_pretrained(saved, trust_remote_code=False)
    assert_same_settings(hf_config, original)


@pytest.mark.parametrize("name", DEMOS)
def test_quantized_save_is_readable_by_transformers(name, tmp_path):
    """A quantized save carries ``quantization`` (what mlx-zoo and mlx-lm read) and a copy under
    ``quantization_config``; transformers' AutoConfig keeps that copy as a plain dict and reads
    the rest as usual. (It has no ``quant_method``: transformers could not *run* the packed MLX
    weights anyway; the key is for tools that look for it.)"""
    saved = saved_copy(name, tmp_path / "q4", quantize=True)
    written = json.loads((saved / "config.json").read_text())
    assert written["quantization"]["bits"] == QUANT_BITS
    hf_config = transformers.AutoConfig.from_pretrained(saved, trust_remote_code=False)
    assert_same_settings(hf_config, original_config(name))
    assert hf_config.quantization_config["bits"] == QUANT_BITS
    model, _ = mlx_zoo.load(saved)  # and mlx-zoo reads its own file back
    assert model is not None


def test_tencent_hunyuan_format_is_not_in_transformers(tmp_path):
    """model_type ``hunyuan`` (Tencent's own format, served by mlx-hunyuan) has no transformers
    class -- only ``hunyuan_v1_dense``/``hunyuan_v1_moe`` do, and the hunyuan demo uses the dense
    one. Without ``trust_remote_code`` (whose code we never run) AutoConfig refuses such a
    checkpoint with a ValueError naming the model type: the closest to loading it."""
    assert "hunyuan" not in transformers.CONFIG_MAPPING
    assert {"hunyuan_v1_dense", "hunyuan_v1_moe"} <= set(transformers.CONFIG_MAPPING)
    shutil.copytree(demo_dir("hunyuan"), tmp_path / "tencent")
    config = original_config("hunyuan") | {"model_type": "hunyuan"}
    (tmp_path / "tencent" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hunyuan"):
        transformers.AutoConfig.from_pretrained(tmp_path / "tencent", trust_remote_code=False)
    mlx_zoo.load(tmp_path / "tencent")  # mlx-zoo serves it
