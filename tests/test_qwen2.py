"""Qwen2 checkpoints written by transformers, for the core's cross-plugin tests (test_fusion.py,
test_shard.py). Qwen2's own tests live with its plugin: plugins/mlx-qwen2/tests, written with the
plugin-author kit (mlx_zoo.testing)."""

from __future__ import annotations

import pytest
from parity import sharpen

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 96
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rope_theta=10000.0, rms_norm_eps=1e-6)


def write_reference(path, tied: bool, scaling=None, seed=0):
    """A sharpened transformers Qwen2ForCausalLM saved to ``path``; returns the torch model."""
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(**BASE, tie_word_embeddings=tied, rope_scaling=scaling)
    ref = transformers.Qwen2ForCausalLM(cfg).eval()
    sharpen(ref, seed=seed)
    if tied:
        ref.tie_weights()
    ref.save_pretrained(path)
    return ref
