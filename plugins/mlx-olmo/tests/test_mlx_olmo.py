"""mlx-olmo against transformers' Olmo2ForCausalLM through the plugin-author kit
(mlx_zoo.testing), on sharpened weights; tensor parallelism is refused, not run wrong."""

import pytest

import mlx_zoo
from mlx_zoo.testing import PluginConformance

BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rope_theta=10000.0, rms_norm_eps=1e-6, pad_token_id=None, eos_token_id=None)


class TestOlmo2(PluginConformance):
    model_type = "olmo2"
    reference = "Olmo2ForCausalLM"
    base_config = BASE
    switches = {"tied": dict(tie_word_embeddings=True), "bias": dict(attention_bias=True),
                "mha": dict(num_key_value_heads=4)}
    shardable = False  # a norm over all heads' features cannot be split by heads

    def test_shard_is_refused(self, base):
        model, _ = self.load(base.path)
        with pytest.raises(mlx_zoo.ShardingError, match="all heads"):
            model.shard()
