"""Generation end to end on the qwen2 demo checkpoint: streaming, seeds, stop conditions, argument
checks, prefill chunking, speed figures; the tokenizer wrapper and the streaming detokenizers."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_zoo
from mlx_zoo.generate import _StopStrings, format_stats
from mlx_zoo.tokenizer import ByteLevelDetokenizer, GenericDetokenizer

DEMO = "demo:qwen2"
PLAIN = "<|endoftext|>Return a new"  # a plain-text prompt in the demo's training format
QUESTION = [{"role": "user", "content": "What does json.dumps do?"}]


@pytest.fixture(scope="module")
def demo():
    model, _ = mlx_zoo.load(DEMO)
    return model, mlx_zoo.load_tokenizer(DEMO)


def run(demo, prompt=PLAIN, **kwargs):
    model, tokenizer = demo
    return mlx_zoo.generate(model, tokenizer, prompt, **kwargs)


def stream(demo, prompt=PLAIN, **kwargs):
    model, tokenizer = demo
    return list(mlx_zoo.stream_generate(model, tokenizer, prompt, **kwargs))


# -- streaming, seeds, stop conditions ----------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"max_tokens": 40},
    {"max_tokens": 40, "temp": 0.8, "top_p": 0.9, "seed": 3},
    {"max_tokens": 40, "temp": 1.0, "top_k": 20, "min_p": 0.05, "seed": 5,
     "repetition_penalty": 1.2},
])
def test_streaming_and_non_streaming_results_are_identical(demo, kwargs):
    responses = stream(demo, **kwargs)
    result = run(demo, **kwargs)
    assert "".join(r.text for r in responses) == result.text
    assert [r.token for r in responses] == result.tokens
    assert responses[-1].finish_reason == result.finish_reason


def test_streamed_text_is_the_decoded_tokens(demo):
    _, tokenizer = demo
    result = run(demo, max_tokens=60, temp=1.0, seed=1)
    tokens = [t for t in result.tokens if t not in tokenizer.eos_token_ids]
    assert result.text == tokenizer.decode(tokens)


def test_a_seed_makes_sampling_reproducible(demo):
    texts = [run(demo, max_tokens=30, temp=1.0, seed=seed).text for seed in (11, 11, 12, 13)]
    assert texts[0] == texts[1]
    assert len(set(texts)) > 1  # and different seeds draw differently


def test_max_tokens_ends_generation(demo):
    responses = stream(demo, max_tokens=5)
    assert len(responses) == 5
    assert [r.finish_reason for r in responses] == [None] * 4 + ["length"]
    assert responses[-1].generation_tokens == 5


def test_eos_ends_generation_and_is_not_text(demo):
    model, tokenizer = demo
    prompt = tokenizer.encode_chat(QUESTION)
    result = mlx_zoo.generate(model, tokenizer, prompt, max_tokens=100)
    assert result.finish_reason == "stop"
    assert result.tokens[-1] in tokenizer.eos_token_ids
    assert len(result.tokens) < 100
    assert "<|im_end|>" not in result.text and result.text.strip()


def test_any_configured_eos_id_stops(demo):
    """An EOS id added to the tokenizer's set stops generation on that token."""
    model, tokenizer = demo
    free = run(demo, max_tokens=20)
    stop_at = free.tokens[3]
    custom = mlx_zoo.Tokenizer(tokenizer.hf, set(tokenizer.eos_token_ids) | {stop_at},
                               json.loads((mlx_zoo.resolve_model_dir(DEMO) /
                                           "tokenizer.json").read_text()))
    result = mlx_zoo.generate(model, custom, PLAIN, max_tokens=20)
    first = free.tokens.index(stop_at)
    assert result.tokens == free.tokens[:first + 1]
    assert result.finish_reason == "stop"
    assert result.text == tokenizer.decode(free.tokens[:first])


def test_stop_string_ends_generation_before_it(demo):
    free = run(demo, max_tokens=40).text
    stop = free[12:16]
    cut = free.index(stop)
    result = run(demo, max_tokens=40, stop=[stop, "never generated"])
    assert result.text == free[:cut]
    assert result.finish_reason == "stop"
    assert len(result.tokens) < 40


def test_stop_strings_are_never_partly_streamed():
    stops = _StopStrings(["lo W"])
    assert stops.feed("Hel") == ("He", False)  # "l" may begin the stop string: held back
    assert stops.feed("lo") == ("l", False)  # now "lo" may
    assert stops.feed(" Wo") == ("", True)
    stops = _StopStrings(["xyz"])
    pieces = [stops.feed(p) for p in ("ab x", "y", "q")]
    assert pieces == [("ab ", False), ("", False), ("xyq", False)]
    assert stops.flush() == ""


# -- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, name", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"temp": -0.5}, "temp"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"min_p": 2.0}, "min_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"seed": -1}, "seed"),
    ({"prefill_step_size": 0}, "prefill_step_size"),
    ({"stop": [""]}, "stop"),
])
def test_invalid_arguments_get_clear_errors(demo, kwargs, name):
    with pytest.raises(mlx_zoo.GenerationArgumentError, match=name):
        run(demo, **kwargs)


def test_empty_prompt_is_rejected(demo):
    with pytest.raises(mlx_zoo.GenerationArgumentError, match="prompt"):
        run(demo, prompt=[])


# -- the decode loop ---------------------------------------------------------------------------


def test_prefill_in_chunks_gives_the_same_tokens(demo):
    model, tokenizer = demo
    prompt = tokenizer.encode(PLAIN + " string. " * 8)
    results = {}
    for size in (1, 7, 2048):
        steps = list(mlx_zoo.generate_step(prompt, model, max_tokens=8, prefill_step_size=size))
        results[size] = ([t for t, _ in steps], np.stack([np.array(lp) for _, lp in steps]))
    for size in (1, 7):
        assert results[size][0] == results[2048][0]
        np.testing.assert_allclose(results[size][1], results[2048][1], atol=1e-4)


def test_the_prompt_cache_is_the_models_own_and_is_extended(demo):
    model, tokenizer = demo
    cache = mlx_zoo.make_prompt_cache(model)
    prompt = tokenizer.encode(PLAIN)
    list(mlx_zoo.generate_step(prompt, model, max_tokens=6, prompt_cache=cache))
    # the prompt and every generated token but the last went through the model
    assert all(c.offset == len(prompt) + 5 for c in cache)


def test_repetition_penalty_prevents_recent_repeats(demo):
    model, tokenizer = demo
    prompt = tokenizer.encode(PLAIN)
    tokens = run(demo, max_tokens=30, repetition_penalty=50.0, repetition_context_size=8).tokens
    history = prompt + tokens
    for i, token in enumerate(tokens):
        recent = history[len(prompt) + i - 8: len(prompt) + i]
        assert token not in recent


def test_responses_report_speed_and_peak_memory(demo):
    model, tokenizer = demo
    prompt = tokenizer.encode(PLAIN)
    last = stream(demo, prompt=prompt, max_tokens=10)[-1]
    assert last.prompt_tokens == len(prompt)
    assert last.prompt_tps > 0 and last.generation_tps > 0
    assert last.generation_tokens == 10
    assert 0 < last.peak_memory < 1  # GB
    report = format_stats(last)
    assert report[0].startswith("Prompt: ") and "tokens-per-sec" in report[1]
    assert report[2].startswith("Peak memory: ")


# -- tokenizer and detokenizers ----------------------------------------------------------------

UNICODE_TEXT = "Grüße, 世界! naïve café 🎉🐍 done\nnext line ½ ∑"


@pytest.mark.parametrize("kind", ["byte-level", "generic"])
def test_streaming_detokenizers_match_decode_and_never_break_utf8(demo, kind):
    _, tokenizer = demo
    ids = tokenizer.encode(UNICODE_TEXT)
    assert len(ids) > len(UNICODE_TEXT.encode()) / 4  # multi-byte characters span tokens
    detok = tokenizer.detokenizer() if kind == "byte-level" else GenericDetokenizer(
        tokenizer.decode)
    assert isinstance(detok, ByteLevelDetokenizer) == (kind == "byte-level")
    pieces = [detok.add_token(i) for i in ids] + [detok.finalize()]
    assert "".join(pieces) == tokenizer.decode(ids) == UNICODE_TEXT
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # some tokens held back an incomplete character


def test_generic_detokenizer_moves_its_window(demo):
    _, tokenizer = demo
    ids = tokenizer.encode(UNICODE_TEXT * 6)
    detok = GenericDetokenizer(tokenizer.decode)
    assert "".join([detok.add_token(i) for i in ids] + [detok.finalize()]) == UNICODE_TEXT * 6
    assert len(detok._tokens) <= GenericDetokenizer.WINDOW


def test_chat_template_and_eos_ids(demo):
    _, tokenizer = demo
    assert tokenizer.has_chat_template
    text = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tokenizer.encode_chat(QUESTION)
    assert tokenizer.decode(ids) == text
    assert tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True) == ids
    eos = {tokenizer.hf.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert eos <= tokenizer.eos_token_ids


@pytest.fixture
def demo_copy(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(mlx_zoo.resolve_model_dir(DEMO), target)
    return target


def test_eos_ids_are_read_from_config_and_generation_config(demo_copy):
    (demo_copy / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 6]}))
    config = json.loads((demo_copy / "config.json").read_text())
    config["eos_token_id"] = 7
    (demo_copy / "config.json").write_text(json.dumps(config))
    tokenizer = mlx_zoo.load_tokenizer(demo_copy, eos_token_ids=[9])
    assert {5, 6, 7, 9} <= tokenizer.eos_token_ids


def test_tokenizer_needing_custom_code_is_refused(demo_copy):
    path = demo_copy / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    path.write_text(json.dumps(config))
    (demo_copy / "tokenization_evil.py").write_text("raise SystemExit('custom code ran')\n")
    with pytest.raises(mlx_zoo.TokenizerError, match="auto_map.*custom code"):
        mlx_zoo.load_tokenizer(demo_copy)


def test_missing_tokenizer_files_are_named(demo_copy):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (demo_copy / name).unlink()
    with pytest.raises(mlx_zoo.TokenizerError, match="tokenizer.json"):
        mlx_zoo.load_tokenizer(demo_copy)


def test_bad_eos_id_is_named(demo_copy):
    (demo_copy / "generation_config.json").write_text(json.dumps({"eos_token_id": "</s>"}))
    with pytest.raises(mlx_zoo.TokenizerError, match="generation_config.json.*eos_token_id"):
        mlx_zoo.load_tokenizer(demo_copy)


def test_import_mlx_zoo_does_not_import_transformers():
    code = ("import sys, mlx_zoo; bad = [m for m in ('transformers', 'huggingface_hub', "
            "'tokenizers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generate_accepts_token_arrays(demo):
    model, tokenizer = demo
    ids = tokenizer.encode(PLAIN)
    a = run(demo, prompt=mx.array(ids), max_tokens=8)
    b = run(demo, prompt=ids, max_tokens=8)
    assert a.tokens == b.tokens and str(a) == a.text


def test_reusing_the_prompt_cache_for_the_next_turn_gives_the_same_reply(demo):
    """A chat's second turn fed through the cache of the first (only the new tokens go through
    the model; what differs after the common prefix is trimmed) answers as a fresh run does."""
    model, tokenizer = demo
    first = tokenizer.encode_chat(QUESTION)
    cache = mlx_zoo.make_prompt_cache(model)
    reply = mlx_zoo.generate(model, tokenizer, first, max_tokens=40, prompt_cache=cache)
    cached = (first + reply.tokens)[:cache[0].offset]
    turns = QUESTION + [{"role": "assistant", "content": reply.text},
                        {"role": "user", "content": "What does os.path.join do?"}]
    second = tokenizer.encode_chat(turns)
    cache, start = mlx_zoo.reuse_prompt_cache(model, cache, cached, second)
    assert start > len(first)  # the first turn was not processed again
    reused = mlx_zoo.generate(model, tokenizer, second[start:], max_tokens=40, prompt_cache=cache)
    fresh = mlx_zoo.generate(model, tokenizer, second, max_tokens=40)
    assert reused.tokens == fresh.tokens


def test_an_untrimmable_cache_is_replaced(demo):
    model, tokenizer = demo
    cache = mlx_zoo.make_prompt_cache(model)
    tokens = tokenizer.encode(PLAIN)
    list(mlx_zoo.generate_step(tokens, model, max_tokens=3, prompt_cache=cache))
    held = (tokens + [0, 0])[:cache[0].offset]
    same, start = mlx_zoo.reuse_prompt_cache(model, cache, held, tokens[:-1] + [5])
    assert same is cache and start == len(tokens) - 1 and cache[0].offset == start
    chunked = [mlx_zoo.ChunkedKVCache(4) for _ in cache]
    for c in chunked:
        c.offset = len(held)
    fresh, start = mlx_zoo.reuse_prompt_cache(model, chunked, held, [1, 2])
    assert start == 0 and all(c.offset == 0 for c in fresh)


@pytest.fixture(scope="module")
def sentencepiece_style(tmp_path_factory):
    """A tokenizer in the SentencePiece style (Metaspace '▁' words, byte fallback tokens
    <0xNN> for characters outside the vocabulary), trained on part of the demo corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = tmp_path_factory.mktemp("spm")
    corpus = Path(__file__).resolve().parents[2] / "scripts" / "demo_corpus.txt"
    lines = [line.split("\t", 1)[1] for line in corpus.read_text().splitlines()[:300]]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=600, special_tokens=specials))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "unk_token": "<unk>"}))
    return mlx_zoo.load_tokenizer(path)


def test_generic_detokenizer_on_a_sentencepiece_style_tokenizer(sentencepiece_style):
    """Leading spaces (the '▁' of each word) and byte-fallback characters come out right, also
    after the detokenizer's window has moved on several times."""
    tokenizer = sentencepiece_style
    text = ("Return the value of x. " + UNICODE_TEXT + " ") * 5
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = tokenizer.detokenizer()
    assert isinstance(detok, GenericDetokenizer)
    pieces = [detok.add_token(i) for i in ids] + [detok.finalize()]
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces).startswith("Return the value of x. Grüße, 世界!")


def test_a_model_config_transformers_rejects_does_not_block_the_tokenizer(demo_copy):
    """AutoTokenizer parses config.json only to pick a tokenizer class; transformers' strict
    Llama4TextConfig rejects a float floor_scale (as mlx-zoo saves it), so the tokenizer is then
    loaded from tokenizer_config.json alone -- with the same encoding."""
    reference = mlx_zoo.load_tokenizer(demo_copy)
    (demo_copy / "config.json").write_text(json.dumps(
        {"model_type": "llama4_text", "floor_scale": 8192.0, "hidden_size": 128}))
    tokenizer = mlx_zoo.load_tokenizer(demo_copy)
    assert tokenizer.encode(UNICODE_TEXT) == reference.encode(UNICODE_TEXT)
    assert tokenizer.eos_token_ids == reference.eos_token_ids


def test_byte_level_detokenizer_ids_in_the_embedding_padding():
    """Embedding tables are often padded past the tokenizer (Qwen2: 151,936 rows for 151,665
    tokens): an id in the padding stands for no text instead of raising IndexError."""
    detok = ByteLevelDetokenizer([b"a", b"b"])
    assert detok.add_token(0) + detok.add_token(5) + detok.add_token(1) + detok.finalize() == "ab"
