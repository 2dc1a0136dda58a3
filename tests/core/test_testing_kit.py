"""The plugin-author kit (mlx_zoo.testing) itself: its pytest plugin costs other projects'
test runs nothing heavy, its tokenizer works, and its parity check fails a broken plugin."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mlx_zoo
from mlx_zoo.testing import (
    TOKENIZER_VOCAB,
    PluginConformance,
    isolated_registry,
    write_tiny_tokenizer,
)

HEAVY = ("torch", "transformers", "mlx_lm", "numpy", "mlx_qwen2", "mlx_hunyuan", "mlx_llama4",
         "mlx_llama", "mlx_zoo.testing.conformance")


def test_pytest_start_up_imports_nothing_heavy(tmp_path):
    """Every pytest run in the environment loads the kit's pytest plugin: a project that does
    not use it pays ``import mlx_zoo`` and nothing more."""
    (tmp_path / "test_other.py").write_text("def test_nothing():\n    pass\n")
    code = ("import sys, json, pytest\n"
            f"rc = pytest.main(['-q', '-p', 'no:cacheprovider', {str(tmp_path)!r}])\n"
            f"print(json.dumps([rc, sorted(m for m in {HEAVY!r} if m in sys.modules),"
            " 'mlx_zoo.testing.pytest_plugin' in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    rc, heavy, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert rc == 0 and loaded, out.stdout + out.stderr
    assert heavy == []


def test_tiny_tokenizer_round_trips_any_text(tmp_path):
    write_tiny_tokenizer(tmp_path, vocab_size=300)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x", "vocab_size": 300}))
    tokenizer = mlx_zoo.load_tokenizer(tmp_path)
    text = "héllo, wörld ✓ \n\t<tab>"
    ids = tokenizer.encode(text)
    assert max(ids) < TOKENIZER_VOCAB and tokenizer.decode(ids) == text
    assert tokenizer.eos_token_ids == {258} and tokenizer.vocab_size == 300


def test_parity_check_fails_a_broken_plugin(tmp_path_factory, tmp_path):
    """A Llama whose RoPE rotates interleaved pairs (``traditional=True``, a classic porting
    bug) must fail the kit's parity check, by far."""
    mlx_llama = pytest.importorskip("mlx_llama")
    pytest.importorskip("transformers")

    class BrokenModel(mlx_llama.Model):
        def __init__(self, args):
            super().__init__(args)
            for layer in self.layers:
                layer.self_attn.rope = mlx_zoo.get_rope(args.head_dim, base=args.rope_theta,
                                                        traditional=True)

    class Broken:
        @mlx_zoo.hookimpl
        def register_models(self):
            return [mlx_zoo.Architecture("llama", mlx_llama.ModelArgs, BrokenModel)]

    class Check(PluginConformance):
        model_type = "llama"
        reference = "LlamaForCausalLM"
        base_config = dict(vocab_size=272, hidden_size=64, intermediate_size=96,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)

    with isolated_registry() as registry:
        registry.register(Broken())
        check = Check()
        with pytest.raises(AssertionError, match="relative error"):
            check.test_parity(check.case("base", tmp_path_factory), tmp_path)
