"""mlx-llama4 against transformers' Llama4ForCausalLM through the plugin-author kit
(mlx_zoo.testing): the text model (``llama4_text``) in Scout's and Maverick's layer patterns,
over chunked attention (16 positions: the 40-token prompt crosses two boundaries), NoPE layers,
temperature tuning and MoE routing, on sharpened weights. What only Llama 4 has to show (the
multimodal checkpoint layout, chunk boundaries in decoding, per-expert exports) is in
test_mlx_llama4.py."""

from __future__ import annotations

import numpy as np

from mlx_zoo.testing import PluginConformance, torch_logits, transformers_model

LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
SCOUT = dict(vocab_size=320, hidden_size=64, intermediate_size=32, intermediate_size_mlp=48,
             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             attention_chunk_size=16, floor_scale=4, attn_scale=0.5, max_position_embeddings=256,
             num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1,
             no_rope_layer_interval=4, use_qk_norm=True, rope_parameters=LLAMA3)
MAVERICK = dict(num_local_experts=6, num_experts_per_tok=2, interleave_moe_layer_step=2,
                no_rope_layer_interval=3, use_qk_norm=False,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def llama4_reference(config: dict, weights: dict, ids):
    """transformers' Llama4ForCausalLM on the checkpoint's weights: the stacked experts
    (``feed_forward.experts.{gate,up,down}_proj.weight``, (experts, out, in)) go into its
    layout, ``experts.gate_up_proj`` (experts, in, 2 * out: gate columns first) and
    ``experts.down_proj`` (experts, in, out)."""
    converted = {}
    for name, value in weights.items():
        head, _, tail = name.rpartition(".experts.")
        if not head or tail not in ("gate_proj.weight", "up_proj.weight", "down_proj.weight"):
            converted[name] = value
        elif tail == "down_proj.weight":
            converted[f"{head}.experts.down_proj"] = value.transpose(0, 2, 1)
        elif tail == "gate_proj.weight":
            up = weights[f"{head}.experts.up_proj.weight"]
            converted[f"{head}.experts.gate_up_proj"] = np.concatenate(
                [value.transpose(0, 2, 1), up.transpose(0, 2, 1)], axis=2)
    return torch_logits(transformers_model("Llama4ForCausalLM", config, converted), ids)


class TestLlama4Text(PluginConformance):
    model_type = "llama4_text"
    # a callable, not the class name: the checkpoint stacks the experts per projection
    reference = llama4_reference
    base_config = SCOUT
    switches = {"maverick": MAVERICK, "tied": dict(tie_word_embeddings=True)}
