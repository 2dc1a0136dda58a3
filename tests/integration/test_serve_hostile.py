"""Hostile requests to ``mlx-zoo serve`` (issue 29), in process on the demo model: JSON schemas
as pydantic writes them (``$defs`` + ``$ref``) in forced tool calls, self-referencing schemas,
bodies nested 100k deep, lone surrogates, non-object tool parameters, tools a template drops, a
client that leaves a non-stream request, a second server on a busy port, NaN flags."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette")
pytest.importorskip("llguidance")

from mlx_zoo.serve import app as serve_app  # noqa: E402
from mlx_zoo.serve import main as serve_main  # noqa: E402
from mlx_zoo.serve import tools as serve_tools  # noqa: E402
from mlx_zoo.serve.app import Server  # noqa: E402
from mlx_zoo.serve.engine import Engine  # noqa: E402
from mlx_zoo.serve.protocol import APIError  # noqa: E402

TIMEOUT_S = 60
CITY = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}},
        "required": ["name"], "additionalProperties": False}
PYDANTIC = {"$defs": {"City": CITY}, "type": "object",
            "properties": {"city": {"$ref": "#/$defs/City"}}, "required": ["city"],
            "additionalProperties": False, "title": "Weather"}


class FakeRequest:
    """What the handlers use of a Starlette request: the body, and whether the client left."""

    def __init__(self, body: bytes = b"{}", disconnected: bool = False):
        self._raw, self.disconnected = body, disconnected
        self.method, self.url = "POST", type("U", (), {"path": "/v1/chat/completions"})()

    async def body(self) -> bytes:
        return self._raw

    async def is_disconnected(self) -> bool:
        return self.disconnected


@pytest.fixture(scope="module")
def server():
    engine = Engine("demo:qwen2", max_concurrency=4, prefill_step_size=64, warmup=False)
    engine.start()
    assert engine.ready.wait(TIMEOUT_S) and engine.load_error is None, engine.load_error
    yield Server(engine, "demo:qwen2", {"max_tokens": 16, "temperature": 0.0, "top_p": 1.0,
                                        "top_k": 0, "min_p": 0.0})
    engine.stop()


def tool(name: str, parameters) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def chat(server: Server, **fields) -> dict:
    """The whole answer to a chat request (parsed and generated in process)."""
    body = {"messages": [{"role": "user", "content": "weather in Paris?"}], **fields}
    parsed = server.parse_chat(body)
    response = asyncio.run(server._answer(FakeRequest(), parsed, chat=True))
    assert response.status_code == 200
    return json.loads(response.body)


def refused(call, *args, **kwargs) -> APIError:
    with pytest.raises(APIError) as info:
        call(*args, **kwargs)
    assert info.value.status == 400
    return info.value


# -- JSON schemas ----------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_weather"}}])
def test_forced_call_with_pydantic_refs(server, choice):
    """``$defs`` + ``"$ref": "#/$defs/City"`` in a tool's parameters: the forced answer is a call
    whose arguments validate, with ``tool_choice: "required"`` (several tools combined) too."""
    zone = {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}},
            "required": ["zone"], "additionalProperties": False}
    tools = [tool("get_weather", PYDANTIC), tool("get_time", zone)]
    reply = chat(server, tools=tools, tool_choice=choice, max_tokens=80)
    (answer,) = reply["choices"]
    assert answer["finish_reason"] == "tool_calls", answer
    call = answer["message"]["tool_calls"][0]["function"]
    arguments = json.loads(call["arguments"])
    if call["name"] == "get_weather":
        assert list(arguments) == ["city"] and isinstance(arguments["city"]["name"], str)
    else:
        assert arguments["zone"] in ("utc", "cet")


SELF_REFERENCING = [{"$ref": "#"}, {"anyOf": [{"$ref": "#"}]},
                    {"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"}]


@pytest.mark.parametrize("schema", SELF_REFERENCING)
def test_self_referencing_schema_is_refused(server, schema):
    """A schema no JSON value satisfies is a 400 naming the field it came from, not an empty
    answer with ``finish_reason: "stop"``."""
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    error = refused(server.parse_chat, {"messages": [{"role": "user", "content": "hi"}],
                                        "response_format": fmt})
    assert error.param == "response_format" and "$ref" in error.message
    for choice in ("required", {"type": "function", "function": {"name": "loop"}}):
        error = refused(server.parse_chat, {"messages": [{"role": "user", "content": "hi"}],
                                            "tools": [tool("loop", schema)],
                                            "tool_choice": choice})
        assert error.param == "tools", error.message


def test_recursive_schema_that_terminates_gives_valid_output(server):
    """Recursion that can end (an optional child) is a usable schema: the answer validates."""
    schema = {"type": "object", "properties": {"child": {"$ref": "#"}},
              "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "tree", "schema": schema}}
    reply = chat(server, response_format=fmt, max_tokens=60)
    answer = reply["choices"][0]
    if answer["finish_reason"] == "stop":
        value = json.loads(answer["message"]["content"])
        while value:
            assert list(value) == ["child"]
            value = value["child"]


def test_relocated_rewrites_local_refs_only():
    schema = {"$defs": {"const": {"$ref": "#"}}, "properties": {
        "enum": {"$ref": "#/$defs/const"}, "url": {"$ref": "https://x/y.json"},
        "lit": {"const": {"$ref": "#"}}, "any": {"anyOf": [{"$ref": "#/$defs/const"}]}}}
    assert serve_tools.relocated(schema, "#/$defs/tool_0") == {
        "$defs": {"const": {"$ref": "#/$defs/tool_0"}}, "properties": {
            "enum": {"$ref": "#/$defs/tool_0/$defs/const"}, "url": {"$ref": "https://x/y.json"},
            "lit": {"const": {"$ref": "#"}},
            "any": {"anyOf": [{"$ref": "#/$defs/tool_0/$defs/const"}]}}}


# -- request bodies --------------------------------------------------------------------------


def answered(server: Server, raw: bytes) -> tuple[int, dict]:
    """The status and body a client gets for ``raw`` on /v1/chat/completions, errors rendered
    by the application's handler (as Starlette would)."""
    request = FakeRequest(raw)

    async def go():
        try:
            return await server.chat_completions(request)
        except Exception as e:  # noqa: BLE001 - the application's handler takes every error
            return await serve_app._api_error(request, e)

    response = asyncio.run(go())
    return response.status_code, json.loads(response.body)


def test_deeply_nested_body_is_400(server):
    status, body = answered(server, b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "levels deep" in body["error"]["message"]
    deep = '{"messages": [{"role": "user", "content": "hi"}], "x": ' + "[" * 500 + "]" * 500 + "}"
    status, body = answered(server, deep.encode())
    assert status == 400 and "levels deep" in body["error"]["message"]


def test_lone_surrogate_model_is_404(server):
    status, body = answered(server, b'{"model": "\\ud800", "messages": []}')
    assert status == 404 and body["error"]["param"] == "model"


def test_context_overflow_on_completions_names_prompt(server):
    limit = server.engine.context_length
    error = refused(server.parse_completion, {"prompt": [1] * limit, "max_tokens": 1})
    assert error.param == "prompt"


def test_deep_chat_template_kwargs_is_blamed_on_the_field(server):
    value: list = []
    for _ in range(20):
        value = [value]
    error = refused(server.parse_chat, {"messages": [{"role": "user", "content": "hi"}],
                                        "chat_template_kwargs": {"flag": value}})
    assert error.param == "chat_template_kwargs"


@pytest.mark.parametrize("parameters", ["an object", [1], 5, {"type": "string"}])
def test_non_object_tool_parameters_are_refused(server, parameters):
    error = refused(server.parse_chat, {"messages": [{"role": "user", "content": "hi"}],
                                        "tools": [tool("f", parameters)]})
    assert error.param == "tools[0].function.parameters"


def test_tools_a_template_drops_are_refused(server):
    """The demo's template has no tools section: tools the model is to choose from are refused
    (it would never see them); a forced call is still answered."""
    body = {"messages": [{"role": "user", "content": "hi"}],
            "tools": [tool("f", {"type": "object"})]}
    for choice in (None, "auto", "none"):
        error = refused(server.parse_chat, {**body, "tool_choice": choice})
        assert error.param == "tools" and "does not show tools" in error.message
    server.parse_chat({**body, "tool_choice": "required"})


# -- clients, ports, flags -------------------------------------------------------------------


def test_non_stream_client_that_leaves_is_cancelled(server, monkeypatch):
    """Tokens flowing do not hide a disconnect: the request ends (499) long before its
    max_tokens, and the engine is left idle."""
    monkeypatch.setattr(serve_app, "POLL_DISCONNECT_S", 0.3)
    tok = server.engine.tokenizer
    body = {"prompt": "once upon a time", "max_tokens": 2000,
            "logit_bias": {str(t): -100 for t in tok.eos_token_ids}}
    parsed = server.parse_completion(body)
    started = time.monotonic()
    response = asyncio.run(server._answer(FakeRequest(disconnected=True), parsed, chat=False))
    assert response.status_code == 499
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 10

    def busy() -> bool:
        stats = server.engine.stats()
        return bool(stats["running"] or stats["prefilling"] or stats["waiting"])

    while busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not busy()


def test_second_server_on_a_busy_port_exits_cleanly():
    """No SIGABRT, every time: a clear message and exit code 2, before the model loads."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for _ in range(3):
            done = subprocess.run([sys.executable, "-m", "mlx_zoo.serve", "--port", str(port),
                                   "--no-warmup"], capture_output=True, text=True, timeout=60)
            assert done.returncode == 2, (done.returncode, done.stderr)
            assert f"--port {port}" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_prefix_cache_gb_not_a_size(value, capsys):
    assert serve_main(["--prefix-cache-gb", value]) == 2
    assert "--prefix-cache-gb" in capsys.readouterr().err


# -- fuzzing request bodies ------------------------------------------------------------------

FUZZ = settings(max_examples=int(os.environ.get("MLX_ZOO_FUZZ_EXAMPLES", "25")),
                deadline=timedelta(seconds=30), derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
"""The fixed budget of tests/integration/test_fuzz_hostile.py (``MLX_ZOO_FUZZ_EXAMPLES``)."""

LEAF_SCHEMAS = st.sampled_from([
    {}, {"type": "string", "maxLength": 4}, {"type": "integer"}, {"type": "boolean"},
    {"type": "null"}, {"enum": ["a", "b"]}, {"type": "object"}, {"$ref": "#"},
    {"$ref": "#/$defs/A"}, {"$ref": "#/$defs/missing"}, {"$ref": "#/definitions/A"},
    {"type": "nonsense"}, {"const": {"$ref": "#"}}])


def _extend(children):
    props = st.dictionaries(st.sampled_from(["a", "b", "$ref", "const"]), children, max_size=3)
    return st.one_of(
        st.builds(lambda p, req: {"type": "object", "properties": p,
                                  "required": sorted(p)[:req], "additionalProperties": False},
                  props, st.integers(0, 3)),
        st.builds(lambda xs: {"anyOf": xs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda x: {"type": "array", "items": x, "maxItems": 2}, children),
        st.builds(lambda d, root: {"$defs": {"A": d}, "definitions": {"A": d}, **root},
                  children, children))


SCHEMAS = st.recursive(LEAF_SCHEMAS, _extend, max_leaves=8)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=4),
                           lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=6)


@FUZZ
@given(data=st.data())
def test_fuzzed_request_bodies(server, data):
    """Schemas with $defs, $ref, recursion and anyOf, as response_format or tool parameters,
    and hostile values of other fields: a 400/404 naming a field, or a 200 whose structured
    answer parses -- never a 500."""
    schema = data.draw(SCHEMAS, label="schema")
    body: dict = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 12}
    use = data.draw(st.sampled_from(["response_format", "tool", "field"]), label="use")
    if use == "response_format":
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "x", "schema": schema}}
    elif use == "tool":
        body["tools"] = [tool("f", schema), tool("g", {"type": "object", "properties": {
            "z": {"enum": [1, 2]}}, "required": ["z"], "additionalProperties": False})]
        body["tool_choice"] = data.draw(st.sampled_from(
            ["required", "auto", {"type": "function", "function": {"name": "f"}}]))
    else:
        field = data.draw(st.sampled_from(["n", "max_tokens", "chat_template_kwargs", "model",
                                           "stop", "seed", "logit_bias", "messages"]))
        body[field] = data.draw(JSON_VALUES, label=field)
    status, reply = answered(server, json.dumps(body).encode())
    event(f"{use}: {status}")
    assert status in (200, 400, 404), reply
    if status != 200:
        assert reply["error"]["message"]
        return
    answer = reply["choices"][0]
    if use == "response_format" and answer["finish_reason"] == "stop":
        json.loads(answer["message"]["content"])
    for call in answer["message"].get("tool_calls") or []:
        json.loads(call["function"]["arguments"])
