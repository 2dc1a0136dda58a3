"""mlx-gemma against transformers' Gemma2ForCausalLM and Gemma3ForCausalLM through the
plugin-author kit (mlx_zoo.testing), every config switch on sharpened weights; and ``gemma3``,
the text part of Gemma 3's multimodal layout, against Gemma3ForCausalLM on its text weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mlx_zoo
from mlx_gemma import Gemma3TextArgs
from mlx_zoo.testing import (
    PLAIN,
    TOLERANCE,
    PluginConformance,
    decode_steps,
    incremental_logits,
    logits,
    relative_error,
    torch_logits,
    transformers_model,
    write_tiny_checkpoint,
)

BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
            rms_norm_eps=1e-6, query_pre_attn_scalar=24, sliding_window=8)
LINEAR = {"rope_type": "linear", "factor": 8.0}


class TestGemma2(PluginConformance):
    model_type = "gemma2"
    reference = "Gemma2ForCausalLM"
    base_config = {**BASE, "rope_theta": 10000.0}
    switches = {"untied": dict(tie_word_embeddings=False), "no_softcaps": dict(
                    attn_logit_softcapping=None, final_logit_softcapping=None),
                "softcaps": dict(attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
                "layer_types": dict(layer_types=["full_attention", "sliding_attention"]),
                "bias": dict(attention_bias=True)}


class TestGemma3Text(PluginConformance):
    model_type = "gemma3_text"
    reference = "Gemma3ForCausalLM"
    base_config = {**BASE, "num_hidden_layers": 3, "sliding_window_pattern": 3,
                   "rope_theta": 100000.0, "rope_local_base_freq": 1000.0}
    switches = {"linear": dict(rope_scaling=LINEAR), "untied": dict(tie_word_embeddings=False),
                "layer_types": dict(layer_types=["full_attention", "sliding_attention"] + [
                    "full_attention"]),
                "softcaps": dict(attn_logit_softcapping=5.0, final_logit_softcapping=3.0)}

    def test_embedding_gemma_is_refused(self, base):
        config = {**base.config, "model_type": self.model_type, "use_bidirectional_attention": True}
        with pytest.raises(mlx_zoo.ConfigError, match="use_bidirectional_attention"):
            Gemma3TextArgs.from_dict(config)


TEXT = {**TestGemma3Text.base_config, "model_type": "gemma3_text", "rope_scaling": LINEAR}


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory):
    """A ``gemma3`` checkpoint as transformers < 5 published them (``language_model.model.``
    names, a vision tower to drop) and the text weights."""
    text = write_tiny_checkpoint(tmp_path_factory.mktemp("text"), "gemma3_text", TEXT)
    import mlx.core as mx

    weights = dict(mx.load(str(text / "model.safetensors")))
    path = tmp_path_factory.mktemp("gemma3")
    renamed = {"language_model." + k: v for k, v in weights.items()}
    renamed["vision_tower.vision_model.embeddings.patch_embedding.weight"] = mx.zeros((4, 3))
    mx.save_safetensors(str(path / "model.safetensors"), renamed)
    config = {"model_type": "gemma3", "text_config": TEXT, "mm_tokens_per_image": 256,
              "vision_config": {"model_type": "siglip_vision_model"}}
    (path / "config.json").write_text(json.dumps(config))
    return path, {k: np.array(v) for k, v in weights.items()}


def test_gemma3_wrapper_reads_the_text_model(wrapped, tmp_path):
    path, weights = wrapped
    ids = np.random.default_rng(0).integers(0, TEXT["vocab_size"], (1, 40))
    expected = torch_logits(transformers_model("Gemma3ForCausalLM", TEXT, weights), ids)
    model, config = mlx_zoo.load(path, **PLAIN)
    assert config.model_type == "gemma3" and config.rope_scaling["factor"] == 8.0
    assert relative_error(logits(model, ids), expected) < TOLERANCE
    full = logits(model, ids)
    assert relative_error(incremental_logits(model, ids, decode_steps(40)), full) < TOLERANCE
    mlx_zoo.save(model, config, tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["text_config"]["model_type"] == "gemma3_text" and "vision_config" in saved
    again, config2 = mlx_zoo.load(tmp_path / "saved", **PLAIN)
    assert config2 == config
    np.testing.assert_array_equal(logits(again, ids), full)


def test_gemma3_wrapper_errors_name_the_nested_key(wrapped, tmp_path):
    path, _ = wrapped
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["sliding_window_pattern"] = "six"
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(path / "model.safetensors")
    with pytest.raises(mlx_zoo.ConfigError, match="text_config.sliding_window_pattern"):
        mlx_zoo.load(tmp_path)


PROMPT = "<|endoftext|>Repeatedly issue a prompt, accept input,"
PASSAGE = (" parse an initial prefix off the received input, and dispatch to action methods, "
           "passing them the remainder of the line as")
"""cmd.Cmd.cmdloop's docstring (CPython 3.11), which the demo learned by heart: ~60 tokens, past
its local layers' 32-position window."""


@pytest.mark.parametrize("theta_factor", [1, 100])
def test_demo_reproduces_a_passage_only_with_its_rope(theta_factor, tmp_path):
    """demo:gemma3 (scripts/train_demo.py) continues a docstring of its training text from its
    first words, end to end through tokenizer, windows, QK-norm, RoPE and caches; with both RoPE
    bases 100x too large (config.json edited) it does not."""
    import shutil

    from mlx_zoo.demos import demo_dir

    path = tmp_path / "demo"
    shutil.copytree(demo_dir("gemma3"), path)
    config = json.loads((path / "config.json").read_text())
    config["rope_theta"] *= theta_factor
    config["rope_local_base_freq"] *= theta_factor
    (path / "config.json").write_text(json.dumps(config))
    model, args = mlx_zoo.load(path)
    text = mlx_zoo.generate(model, mlx_zoo.load_tokenizer(path), PROMPT,
                            max_tokens=len(PASSAGE)).text[:len(PASSAGE)]
    assert args.model_type == "gemma3_text"
    assert (text == PASSAGE) == (theta_factor == 1), text
