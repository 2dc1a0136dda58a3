"""``mlx-zoo serve`` as a real server process on 127.0.0.1, driven by the official ``openai``
client: models, chat (plain and streamed), completions, logprobs (lm-evaluation-harness's
echo + logprobs + max_tokens=0 scoring), OpenAI-shaped errors, 16 concurrent streams with the
same text as each request alone (greedy), and a client that disconnects mid-stream freeing its
batch slot. One server for the module; every wait is bounded."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import mlx_zoo  # noqa: E402

MODEL = "demo:qwen2"
START_TIMEOUT_S = 90
REQUEST_TIMEOUT_S = 60
MESSAGES = ["hello there", "what is a plugin?", "write a function that adds two numbers", "x",
            "tell me about caches, keys and values in attention, at length please",
            "sort a list", "open a file and read it", "what time is it"]


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def post_raw(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(local_server):
    command = [sys.executable, "-m", "mlx_zoo.serve", "--model", MODEL, "--host", "127.0.0.1",
               "--port", "{port}", "--max-concurrency", "16", "--prefill-step-size", "16",
               "--log-level", "warning"]
    with local_server(command, "/health", START_TIMEOUT_S) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0,
                         timeout=REQUEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def local():
    """The same model in this process, for the expected (alone, greedy) answers."""
    model, _ = mlx_zoo.load(MODEL, dtype="auto", dequantize="auto", fuse=True)
    return model, mlx_zoo.load_tokenizer(MODEL)


def alone(local, messages: list[dict], max_tokens: int) -> str:
    model, tokenizer = local
    return mlx_zoo.generate(model, tokenizer, tokenizer.encode_chat(messages),
                            max_tokens=max_tokens).text


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_health_and_models(server, client):
    status, body = get_json(f"{server}/health")
    assert status == 200 and body["status"] == "ok" and body["batching"] == "batched"
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_plain_and_streamed(client, local):
    expected = alone(local, user("hello there"), 24)
    reply = client.chat.completions.create(model=MODEL, messages=user("hello there"),
                                           max_tokens=24, temperature=0)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant"
    # no <think> in the answer: the reasoning fields are there, empty (vLLM's shape)
    assert reply.choices[0].message.model_extra == {"reasoning_content": None, "reasoning": None}
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [{"type": "text",
                                                             "text": "hello there"}]}],
        max_completion_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == expected
    assert finish == reply.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens


def test_completions_text_and_token_ids(client, local):
    model, tokenizer = local
    expected = mlx_zoo.generate(model, tokenizer, "def add(a, b):", max_tokens=12).text
    reply = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=12,
                                      temperature=0)
    assert reply.choices[0].text == expected
    ids = tokenizer.encode("def add(a, b):")
    reply = client.completions.create(model=MODEL, prompt=ids, max_tokens=12, temperature=0)
    assert reply.choices[0].text == expected and reply.usage.prompt_tokens == len(ids)
    echo = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=4,
                                     temperature=0, echo=True)
    assert echo.choices[0].text.startswith("def add(a, b):")


def test_logprobs(client, local):
    reply = client.chat.completions.create(model=MODEL, messages=user("hello there"),
                                           max_tokens=8, temperature=0, logprobs=True,
                                           top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) >= 1 and "".join(c.token for c in content) == \
        reply.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy: the top
    # lm-evaluation-harness's loglikelihood request
    _, tokenizer = local
    text = "The quick brown fox"
    score = client.completions.create(model=MODEL, prompt=text, max_tokens=0, echo=True,
                                      logprobs=1, temperature=0)
    lp = score.choices[0].logprobs
    assert score.choices[0].text == text
    assert len(lp.tokens) == len(tokenizer.encode(text)) and lp.token_logprobs[0] is None
    assert all(v is not None and v <= 0 for v in lp.token_logprobs[1:])
    assert all(len(t) == 1 for t in lp.top_logprobs[1:])
    assert score.usage.completion_tokens == 0


def test_n_and_seed(client):
    reply = client.chat.completions.create(model=MODEL, messages=user("sort a list"),
                                           max_tokens=12, temperature=1.0, seed=3, n=2)
    again = client.chat.completions.create(model=MODEL, messages=user("sort a list"),
                                           max_tokens=12, temperature=1.0, seed=3, n=2)
    assert [c.index for c in reply.choices] == [0, 1]
    assert [c.message.content for c in reply.choices] == [c.message.content
                                                          for c in again.choices]


@pytest.mark.parametrize("kwargs,param", [
    ({"temperature": "hot"}, "temperature"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"extra_body": {"top_p": 0}}, "top_p"),
    ({"n": 99}, "n"),
    ({"logit_bias": {"999999": 5}}, "logit_bias"),
    ({"stop": [1, 2]}, "stop"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                  "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"extra_body": {"chat_template_kwargs": "enable_thinking=false"}}, "chat_template_kwargs"),
    ({"extra_body": {"chat_template_kwargs": {"tokenize": True}}}, "chat_template_kwargs"),
])
def test_bad_fields_are_400(client, kwargs, param):
    kwargs = {"model": MODEL, "messages": user("hi"), "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**kwargs)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param and info.value.body["message"]


def test_unknown_model_and_bad_json(server, client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=user("hi"), max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=[5, 10**9], max_tokens=4)
    status, body = post_raw(f"{server}/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = post_raw(f"{server}/v1/completions", b"[1, 2]")
    assert status == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    assert get_json(f"{server}/v1/nothing")[0] == 404


def test_16_concurrent_streams_match_alone(client, local):
    """16 streamed chat requests at once, decoded together: each gets the text it gets alone."""
    prompts = [user(MESSAGES[i % len(MESSAGES)] * (1 + i % 3)) for i in range(16)]
    expected = [alone(local, p, 24) for p in prompts]

    def stream_one(messages):
        pieces = []
        stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24,
                                                temperature=0, stream=True)
        for n, chunk in enumerate(stream):
            assert n < 1000
            pieces.extend(c.delta.content or "" for c in chunk.choices)
        return "".join(pieces)

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(stream_one, prompts, timeout=REQUEST_TIMEOUT_S * 2))
    assert got == expected


def test_disconnect_mid_stream_frees_slot(server, client):
    before = get_json(f"{server}/health")[1]["generated_tokens"]
    stream = client.chat.completions.create(
        model=MODEL, messages=user("hello there"), max_tokens=3000, temperature=0, stream=True,
        logit_bias={"0": -100, "2": -100})  # no end-of-sequence: it would run on
    for n, _ in enumerate(stream):
        if n == 3:
            break
    stream.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        body = get_json(f"{server}/health")[1]
        if body["running"] == 0 and body["prefilling"] == 0:
            break
        time.sleep(0.1)
    assert body["running"] == 0, body
    assert body["generated_tokens"] - before < 1500  # stopped long before its 3000 tokens


def test_response_format_json_schema(client):
    pytest.importorskip("llguidance")
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
              "required": ["city"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model=MODEL, messages=user("Where is the Eiffel tower? Answer in JSON."), max_tokens=100,
        temperature=0, response_format={"type": "json_schema",
                                        "json_schema": {"name": "place", "schema": schema}})
    assert list(json.loads(reply.choices[0].message.content)) == ["city"]
    reply = client.chat.completions.create(model=MODEL, messages=user("JSON please"),
                                           max_tokens=100, temperature=0,
                                           response_format={"type": "json_object"})
    content = reply.choices[0].message.content
    assert content.startswith("{")  # the demo model may ramble inside a string until max_tokens
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_tools_accepted_and_refusals(client):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    # the demo's template has no tools section: tools the model would choose from are refused
    # (tests/integration/test_serve_real_templates.py serves templates that show them)
    with pytest.raises(openai.BadRequestError, match="does not show tools"):
        client.chat.completions.create(model=MODEL, messages=user("weather in Paris?"),
                                       max_tokens=8, temperature=0, tools=tools)
    for bad in ({"type": "function", "function": {"name": "not_a_tool"}}, "always",
                {"type": "function"}):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=4,
                                           tools=tools, tool_choice=bad)
    with pytest.raises(openai.BadRequestError):  # a forced call is already a schema
        client.chat.completions.create(
            model=MODEL, messages=user("hi"), max_tokens=4, tools=tools, tool_choice="required",
            response_format={"type": "json_object"})


FORCED_TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "weather of a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "maxLength": 12},
                                      "unit": {"enum": ["celsius", "fahrenheit"]}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "the time in a zone",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}},
                       "required": ["zone"], "additionalProperties": False}}}]


def check_weather_call(call) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")


def test_tool_choice_forces_a_call(client):
    """``tool_choice`` naming a function, or ``"required"``, constrains the answer to the call
    (the tool's parameters schema, through llguidance), whatever the model would write: even a
    random-weight model answers with a valid call, whole and streamed."""
    pytest.importorskip("llguidance")
    named = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(model=MODEL, messages=user("weather in Paris?"),
                                           max_tokens=120, temperature=0, tools=FORCED_TOOLS,
                                           tool_choice=named)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None and len(choice.message.tool_calls) == 1
    check_weather_call(choice.message.tool_calls[0])

    stream = client.chat.completions.create(model=MODEL, messages=user("weather in Paris?"),
                                            max_tokens=120, temperature=0, tools=FORCED_TOOLS,
                                            tool_choice=named, stream=True)
    deltas = [c.choices[0] for c in stream if c.choices]
    assert not any(d.delta.content for d in deltas)  # nothing shown as text
    calls = [t for d in deltas for t in (d.delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0
    check_weather_call(calls[0])
    assert calls[0].function.arguments == choice.message.tool_calls[0].function.arguments
    assert deltas[-1].finish_reason == "tool_calls"

    for question in ("weather in Paris?", "what time is it?"):
        reply = client.chat.completions.create(model=MODEL, messages=user(question),
                                               max_tokens=120, temperature=0,
                                               tools=FORCED_TOOLS, tool_choice="required")
        (call,) = reply.choices[0].message.tool_calls
        assert call.function.name in ("get_weather", "get_time")
        if call.function.name == "get_weather":
            check_weather_call(call)
        else:
            assert json.loads(call.function.arguments)["zone"] in ("utc", "cet")
