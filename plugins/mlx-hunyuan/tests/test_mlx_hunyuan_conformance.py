"""mlx-hunyuan's transformers formats through the plugin-author kit (mlx_zoo.testing):
``hunyuan_v1_dense`` against transformers' HunYuanDenseV1ForCausalLM and ``hunyuan_v1_moe``
against HunYuanMoEV1ForCausalLM, over their config switches on sharpened weights. Tencent's own
``hunyuan`` format has no transformers class: test_mlx_hunyuan.py checks it against
hunyuan_reference.py."""

from __future__ import annotations

import numpy as np

from mlx_zoo.testing import PluginConformance, torch_logits, transformers_model

# NTK-alpha RoPE in the transformers-5 dialect (rope_parameters), as save_pretrained writes it
ROPE = {"rope_type": "dynamic", "alpha": 4.0, "factor": 1.0, "rope_theta": 10000.0}
BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
            max_position_embeddings=64, rope_parameters=ROPE, tie_word_embeddings=False)


class TestHunYuanDenseV1(PluginConformance):
    model_type = "hunyuan_v1_dense"
    reference = "HunYuanDenseV1ForCausalLM"
    base_config = BASE
    switches = {"tied": dict(tie_word_embeddings=True), "bias": dict(attention_bias=True)}


def moe_v1_reference(config: dict, weights: dict, ids):
    """transformers' HunYuanMoEV1ForCausalLM on the checkpoint's weights: the stacked experts
    (``mlp.switch_mlp.{gate,up,down}_proj.weight``) go into its fused in-memory layout,
    ``experts.gate_up_proj`` = [gate rows; up rows] per expert, ``experts.down_proj``."""
    converted = {}
    for name, value in weights.items():
        if ".switch_mlp." not in name:
            converted[name] = value
            continue
        prefix, proj = name.split(".switch_mlp.")[0], name.split(".")[-2]
        if proj == "down_proj":
            converted[f"{prefix}.experts.down_proj"] = value
        elif proj == "gate_proj":
            up = weights[name.replace("gate_proj", "up_proj")]
            converted[f"{prefix}.experts.gate_up_proj"] = np.concatenate([value, up], axis=1)
    model = transformers_model("HunYuanMoEV1ForCausalLM", config, converted)
    return torch_logits(model, ids)


class TestHunYuanMoEV1(PluginConformance):
    model_type = "hunyuan_v1_moe"
    # a callable, not the class name: the checkpoint stacks the experts, transformers fuses them
    reference = moe_v1_reference
    base_config = {**BASE, "num_experts": 4, "moe_topk": [2, 1]}  # top-2 and top-1 layers
    switches = {"bias": dict(attention_bias=True), "tied": dict(tie_word_embeddings=True)}
