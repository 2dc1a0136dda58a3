"""Token ids at every door: a tokenizer with ids past the model's vocabulary, prompt ids out of
range or of the wrong type, a sampler drawing a wild id, and a model called directly with one.
MLX's embedding lookup does no bounds check (an id >= vocab segfaults or reads whatever memory
follows the table), so each must be refused -- or made harmless -- before it reaches it."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import mlx.core as mx
import pytest

import mlx_zoo
from mlx_zoo.demos import demo_dir
from mlx_zoo.errors import GenerationArgumentError, TokenizerError
from mlx_zoo.layers import checked_token_ids
from mlx_zoo.tokenizer import check_ids_fit_vocab

DEMO = "demo:qwen2"
TIMEOUT = 180  # a hang fails the test rather than blocking the suite


@pytest.fixture(scope="module")
def demo():
    model, _ = mlx_zoo.load(DEMO)
    return model, mlx_zoo.load_tokenizer(DEMO)


def hostile_dir(tmp_path, edit) -> str:
    """A copy of the qwen2 demo whose tokenizer.json ``edit`` changes in place."""
    target = tmp_path / "hostile"
    shutil.copytree(demo_dir("qwen2"), target)
    path = target / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(target)


def vocab_id_too_big(data):
    data["model"]["vocab"]["zzhostile"] = 10**6


def added_token_too_big(data):
    data["added_tokens"].append({"id": 5000, "content": "<|hostile|>", "single_word": False,
                                 "lstrip": False, "rstrip": False, "normalized": False,
                                 "special": True})


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mlx_zoo.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=TIMEOUT, env=env)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=TIMEOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


# -- the tokenizer against config.json's vocab_size ---------------------------------------------


@pytest.mark.parametrize(("edit", "expected"), [
    (vocab_id_too_big, r"tokenizer\.json, key 'model\.vocab': token 'zzhostile' has id 1000000"),
    (added_token_too_big, r"tokenizer\.json, key 'added_tokens': token '<\|hostile\|>' has id "
                          r"5000"),
])
def test_tokenizer_ids_beyond_the_vocab_are_refused(tmp_path, edit, expected):
    model_dir = hostile_dir(tmp_path, edit)
    with pytest.raises(TokenizerError, match=expected) as info:
        mlx_zoo.load_tokenizer(model_dir)
    assert "vocab_size 1024" in str(info.value)


@pytest.mark.parametrize("edit", [vocab_id_too_big, added_token_too_big])
def test_cli_refuses_the_tokenizer_instead_of_crashing(tmp_path, edit):
    model_dir = hostile_dir(tmp_path, edit)
    proc = run_cli("generate", "--model", model_dir, "--max-tokens", "4", "--prompt",
                   "zzhostile <|hostile|>")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)  # not -11 (SIGSEGV)
    assert "mlx-zoo: error:" in proc.stderr and "tokenizer.json" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_vocab_size_read_from_text_config(tmp_path):
    model_dir = hostile_dir(tmp_path, lambda data: None)
    config_path = tmp_path / "hostile" / "config.json"
    config = json.loads(config_path.read_text())
    config["text_config"] = {"vocab_size": 512}
    del config["vocab_size"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match="vocab_size 512"):
        mlx_zoo.load_tokenizer(model_dir)


def test_a_tokenizer_longer_than_the_vocab_is_refused(tmp_path):
    """``len(hf)`` counts added tokens the tokenizers library numbered after the vocabulary."""

    class Renumbered:
        def __len__(self):
            return 1025

        def convert_ids_to_tokens(self, i):
            return "<|renumbered|>"

    with pytest.raises(TokenizerError, match=r"1025 ids; id 1024 .*'<\|renumbered\|>'"):
        check_ids_fit_vocab(tmp_path, {}, Renumbered(), 1024)


def test_the_demo_tokenizers_fit_their_models():
    for name in ("qwen2", "hunyuan", "llama4"):
        tokenizer = mlx_zoo.load_tokenizer(f"demo:{name}")
        assert tokenizer.vocab_size <= 1024


# -- prompt ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "expected"), [
    ([10**9], r"position 0 is 1000000000: expected an id in \[0, 1024\)"),
    ([1, 2, 1024], r"position 2 is 1024"),
    ([1, -1], r"position 1 is -1"),
    ([1, 2.0], r"position 1 is 2\.0 \(float\): expected an integer"),
    ([True, 1], r"position 0 is True \(bool\)"),
    ([[1, 2]], r"position 0 is \[1, 2\] \(list\)"),
    (["a"], r"position 0 is 'a' \(str\)"),
    (mx.array([1, 5000]), r"position 1 is 5000"),
    (mx.array([1, -7], dtype=mx.int32), r"position 1 is -7"),
    (mx.array([1.0, 2.0]), r"integer dtype"),
    (mx.array([True]), r"integer dtype"),
    (mx.array([[1, 2]]), r"1-D"),
    (None, r"prompt is None"),
    (42, r"sequence of token ids, got int"),
])
def test_bad_prompt_ids_are_refused(demo, prompt, expected):
    model, tokenizer = demo
    with pytest.raises(GenerationArgumentError, match=expected):
        mlx_zoo.generate(model, tokenizer, prompt, max_tokens=2)


@pytest.mark.parametrize("prompt", [[10**6], None, [1.5], b"bytes"])
def test_generate_step_checks_prompt_ids_itself(demo, prompt):
    model, _ = demo
    with pytest.raises(GenerationArgumentError):
        next(mlx_zoo.generate_step(prompt, model, max_tokens=2))


def test_numpy_and_int64_prompts_still_work(demo):
    import numpy as np

    model, tokenizer = demo
    ids = tokenizer.encode("Return a new")
    expected = mlx_zoo.generate(model, tokenizer, ids, max_tokens=5).tokens
    for prompt in (np.array(ids), mx.array(ids, dtype=mx.int64), mx.array(ids, dtype=mx.int32)):
        assert mlx_zoo.generate(model, tokenizer, prompt, max_tokens=5).tokens == expected


# -- what a sampler returns -----------------------------------------------------------------------


def wild_sampler(logprobs):
    return mx.array([10**6])


def negative_sampler(logprobs):
    return mx.array([-3], dtype=mx.int32)


def float_sampler(logprobs):
    return mx.argmax(logprobs, axis=-1).astype(mx.float32)


def two_ids_sampler(logprobs):
    return mx.array([1, 2])


@pytest.mark.parametrize(("sampler", "expected"), [
    (wild_sampler, r"wild_sampler returned token id 1000000: .* in \[0, 1024\)"),
    (negative_sampler, r"negative_sampler returned token id -3"),
    (float_sampler, r"float_sampler returned an array of shape \(1,\) and dtype .*float32"),
    (two_ids_sampler, r"two_ids_sampler returned an array of shape \(2,\)"),
    (lambda logprobs: 7, r"returned a int, not an mx.array"),
])
def test_a_sampler_returning_a_bad_id_is_named(demo, sampler, expected):
    model, tokenizer = demo
    with pytest.raises(GenerationArgumentError, match=expected):
        mlx_zoo.generate(model, tokenizer, "Return a new", max_tokens=4, sampler=sampler)


def test_a_wild_sampled_id_never_reaches_the_embedding():
    """In a fresh process, so that a segfault (the old behaviour) fails this test rather than
    killing the suite: the wild id is clamped before the model is fed (the next step is queued
    before the token is checked), and the error comes when the token is handed out."""
    proc = run_python("""
        import mlx.core as mx, mlx_zoo
        model, _ = mlx_zoo.load("demo:qwen2")
        steps = mlx_zoo.generate_step([1, 2, 3], model, max_tokens=8,
                                      sampler=lambda lp: mx.array([10**9]))
        try:
            next(steps)
        except mlx_zoo.GenerationArgumentError as e:
            print("refused:", e)
    """)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert "refused:" in proc.stdout and "1000000000" in proc.stdout


# -- the model called directly ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen2", "hunyuan", "llama4"])
def test_direct_model_calls_never_read_outside_the_embedding(name):
    """A prompt-sized input is checked (one synchronisation) and refused; a single id cannot be
    checked without stalling decode loops, so it is clamped and its logits are NaN."""
    proc = run_python(f"""
        import math
        import mlx.core as mx, mlx_zoo
        model, _ = mlx_zoo.load("demo:{name}")
        for ids in ([[10**6]], [[-1]]):
            logits = model(mx.array(ids, dtype=mx.int32 if ids[0][0] < 0 else mx.uint32))
            assert all(math.isnan(x) for x in logits[0, 0, :8].tolist()), ids
        good = model(mx.array([[5]]))
        assert not any(math.isnan(x) for x in good[0, 0].tolist())
        for ids in ([[1, 10**6]], [[3, 4], [5, 1024]]):
            try:
                model(mx.array(ids))
            except mlx_zoo.GenerationArgumentError as e:
                print("refused:", e)
        try:
            model(mx.array([[1.0, 2.0]]))
        except mlx_zoo.GenerationArgumentError as e:
            print("refused:", e)
    """)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    assert "token id 1000000 at position (0, 1)" in lines[0]
    assert "token id 1024 at position (1, 1)" in lines[1]
    assert "integer dtype" in lines[2]


def test_checked_token_ids_skips_the_check_and_restores_it(demo):
    model, _ = demo
    with checked_token_ids():
        model(mx.array([[1, 2, 3]]))  # no check (and no synchronisation) inside
    with pytest.raises(GenerationArgumentError):
        model(mx.array([[1, 2000]]))


def test_vocab_size_is_the_embedding_rows(demo):
    model, _ = demo
    assert model.vocab_size == 1024 == model.model.embed_tokens.weight.shape[0]
