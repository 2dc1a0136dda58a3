"""The demo checkpoints the plugins ship (``register_demos``): present, small, loadable by
``demo:NAME``, and -- end to end through tokenizer, RoPE, masks and caches of each
architecture -- they reproduce a passage they learned by heart and write English-like text."""

import json
import re
import shutil
from pathlib import Path

import mlx.core as mx
import pytest

import mlx_zoo
from mlx_zoo.demos import README, available_demos, demo_dir

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "scripts" / "demo_corpus.txt"
MAX_DEMO_BYTES = 5_000_000
MODEL_TYPES = {"qwen2": "qwen2", "hunyuan": "hunyuan_v1_dense", "llama4": "llama4_text"}
END_OF_TEXT = "<|endoftext|>"
CHAT_EVERY = 4  # scripts/train_demo.py: every 4th docstring is also trained as a chat turn

# Per demo: a docstring of the training text (by qualified name), how many of its words form the
# prompt, and how many of the following characters greedy decoding must reproduce. The passage
# spans ~60 tokens: across the llama4 demo's chunk boundary at position 32.
PASSAGES = {
    "qwen2": ("cmd.Cmd.cmdloop", 6, 120),
    "hunyuan": ("cmd.Cmd.cmdloop", 6, 120),
    "llama4": ("cmd.Cmd.cmdloop", 6, 120),
}
MIN_PASSAGE_TOKENS = 48
CHAT_QUESTION = "email.message.Message.values"  # its docstring was trained as a chat turn too


def corpus() -> dict[str, str]:
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t", 1) for line in lines)


@pytest.fixture(scope="module", params=sorted(MODEL_TYPES))
def demo(request):
    name = request.param
    if name not in available_demos():
        pytest.fail(f"demo {name!r} is missing: no installed plugin provides it")
    model, config = mlx_zoo.load(f"demo:{name}")
    return name, model, config, mlx_zoo.load_tokenizer(f"demo:{name}")


def test_qwen2_demo_ships():
    assert "qwen2" in available_demos()


@pytest.mark.parametrize("name", available_demos())
def test_demo_files_are_small_and_complete(name):
    files = {p.name: p.stat().st_size for p in (demo_dir(name)).iterdir()}
    for required in ("config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "generation_config.json"):
        assert required in files, f"{name}: {required} missing"
    assert sum(files.values()) <= MAX_DEMO_BYTES


def test_demo_model_types(demo):
    name, _, config, _ = demo
    assert config.model_type == MODEL_TYPES[name]


def passage(name: str) -> tuple[str, str]:
    """The prompt (first words) and the expected continuation of the demo's passage."""
    key, words, chars = PASSAGES[name]
    text = corpus()[key]
    split = len(" ".join(text.split(" ")[:words]))
    return END_OF_TEXT + text[:split], text[split:split + chars]


def continuation(model, tokenizer, prompt: str, chars: int) -> str:
    return mlx_zoo.generate(model, tokenizer, prompt, max_tokens=chars).text[:chars]


def test_demo_reproduces_a_passage_learned_by_heart(demo):
    name, model, _, tokenizer = demo
    prompt, expected = passage(name)
    assert len(tokenizer.encode(prompt + expected)) >= MIN_PASSAGE_TOKENS
    assert continuation(model, tokenizer, prompt, len(expected)) == expected


@pytest.mark.skipif(
    mx.default_device() == mx.gpu and not mx.metal.is_available(),
    reason="MLX 0.32.4's CUDA quantized_matmul has no kernel for the demos' float32 activations "
           "with head_dim 32 ('No implementation for problem shape'; docs/benchmarks.md)")
def test_passage_survives_an_8_bit_kv_cache(demo):
    """With the full-attention caches quantized to 8 bits after the first 8 positions
    (``kv_bits``), greedy decoding still reproduces the passage, and the caches the generation
    filled are quantized ones (chunked/sliding caches stay as they were)."""
    name, model, _, tokenizer = demo
    prompt, expected = passage(name)
    cache = mlx_zoo.make_prompt_cache(model)
    result = mlx_zoo.generate(model, tokenizer, prompt, max_tokens=len(expected),
                              prompt_cache=cache, kv_bits=8, kv_group_size=32,
                              quantized_kv_start=8)
    assert result.text[:len(expected)] == expected
    kinds = {type(c).__name__ for c in cache}
    assert "QuantizedKVCache" in kinds and "KVCache" not in kinds


def test_kv_bits_are_checked():
    with pytest.raises(mlx_zoo.GenerationArgumentError, match="kv_bits must be one of"):
        next(mlx_zoo.generate_step([1, 2], None, kv_bits=7))
    with pytest.raises(mlx_zoo.GenerationArgumentError, match="kv_group_size must be one of"):
        next(mlx_zoo.generate_step([1, 2], None, kv_bits=4, kv_group_size=48))


def test_the_passage_check_fails_with_a_wrong_rope_base(demo, tmp_path):
    """The check can fail: the same weights with RoPE's base theta 100x too large (config.json
    edited) lose the passage."""
    name, _, _, tokenizer = demo
    copy = tmp_path / name
    shutil.copytree(demo_dir(name), copy)
    config = json.loads((copy / "config.json").read_text())
    config["rope_theta"] *= 100
    (copy / "config.json").write_text(json.dumps(config))
    wrong, _ = mlx_zoo.load(copy)
    prompt, expected = passage(name)
    assert continuation(wrong, tokenizer, prompt, len(expected)) != expected


def test_demo_answers_a_trained_question_through_the_chat_template(demo):
    name, model, _, tokenizer = demo
    docs = corpus()
    assert list(docs).index(CHAT_QUESTION) % CHAT_EVERY == 0  # a trained chat turn
    ids = tokenizer.encode_chat([{"role": "user", "content": f"What does {CHAT_QUESTION} do?"}])
    result = mlx_zoo.generate(model, tokenizer, ids, max_tokens=80)
    assert result.text == docs[CHAT_QUESTION]
    assert result.finish_reason == "stop"  # on <|im_end|>


def test_demo_writes_english_like_text(demo):
    """Sampled text about something the model never saw: at least 85% of its words are words
    of the training text (token soup would be fragments)."""
    name, model, _, tokenizer = demo
    vocabulary = set(re.findall(r"[a-z]+", CORPUS.read_text(encoding="utf-8").lower()))
    ids = tokenizer.encode_chat([{"role": "user", "content": "What does mlx_zoo.load do?"}])
    texts = [mlx_zoo.generate(model, tokenizer, ids, max_tokens=60, temp=0.7, seed=seed).text
             for seed in range(3)]
    words = re.findall(r"[a-z]+", " ".join(texts).lower())
    assert len(words) >= 15
    known = sum(w in vocabulary for w in words) / len(words)
    assert known >= 0.85, (known, texts)


def test_llama4_demo_uses_chunked_attention_and_experts():
    if "llama4" not in available_demos():
        pytest.fail("demo llama4 is missing")
    model, config = mlx_zoo.load("demo:llama4")
    kinds = {type(c).__name__ for c in mlx_zoo.make_prompt_cache(model)}
    assert kinds == {"ChunkedKVCache", "KVCache"}
    assert config.attention_chunk_size < 64 and config.num_local_experts > 1


def test_readme_names_the_licence_of_the_training_text():
    readme = (README).read_text(encoding="utf-8")
    assert "PSF License" in readme and "demo_corpus.txt" in readme
    assert CORPUS.stat().st_size > 50_000
