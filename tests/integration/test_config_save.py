"""Configs carry what they read explicitly (declared fields, ``extra``, ``quantization``), so
``mlx_zoo.save`` writes the same config.json whatever path the model took: loaded as stored,
fused, sharded (a group of one process), quantized, loaded quantized, dequantized -- with the
quantization entry exactly where the model is quantized."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import mlx.core as mx
import pytest

import mlx_zoo
from mlx_zoo import BaseModelArgs
from mlx_zoo.demos import demo_dir

DEMOS = ["qwen2", "hunyuan", "llama4"]
QUANT_KEYS = ("quantization", "quantization_config")
AS_STORED = {"dtype": None, "dequantize": False, "fuse": False}


def saved_config(model, config, path: Path) -> dict:
    mlx_zoo.save(model, config, path)
    return json.loads((path / "config.json").read_text())


def nested_llama4(tmp_path: Path) -> Path:
    """The demo llama4 checkpoint in the published ``llama4`` layout: text settings under
    ``text_config`` (with their own model_type), a vision section around them, weights
    prefixed ``language_model.``."""
    source = demo_dir("llama4")
    target = tmp_path / "llama4_nested"
    shutil.copytree(source, target)
    text = json.loads((source / "config.json").read_text())
    config = {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
              "text_config": text, "vision_config": {"hidden_size": 8, "model_type": "llama4"},
              "image_token_index": 7}
    (target / "config.json").write_text(json.dumps(config))
    weights = mx.load(str(source / "model.safetensors"))
    mx.save_safetensors(str(target / "model.safetensors"),
                        {f"language_model.{k}": v for k, v in weights.items()})
    return target


@pytest.fixture(params=DEMOS + ["llama4_nested"])
def checkpoint(request, tmp_path) -> Path:
    if request.param == "llama4_nested":
        return nested_llama4(tmp_path)
    return demo_dir(request.param)


def test_save_writes_one_config_whatever_the_path(checkpoint, tmp_path):
    model, config = mlx_zoo.load(checkpoint, **AS_STORED)
    stored = saved_config(model, config, tmp_path / "stored")
    assert not set(QUANT_KEYS) & set(stored) and config.quantization is None
    original = json.loads((checkpoint / "config.json").read_text())
    for key, value in original.items():  # every key of the file comes back, as it was
        if key not in ("rope_scaling", "text_config"):
            assert stored[key] == value and type(stored[key]) is type(value), key

    fused, config_f = mlx_zoo.load(checkpoint, dtype=None, dequantize=False, fuse=True)
    assert saved_config(fused, config_f, tmp_path / "fused") == stored

    sharded, config_s = mlx_zoo.load(checkpoint, **AS_STORED)
    sharded.shard(None)  # one process: a group of size one
    assert saved_config(sharded, config_s, tmp_path / "sharded") == stored

    quantized, config_q = mlx_zoo.load(checkpoint, **AS_STORED)
    entry = mlx_zoo.quantize(quantized, config_q, bits=4, group_size=32)
    assert config_q.quantization == entry
    written = saved_config(quantized, config_q, tmp_path / "quantized")
    assert written[QUANT_KEYS[0]] == written[QUANT_KEYS[1]] == entry  # at the top level
    assert {k: v for k, v in written.items() if k not in QUANT_KEYS} == stored
    if "text_config" in written:
        assert not set(QUANT_KEYS) & set(written["text_config"])

    reloaded, config_r = mlx_zoo.load(tmp_path / "quantized", **AS_STORED)
    assert config_r.quantization == entry
    assert saved_config(reloaded, config_r, tmp_path / "requantized") == written

    dense, config_d = mlx_zoo.load(tmp_path / "quantized", dtype=None, dequantize=True,
                                   fuse=False)
    assert config_d.quantization is None
    assert saved_config(dense, config_d, tmp_path / "dequantized") == stored


def test_to_dict_is_a_function_of_the_object(checkpoint):
    _, config = mlx_zoo.load(checkpoint, **AS_STORED)
    first = config.to_dict()
    first["rope_theta"] = -1  # the dictionary is a copy
    first.setdefault("text_config", {})["x"] = 1
    again = config.to_dict()
    assert again != first and again == config.to_dict()
    twin = dataclasses.replace(config)  # the same fields: the same config.json
    assert twin.to_dict() == again
    assert not any(name.startswith("_") for name in vars(config))  # no undeclared state
    rebuilt = type(config).from_dict(mlx_zoo.normalize_config(again))
    assert rebuilt.to_dict() == again


def test_quantization_is_declared_and_changed_through_methods():
    fields = {f.name for f in dataclasses.fields(BaseModelArgs)}
    assert {"extra", "quantization"} <= fields
    _, config = mlx_zoo.load(demo_dir("qwen2"), **AS_STORED)
    config.set_quantization({"group_size": 32, "bits": 4})
    assert config.to_dict()["quantization_config"] == {"group_size": 32, "bits": 4}
    config.clear_quantization()
    assert not set(QUANT_KEYS) & set(config.to_dict())


def test_integers_stay_integers(tmp_path):
    """A float field written as an integer (``rope_theta: 10000``) is read as a float and
    written back as an integer; Llama 4's ``floor_scale`` stays an integer (transformers
    refuses a float there)."""
    target = shutil.copytree(demo_dir("llama4"), tmp_path / "ints")
    config = json.loads((target / "config.json").read_text())
    config["rope_theta"] = 10000
    (target / "config.json").write_text(json.dumps(config))
    model, args = mlx_zoo.load(target, **AS_STORED)
    assert isinstance(args.rope_theta, float)
    written = saved_config(model, args, tmp_path / "saved")
    assert type(written["rope_theta"]) is int and type(written["floor_scale"]) is int
    assert type(written["rms_norm_eps"]) is float


def test_unknown_keys_live_in_extra():
    _, config = mlx_zoo.load(demo_dir("qwen2"), **AS_STORED)
    assert config.extra["architectures"] == ["Qwen2ForCausalLM"]
    assert "hidden_size" not in config.extra and "quantization" not in config.extra
