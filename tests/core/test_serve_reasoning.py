"""``mlx-zoo serve``'s reasoning parser (:mod:`mlx_zoo.serve.reasoning`) and the chat request
parsing around it: where the reasoning starts (the rendered prompt decides), the answer split
whole and streamed in every possible way (tags cut across pieces), the per-family hook and
``--reasoning-parser``; ``chat_template_kwargs`` reaching the template, and ``tool_choice:
"none"`` keeping the tools in the prompt without reading calls from the answer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import mlx_zoo
from mlx_zoo.serve.reasoning import DEFAULT_PARSER, ReasoningParser, reasoning_parser

THOUGHT = "The user greets me.\n\nI greet back."
CASES = [
    # (answer, prompt leaves the reasoning open, reasoning, content)
    (f"<think>\n{THOUGHT}\n</think>\n\nHello!", False, THOUGHT, "Hello!"),  # Qwen3
    (f"\n<think>{THOUGHT}</think>Hello!", False, THOUGHT, "Hello!"),
    ("Hello! <think>not at the start</think>", False, None,
     "Hello! <think>not at the start</think>"),
    ("  Hello, no reasoning.\n", False, None, "  Hello, no reasoning.\n"),
    ("<thin", False, None, "<thin"),  # cut short: what looked like a tag is content
    ("<b>bold</b>", False, None, "<b>bold</b>"),
    (f"<think>\n{THOUGHT} and on", False, f"{THOUGHT} and on", ""),  # cut short inside
    (f"<think>\n{THOUGHT}</thi", False, f"{THOUGHT}</thi", ""),
    ("<think>\n\n</think>\n\nHello!", False, None, "Hello!"),  # an empty block
    (f"{THOUGHT}\n</think>\n\nHello!", True, THOUGHT, "Hello!"),  # DeepSeek-R1: no start tag
    (f"\n<think>\n{THOUGHT}</think>Hello!", True, THOUGHT, "Hello!"),  # the tag written anyway
    ("</think>Hello!", True, None, "Hello!"),
    (f"{THOUGHT} and on", True, f"{THOUGHT} and on", ""),
    ("Hello! </think> tail", False, None, "Hello! </think> tail"),
    (f"<think>{THOUGHT}</think>\n\n<tool_call>\n{{}}\n</tool_call>", False, THOUGHT,
     "<tool_call>\n{}\n</tool_call>"),
]


@pytest.mark.parametrize("text,opened,reasoning,content", CASES)
def test_whole_answer(text, opened, reasoning, content):
    assert DEFAULT_PARSER.parse(text, opened) == (reasoning, content)


def streamed(parser: ReasoningParser, pieces: list[str], opened: bool) -> tuple[str | None, str]:
    stream = parser.stream(opened)
    out = [stream.feed(piece) for piece in pieces] + [stream.finish()]
    return "".join(r for r, _ in out) or None, "".join(c for _, c in out)


@pytest.mark.parametrize("text,opened,reasoning,content", CASES)
def test_streamed_in_every_split(text, opened, reasoning, content):
    """Every cut into two or three pieces, and a character at a time, gives the whole answer's
    split: no piece of a tag is ever handed out as text, and nothing is lost."""
    assert streamed(DEFAULT_PARSER, list(text), opened) == (reasoning, content)
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            pieces = [text[:i], text[i:j], text[j:]]
            assert streamed(DEFAULT_PARSER, pieces, opened) == (reasoning, content), pieces


def test_pieces_come_out_as_soon_as_they_are_clear():
    stream = DEFAULT_PARSER.stream()
    assert stream.feed("<th") == ("", "")
    assert stream.feed("ink>\nI think") == ("I think", "")
    assert stream.feed(" hard\n</") == (" hard", "")  # the newline may border the end tag
    assert stream.feed("think>\n\nHi") == ("", "Hi")
    assert stream.feed(" there") == ("", " there")
    assert stream.finish() == ("", "")
    plain = DEFAULT_PARSER.stream()
    assert plain.feed("Hi") == ("", "Hi")  # no tag: shown at once
    assert plain.feed(" <think>") == ("", " <think>")


@pytest.mark.parametrize("tail,opened", [
    ("<|im_start|>assistant\n", False),  # Qwen3: the model writes <think> itself
    ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),  # Qwen3, enable_thinking false
    ("<|im_start|>assistant\n<think>\n", True),  # Qwen3-Thinking-2507
    ("<｜Assistant｜><think>\n", True),  # DeepSeek-R1
    ("<|im_start|>user\nwhat does <think> do?<|im_end|>\n<|im_start|>assistant\n", False),
])
def test_the_prompt_decides_where_the_answer_starts(tail, opened):
    assert DEFAULT_PARSER.opened(tail) is opened


def test_another_familys_tags():
    parser = ReasoningParser("<reason>", "</reason>")
    assert parser.parse("<reason>a</reason>b") == ("a", "b")
    assert parser.parse("<think>a</think>b") == (None, "<think>a</think>b")
    assert streamed(parser, list("<reason>a</reason>b"), False) == ("a", "b")


class Reasoners:
    """A notebook plugin giving one family its own tags and saying another never reasons."""

    @mlx_zoo.hookimpl
    def register_reasoning_parsers(self):
        return {"zoo_reasoner": ReasoningParser("<reason>", "</reason>"), "zoo_plain": None}


def test_the_family_hook_and_the_server_choice(isolated_registry):
    isolated_registry.register(Reasoners())
    reasoner, plain, other = (SimpleNamespace(model_type=t)
                              for t in ("zoo_reasoner", "zoo_plain", "qwen2"))
    assert reasoning_parser(reasoner).start == "<reason>"
    assert reasoning_parser(plain) is None
    assert reasoning_parser(other) is DEFAULT_PARSER
    for choice in ("think", "qwen3", "deepseek_r1"):
        assert reasoning_parser(reasoner, choice) is DEFAULT_PARSER
        assert reasoning_parser(plain, choice) is DEFAULT_PARSER
    assert reasoning_parser(reasoner, "none") is None


def test_the_server_flag():
    import argparse

    from mlx_zoo.serve import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).reasoning_parser == "auto"
    assert parser.parse_args(["--reasoning-parser", "none"]).reasoning_parser == "none"
    with pytest.raises(SystemExit):
        parser.parse_args(["--reasoning-parser", "granite"])


# -- chat requests: the template, the tools, the parser chosen ---------------------------------

TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t.function.name }}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% elif open_think is defined and open_think %}<think>\n{% endif %}{% endif %}")
"""A ChatML template with Qwen3's ``enable_thinking`` switch, and ``open_think`` to open the
reasoning in the generation prompt as DeepSeek-R1's and Qwen3-Thinking-2507's do."""
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A :class:`~mlx_zoo.serve.app.Server` whose engine is only a tokenizer (the tiny
    byte-level one, :data:`TEMPLATE` as its chat template): requests are parsed, not run."""
    pytest.importorskip("starlette")
    pytest.importorskip("jinja2")
    from mlx_zoo.serve.app import Server
    from mlx_zoo.testing import write_tiny_tokenizer

    path = write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config,
                                                            "chat_template": TEMPLATE}))
    tokenizer = mlx_zoo.load_tokenizer(path)
    engine = SimpleNamespace(tokenizer=tokenizer, vocab_size=None, context_length=None,
                             model=SimpleNamespace(model_type="zoo_unknown"))
    defaults = {"max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0}
    return Server(engine, "tiny", defaults)


def prompt_text(server, parsed) -> str:
    return server.engine.tokenizer.decode(parsed.prompts[0])


def test_the_reasoning_parser_follows_the_template(server, isolated_registry):
    default = server.parse_chat({"messages": MESSAGES})
    assert default.reasoning_parser is DEFAULT_PARSER and not default.reasoning_opened
    assert prompt_text(server, default).endswith("<|im_start|>assistant\n")
    off = server.parse_chat({"messages": MESSAGES,
                             "chat_template_kwargs": {"enable_thinking": False}})
    assert prompt_text(server, off).endswith("assistant\n<think>\n\n</think>\n\n")
    assert off.reasoning_parser is DEFAULT_PARSER and not off.reasoning_opened
    opened = server.parse_chat({"messages": MESSAGES, "tools": TOOLS,
                                "chat_template_kwargs": {"open_think": True}})
    assert prompt_text(server, opened).endswith("assistant\n<think>\n")
    assert opened.reasoning_opened and "Tools: get_weather" in prompt_text(server, opened)


def test_no_reasoning_under_a_grammar_or_the_none_flag(server, isolated_registry):
    """A grammar writes the whole answer from its first token (``response_format``, a forced
    call): nothing of it is reasoning, even after an opened prompt."""
    pytest.importorskip("llguidance")
    for extra in ({"response_format": {"type": "json_object"}},
                  {"tools": TOOLS, "tool_choice": "required"}):
        parsed = server.parse_chat({"messages": MESSAGES, **extra,
                                    "chat_template_kwargs": {"open_think": True}})
        assert parsed.reasoning_parser is None, extra
    server.reasoning = "none"
    try:
        assert server.parse_chat({"messages": MESSAGES}).reasoning_parser is None
    finally:
        server.reasoning = "auto"


def test_tool_choice_none_keeps_the_tools_in_the_prompt(server, isolated_registry):
    """As vLLM: with ``tool_choice: "none"`` the model still sees the tools, but no call is
    read from its answer (a call it writes stays content)."""
    auto = server.parse_chat({"messages": MESSAGES, "tools": TOOLS})
    none = server.parse_chat({"messages": MESSAGES, "tools": TOOLS, "tool_choice": "none"})
    assert "Tools: get_weather" in prompt_text(server, none)
    assert none.prompts == auto.prompts and none.tools == TOOLS
    assert auto.tool_parser is not None and none.tool_parser is None
    assert none.params.processor_factory is None


@pytest.mark.parametrize("value,fragment", [
    ([1, 2], "must be an object"),
    ("enable_thinking=false", "must be an object"),
    ({"tokenize": True}, "cannot set tokenize"),
    ({"chat_template": "{{ 'x' }}", "enable_thinking": True}, "cannot set chat_template"),
])
def test_bad_chat_template_kwargs_are_400(server, value, fragment):
    from mlx_zoo.serve.protocol import APIError

    with pytest.raises(APIError) as info:
        server.parse_chat({"messages": MESSAGES, "chat_template_kwargs": value})
    assert info.value.status == 400 and info.value.param == "chat_template_kwargs"
    assert fragment in info.value.message


def test_assistant_reasoning_reaches_the_template():
    """An assistant turn sent back with its reasoning (either name) hands it to the template
    (Qwen3's shows it in turns after the last user message)."""
    from mlx_zoo.serve.protocol import chat_messages

    for key in ("reasoning_content", "reasoning"):
        messages = chat_messages({"messages": [
            *MESSAGES, {"role": "assistant", "content": "Hello!", key: THOUGHT}]})
        assert messages[-1]["reasoning_content"] == THOUGHT
    messages = chat_messages({"messages": [*MESSAGES, {"role": "assistant", "content": "Hi",
                                                       "reasoning_content": None}]})
    assert "reasoning_content" not in messages[-1]
