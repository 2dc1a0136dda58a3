"""mlx-granite against transformers' GraniteForCausalLM through the plugin-author kit
(mlx_zoo.testing): every multiplier and switch, on sharpened weights."""

from mlx_zoo.testing import PluginConformance

BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rope_theta=10000.0, rms_norm_eps=1e-5, embedding_multiplier=3.0,
            residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=4.0)


class TestGranite(PluginConformance):
    model_type = "granite"
    reference = "GraniteForCausalLM"
    base_config = BASE
    switches = {"unit_multipliers": dict(embedding_multiplier=1.0, residual_multiplier=1.0,
                                         attention_multiplier=0.25, logits_scaling=1.0),
                "tied": dict(tie_word_embeddings=True),
                "biases": dict(attention_bias=True, mlp_bias=True)}
