"""mlx-llama against transformers' LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM and
SmolLM3ForCausalLM, through the plugin-author kit (mlx_zoo.testing): every config switch, on
sharpened weights."""

from mlx_zoo.testing import PluginConformance, stacked_experts_reference

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


class TestMixtral(PluginConformance):
    model_type = "mixtral"
    # the checkpoint stacks the experts (mlp.switch_mlp), transformers fuses them
    reference = stacked_experts_reference("MixtralForCausalLM")
    base_config = {**BASE, "intermediate_size": 32, "num_local_experts": 4,
                   "num_experts_per_tok": 2}
    switches = {"window": dict(sliding_window=8), "top1": dict(num_experts_per_tok=1),
                "tied": dict(tie_word_embeddings=True)}

    def test_transformers_checkpoint_with_per_expert_tensors(self, base, tmp_path):
        """save_pretrained writes the published names, ``block_sparse_moe.experts.{e}.w1``..."""
        import mlx_zoo
        from mlx_zoo.testing import (
            TOLERANCE,
            logits,
            relative_error,
            torch_logits,
            transformers_model,
        )

        hf = transformers_model("MixtralForCausalLM", {**base.config, "model_type": "mixtral"})
        hf.save_pretrained(tmp_path / "hf")
        model, _ = mlx_zoo.load(tmp_path / "hf")
        err = relative_error(logits(model, base.ids), torch_logits(hf, base.ids))
        assert err < TOLERANCE, err


class TestSmolLM3(PluginConformance):
    model_type = "smollm3"
    reference = "SmolLM3ForCausalLM"
    base_config = {**BASE, "num_hidden_layers": 3, "no_rope_layer_interval": 2,
                   "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    switches = {"no_rope_layers": dict(no_rope_layers=[0, 1, 1]), "window": dict(
                    use_sliding_window=True, sliding_window=8),
                "layer_types": dict(use_sliding_window=True, sliding_window=8, layer_types=[
                    "sliding_attention", "full_attention", "sliding_attention"]),
                "untied_biases": dict(tie_word_embeddings=False, attention_bias=True,
                                      mlp_bias=True)}
