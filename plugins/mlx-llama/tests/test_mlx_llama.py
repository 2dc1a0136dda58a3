"""mlx-llama against transformers' LlamaForCausalLM and MistralForCausalLM, through the
plugin-author kit (mlx_zoo.testing): every config switch, on sharpened weights."""

from mlx_zoo.testing import PluginConformance

BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}


class TestLlama(PluginConformance):
    model_type = "llama"
    reference = "LlamaForCausalLM"
    base_config = BASE
    switches = {"tied": dict(tie_word_embeddings=True), "llama3": dict(rope_scaling=LLAMA3),
                "biases": dict(attention_bias=True, mlp_bias=True), "head_dim": dict(head_dim=32),
                "linear": dict(rope_scaling={"rope_type": "linear", "factor": 2.0})}


class TestMistral(PluginConformance):
    model_type = "mistral"
    reference = "MistralForCausalLM"
    base_config = {**BASE, "sliding_window": 8}  # well inside the 40-token prompt
    switches = {"full_attention": dict(sliding_window=None), "head_dim": dict(head_dim=32)}
