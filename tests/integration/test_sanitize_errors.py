"""A checkpoint a plugin's ``sanitize`` cannot map (its KeyError, IndexError, ...) is a
SafetensorsError naming the checkpoint -- as for a bridged mlx-lm model whose sanitize indexes
tensors the file lacks."""

from __future__ import annotations

import json
import shutil

import pytest

import mlx_zoo
from mlx_qwen2 import Model, ModelArgs
from mlx_zoo import Architecture, hookimpl
from mlx_zoo.demos import demo_dir


class StackingModel(Model):
    """Qwen2 whose sanitize, like an MoE's, indexes a tensor by name."""

    def sanitize(self, weights):
        weights["model.layers.0.mlp.experts.0.gate_proj.weight"]  # noqa: B018 (the lookup)
        return weights


class Plugin:
    @hookimpl
    def register_models(self):
        return [Architecture("sanitize_raises", ModelArgs, StackingModel)]


def test_sanitize_error_names_the_checkpoint(tmp_path):
    plugin = Plugin()
    mlx_zoo.register(plugin, name="sanitize-raises")
    try:
        target = tmp_path / "ckpt"
        shutil.copytree(demo_dir("qwen2"), target)
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config,
                                                        "model_type": "sanitize_raises"}))
        with pytest.raises(mlx_zoo.SafetensorsError, match="sanitize could not map") as info:
            mlx_zoo.load(target)
        assert str(target) in str(info.value) and "experts.0.gate_proj" in str(info.value)
    finally:
        mlx_zoo.unregister(plugin)
