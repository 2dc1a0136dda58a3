"""What a user can throw at ``mlx-zoo generate``/``chat`` and at the API behind them: KV-cache
quantization on every demo, group sizes that do not divide the heads, out-of-range seeds,
invalid UTF-8, chat templates that fail, prompts longer than the model's context. Each ends in
``mlx-zoo: error: ...`` and exit status 2 (never a traceback, a signal or a hang) -- or works."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest

import mlx_zoo
from mlx_zoo.demos import demo_dir
from mlx_zoo.errors import GenerationArgumentError, TokenizerError
from mlx_zoo.generate import ContextLengthWarning, resolve_kv_group_size

TIMEOUT = 180  # a hang fails the test rather than blocking the suite
DEMOS = ("qwen2", "hunyuan", "llama4")


def run_cli(*args, stdin: bytes | str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    text = not isinstance(stdin, bytes)
    return subprocess.run([sys.executable, "-m", "mlx_zoo.cli", *args], input=stdin,
                          capture_output=True, text=text, timeout=TIMEOUT, env=env)


def assert_refused(proc, *fragments) -> None:
    stderr = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, stderr)  # not negative: no signal
    assert "mlx-zoo: error:" in stderr and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


def demo_copy(tmp_path, name="qwen2", config=None, tokenizer_config=None) -> str:
    target = tmp_path / name
    shutil.copytree(demo_dir(name), target)
    for file, changes in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if changes:
            data = json.loads((target / file).read_text())
            data.update(changes)
            (target / file).write_text(json.dumps(data))
    return str(target)


# -- --kv-bits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DEMOS)
def test_kv_bits_works_on_every_demo(name):
    """The demos' heads are 32 wide: the old fixed group size 64 failed on all of them."""
    proc = run_cli("generate", "--model", f"demo:{name}", "--kv-bits", "8", "-m", "6",
                   "--no-chat-template")
    assert proc.returncode == 0, proc.stderr
    assert "Generation: " in proc.stdout


def test_an_explicit_group_size_that_does_not_divide_the_heads_is_refused():
    proc = run_cli("generate", "--kv-bits", "4", "--kv-group-size", "64", "-m", "3")
    assert_refused(proc, "kv_group_size 64 does not divide the model's head dim [32]",
                   "use one of [32]")


def test_kv_group_size_resolution():
    assert resolve_kv_group_size(None, [128]) == 128
    assert resolve_kv_group_size(None, [96]) == 32
    assert resolve_kv_group_size(None, [64, 192]) == 64
    assert resolve_kv_group_size(64, [128]) == 64
    with pytest.raises(GenerationArgumentError, match="no KV group size"):
        resolve_kv_group_size(None, [80 + 8])


def test_kv_bits_with_the_api_default_on_a_demo():
    model, _ = mlx_zoo.load("demo:llama4")
    tokenizer = mlx_zoo.load_tokenizer("demo:llama4")
    result = mlx_zoo.generate(model, tokenizer, "hello", max_tokens=4, kv_bits=4)
    assert result.generation_tokens == 4


def test_kv_group_size_help_names_the_default():
    proc = run_cli("generate", "--help")
    assert proc.returncode == 0
    assert "largest dividing" in proc.stdout and "--allow-long-context" in proc.stdout


# -- seeds --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [str(2**64), "-1", str(10**30)])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_out_of_range_seeds_are_refused(command, seed):
    proc = run_cli(command, "--seed", seed, "-m", "2", stdin="hi\n")
    assert_refused(proc, "seed must be an integer in [0, 2**64)")


def test_the_largest_seed_works():
    proc = run_cli("generate", "--seed", str(2**64 - 1), "--temp", "0.7", "-m", "3")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("seed", [2**64, -1, 1.5, True])
def test_out_of_range_seeds_are_refused_by_the_api(seed):
    model, _ = mlx_zoo.load("demo:qwen2")
    tokenizer = mlx_zoo.load_tokenizer("demo:qwen2")
    with pytest.raises(GenerationArgumentError, match="seed must be"):
        mlx_zoo.generate(model, tokenizer, "hi", max_tokens=2, seed=seed)


# -- text that is not valid UTF-8 ----------------------------------------------------------------


def test_invalid_utf8_on_the_command_line_is_refused():
    """Python decodes invalid argv bytes to lone surrogates (surrogateescape)."""
    proc = run_cli("generate", "-p", b"caf\xe9 au lait", "-m", "2")
    assert_refused(proc, "the prompt is not valid Unicode: character 3 is U+DCE9")


def test_invalid_utf8_on_standard_input_is_refused():
    proc = run_cli("generate", "-p", "-", "-m", "2", stdin=b"ok \xff\xfe")
    assert_refused(proc, "standard input is not valid UTF-8: byte 3 is 0xff")


def test_invalid_utf8_in_a_chat_message_is_refused():
    proc = run_cli("chat", "-m", "2", stdin=b"hello\n\xc3(\n")
    assert_refused(proc, "the message is not valid UTF-8: byte 0 is 0xc3")


def test_valid_utf8_on_standard_input_still_works():
    proc = run_cli("generate", "-p", "-", "-m", "2", stdin="café ☕".encode())
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("prompt", ["\ud800", "a\udcffb"])
def test_lone_surrogates_are_refused_by_the_api(prompt):
    model, _ = mlx_zoo.load("demo:qwen2")
    tokenizer = mlx_zoo.load_tokenizer("demo:qwen2")
    with pytest.raises(GenerationArgumentError, match="lone surrogate"):
        mlx_zoo.generate(model, tokenizer, prompt, max_tokens=2)
    with pytest.raises(GenerationArgumentError, match="the user message .*lone surrogate"):
        tokenizer.encode_chat([{"role": "user", "content": prompt}])


# -- chat templates that fail --------------------------------------------------------------------


FAILING_TEMPLATES = {
    "raise_exception": "{{ raise_exception('no system messages') }}",
    "undefined": "{{ messages[0].nothing.deeper }}",
    "type_error": "{% for m in messages %}{{ m['content'] + 1 }}{% endfor %}",
    "zero_division": "{{ 1 / 0 }}",
    "syntax": "{% for m in messages %}{{ m }}",
}


@pytest.mark.parametrize("template", FAILING_TEMPLATES.values(), ids=FAILING_TEMPLATES.keys())
def test_a_failing_chat_template_is_a_tokenizer_error(tmp_path, template):
    model_dir = demo_copy(tmp_path, tokenizer_config={"chat_template": template})
    tokenizer = mlx_zoo.load_tokenizer(model_dir)
    with pytest.raises(TokenizerError, match="tokenizer_config.json, key 'chat_template': "
                                             "rendering failed"):
        tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    proc = run_cli("generate", "--model", model_dir, "-m", "2")
    assert_refused(proc, "tokenizer_config.json, key 'chat_template'")


# -- prompts longer than the model's context ----------------------------------------------------

LONG_PROMPT = " ".join(["word"] * 80)  # > 64 tokens


@pytest.fixture
def short_context(tmp_path):
    return demo_copy(tmp_path, config={"max_position_embeddings": 64})


def test_cli_refuses_a_prompt_past_the_context_length(short_context):
    proc = run_cli("generate", "--model", short_context, "-p", LONG_PROMPT, "-m", "4",
                   "--no-chat-template")
    assert_refused(proc, "max_position_embeddings 64", "--allow-long-context")


def test_cli_refuses_when_max_tokens_runs_past_it(short_context):
    proc = run_cli("generate", "--model", short_context, "-p", "hello", "-m", "100",
                   "--no-chat-template")
    assert_refused(proc, "--max-tokens 100", "max_position_embeddings 64")


def test_cli_runs_past_it_when_allowed_and_within_it_anyway(short_context):
    proc = run_cli("generate", "--model", short_context, "-p", LONG_PROMPT, "-m", "4",
                   "--no-chat-template", "--allow-long-context")
    assert proc.returncode == 0, proc.stderr
    assert "ContextLengthWarning" not in proc.stderr
    proc = run_cli("generate", "--model", short_context, "-p", "hello", "-m", "8",
                   "--no-chat-template")
    assert proc.returncode == 0, proc.stderr


def test_api_warns_past_the_context_length(short_context):
    model, _ = mlx_zoo.load(short_context)
    tokenizer = mlx_zoo.load_tokenizer(short_context)
    with pytest.warns(ContextLengthWarning, match="max_position_embeddings \\(64\\)"):
        mlx_zoo.generate(model, tokenizer, LONG_PROMPT, max_tokens=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextLengthWarning)
        mlx_zoo.generate(model, tokenizer, "hello", max_tokens=8)
