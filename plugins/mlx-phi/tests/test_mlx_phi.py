"""mlx-phi against transformers' Phi3ForCausalLM through the plugin-author kit
(mlx_zoo.testing): LongRoPE (prompts past the pre-training context), partial rotary, window, on
sharpened weights; plus a checkpoint with the fused ``qkv_proj`` / ``gate_up_proj`` on disk."""

import numpy as np

import mlx_zoo
from mlx_zoo.testing import (
    TOLERANCE,
    PluginConformance,
    logits,
    relative_error,
    torch_logits,
    transformers_model,
)

BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rope_theta=10000.0, rms_norm_eps=1e-5, pad_token_id=None, eos_token_id=None)
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0 + i / 8 for i in range(8)],
            "long_factor": [2.0 + i for i in range(8)]}


def fused(weights: dict) -> dict:
    """The checkpoint's weights with q/k/v and gate/up fused, as Phi-3's checkpoints store them."""
    out = {}
    for name, value in weights.items():
        if ".q_proj." in name:
            parts = [weights[name.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[name.replace("q_proj", "qkv_proj")] = np.concatenate(parts)
        elif ".gate_proj." in name:
            up = weights[name.replace("gate_proj", "up_proj")]
            out[name.replace("gate_proj", "gate_up_proj")] = np.concatenate([value, up])
        elif not any(p in name for p in (".k_proj.", ".v_proj.", ".up_proj.")):
            out[name] = value
    return out


def phi3_reference(config: dict, weights: dict, ids):
    """transformers' Phi3ForCausalLM on the checkpoint's weights, fused as it keeps them."""
    return torch_logits(transformers_model("Phi3ForCausalLM", config, fused(weights)), ids)


class TestPhi3(PluginConformance):
    model_type = "phi3"
    reference = phi3_reference
    base_config = BASE
    # the 40-token prompt passes the pre-training context of 16: the long factors apply
    # (each its own copy: transformers writes into the rope_scaling dict it is given)
    switches = {"longrope": dict(rope_scaling={**LONGROPE}, original_max_position_embeddings=16),
                "longrope_short": dict(rope_scaling={**LONGROPE},
                                       original_max_position_embeddings=48),
                "partial_rotary": dict(partial_rotary_factor=0.5),
                "window": dict(sliding_window=8), "tied": dict(tie_word_embeddings=True)}

    def test_fused_projections_on_disk(self, base, tmp_path):
        """What transformers' and Microsoft's checkpoints hold: ``qkv_proj`` and
        ``gate_up_proj``, split on load."""
        hf = transformers_model("Phi3ForCausalLM", {**BASE, "model_type": "phi3"},
                                fused(base.weights()))
        hf.save_pretrained(tmp_path / "hf")
        model, _ = mlx_zoo.load(tmp_path / "hf")
        err = relative_error(logits(model, base.ids), torch_logits(hf, base.ids))
        assert err < TOLERANCE, err

