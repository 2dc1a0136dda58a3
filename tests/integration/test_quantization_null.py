"""config.json's quantization block with ``bits`` or ``group_size`` null (issue 29): refused,
naming the key -- MLX would otherwise put its own default in its place without a word."""

from __future__ import annotations

import json

import pytest

import mlx_zoo


@pytest.mark.parametrize("key", ["bits", "group_size"])
def test_null_quantization_size_is_refused(tmp_path, key):
    from mlx_zoo.convert import convert

    out = convert("demo:qwen2", tmp_path / "q", quantize=True, q_bits=4, q_group_size=32)
    config = json.loads((out / "config.json").read_text())
    config["quantization"][key] = None
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(mlx_zoo.ConfigError, match=f"quantization.{key}"):
        mlx_zoo.load(out, dtype=None, dequantize=False)
    with pytest.raises(mlx_zoo.QuantizationError):
        mlx_zoo.quantize(*mlx_zoo.load("demo:qwen2"), **{key: None})
