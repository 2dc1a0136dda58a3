"""mlx-qwen3 against transformers' Qwen3ForCausalLM and Qwen3MoeForCausalLM through the
plugin-author kit (mlx_zoo.testing), every config switch on sharpened weights; plus what the kit
does not cover: a checkpoint transformers writes with per-expert tensors, and the demo."""

from __future__ import annotations

import json
import shutil

import pytest

import mlx_zoo
from mlx_zoo.testing import (
    TOLERANCE,
    PluginConformance,
    logits,
    relative_error,
    stacked_experts_reference,
    torch_logits,
    transformers_model,
)

BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
            rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
MOE = dict(BASE, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)


class TestQwen3(PluginConformance):
    model_type = "qwen3"
    reference = "Qwen3ForCausalLM"
    base_config = BASE
    switches = {"tied": dict(tie_word_embeddings=True), "bias": dict(attention_bias=True),
                "yarn": dict(rope_scaling=YARN), "head_dim": dict(head_dim=32),
                "window": dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
                "layer_types": dict(use_sliding_window=True, sliding_window=8,
                                    layer_types=["sliding_attention", "full_attention"])}


class TestQwen3Moe(PluginConformance):
    model_type = "qwen3_moe"
    reference = stacked_experts_reference("Qwen3MoeForCausalLM")
    base_config = MOE
    switches = {"norm_topk": dict(norm_topk_prob=True), "top1": dict(num_experts_per_tok=1),
                "dense_layer": dict(mlp_only_layers=[0]),
                "sparse_step": dict(decoder_sparse_step=2),
                "window": dict(use_sliding_window=True, sliding_window=8),
                "tied_bias": dict(tie_word_embeddings=True, attention_bias=True)}

    def test_transformers_checkpoint_with_per_expert_tensors(self, base, tmp_path):
        """save_pretrained writes ``mlp.experts.{e}.{gate,up,down}_proj.weight`` and
        ``num_local_experts``: sanitize stacks the experts, the config reads either name."""
        hf = transformers_model("Qwen3MoeForCausalLM", {**MOE, "model_type": "qwen3_moe"})
        hf.save_pretrained(tmp_path / "hf")
        model, config = mlx_zoo.load(tmp_path / "hf")
        assert config.num_experts == 4 and "switch_mlp" in model.layers[0].mlp
        err = relative_error(logits(model, base.ids), torch_logits(hf, base.ids))
        assert err < TOLERANCE, err


PROMPT = "<|endoftext|>Repeatedly issue a prompt, accept input,"
PASSAGE = (" parse an initial prefix off the received input, and dispatch to action methods, "
           "passing them the remainder of the line as")
"""cmd.Cmd.cmdloop's docstring (CPython 3.11), which the demo learned by heart."""


@pytest.mark.parametrize("theta_factor", [1, 100])
def test_demo_reproduces_a_passage_only_with_its_rope(theta_factor, tmp_path):
    """demo:qwen3 (scripts/train_demo.py) continues a docstring of its training text from its
    first words, end to end through tokenizer, QK-norm, RoPE and cache; with RoPE's base 100x
    too large (config.json edited) it does not."""
    from mlx_zoo.demos import demo_dir

    path = tmp_path / "demo"
    shutil.copytree(demo_dir("qwen3"), path)
    config = json.loads((path / "config.json").read_text())
    config["rope_theta"] *= theta_factor
    (path / "config.json").write_text(json.dumps(config))
    model, args = mlx_zoo.load(path)
    text = mlx_zoo.generate(model, mlx_zoo.load_tokenizer(path), PROMPT,
                            max_tokens=len(PASSAGE)).text[:len(PASSAGE)]
    assert args.model_type == "qwen3"
    assert (text == PASSAGE) == (theta_factor == 1), text
