"""Reasoning: the text a model thinks before its answer, returned apart from the answer.

Reasoning models (Qwen3, DeepSeek-R1, QwQ) write their reasoning first, between tags::

    <think>
    The user asks for ... so ...
    </think>

    The answer.

A :class:`ReasoningParser` splits a chat answer into the reasoning -- returned as
``message.reasoning_content`` (and ``reasoning``, the name newer vLLM uses), streamed as
``delta.reasoning_content`` -- and the content; tool calls are read from the content only. The
default reads ``<think> ... </think>``; a plugin supplies its family's through the
``register_reasoning_parsers`` hook (``{model_type: parser}``, or ``{model_type: None}`` for a
family that never reasons; :mod:`mlx_zoo.hookspecs`). ``mlx-zoo serve --reasoning-parser none``
switches it off.

Where the answer starts is the chat template's doing, so the rendered prompt decides
(:meth:`ReasoningParser.opened`). Qwen3's generation prompt ends with
``<|im_start|>assistant\\n`` and the model writes ``<think>`` itself; with ``enable_thinking``
false (``chat_template_kwargs``) the prompt ends with an empty, closed ``<think>\\n\\n</think>``
block and the model answers directly. DeepSeek-R1's and Qwen3-Thinking-2507's prompts end with an
open ``<think>\\n``: the answer starts inside the reasoning, without a tag. So: a prompt ending
with the start tag means the answer begins as reasoning; otherwise an answer has reasoning only
when it begins with the start tag (whitespace before it allowed). The reasoning ends at the end
tag; an answer cut short inside it is all reasoning. The whitespace templates put beside the tags
is dropped (Qwen3's template strips it when it renders the turn back).
"""

from __future__ import annotations

from typing import Any

PROMPT_TAIL_TOKENS = 16
"""Prompt tokens decoded to see whether the prompt leaves the reasoning open."""


class ReasoningParser:
    """Reasoning written between ``start`` and ``end`` before the answer."""

    def __init__(self, start: str = "<think>", end: str = "</think>"):
        self.start, self.end = start, end

    def opened(self, prompt_tail: str) -> bool:
        """Whether a prompt ending with ``prompt_tail`` leaves the reasoning open (its last
        non-space text is the start tag): the answer then begins inside it."""
        return prompt_tail.rstrip().endswith(self.start)

    def parse(self, text: str, opened: bool = False) -> tuple[str | None, str]:
        """``(reasoning, content)`` of a whole answer; reasoning None when there is none."""
        stream = self.stream(opened)
        reasoning, content = stream.feed(text)
        rest_reasoning, rest_content = stream.finish()
        return (reasoning + rest_reasoning) or None, content + rest_content

    def stream(self, opened: bool = False) -> ReasoningStream:
        return ReasoningStream(self, opened)


_BEFORE, _REASONING, _AFTER, _CONTENT = range(4)


def _partial_tail(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag`` (without being it)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ReasoningStream:
    """Incremental: :meth:`feed` takes the next piece of the answer and returns
    ``(reasoning, content)`` safe to show now -- text that may be part of a tag, or whitespace
    that may border the reasoning, is held until it is clear; :meth:`finish` returns the rest.
    The pieces joined equal :meth:`ReasoningParser.parse` of the whole text."""

    def __init__(self, parser: ReasoningParser, opened: bool = False):
        self.parser = parser
        self.state = _REASONING if opened else _BEFORE
        self.held = ""
        self.shown = False  # reasoning text handed out yet
        self.repeat = opened  # an opened prompt: a start tag the model writes anyway is dropped

    def feed(self, piece: str) -> tuple[str, str]:
        self.held += piece
        start, end = self.parser.start, self.parser.end
        if self.state == _BEFORE:
            head = self.held.lstrip()
            if head.startswith(start):
                self.state, self.held = _REASONING, head[len(start):]
            elif not head or start.startswith(head):
                return "", ""  # whitespace, or the beginning of the start tag
            else:
                self.state = _CONTENT
        reasoning = ""
        if self.state == _REASONING:
            if self.repeat:
                head = self.held.lstrip()
                if not head or (start.startswith(head) and head != start):
                    return "", ""
                self.repeat = False
                if head.startswith(start):
                    self.held = head[len(start):]
            if not self.shown:
                self.held = self.held.lstrip()
            found = self.held.find(end)
            if found >= 0:
                reasoning = self.held[:found].rstrip()
                self.held = self.held[found + len(end):]
                self.state = _AFTER
            else:
                cut = len(self.held) - _partial_tail(self.held, end)
                reasoning = self.held[:cut].rstrip()
                self.held = self.held[len(reasoning):]
            self.shown = self.shown or bool(reasoning)
        content = ""
        if self.state == _AFTER:
            self.held = self.held.lstrip()
            if self.held:
                self.state = _CONTENT
        if self.state == _CONTENT:
            content, self.held = self.held, ""
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """What is still held: reasoning (an answer cut short inside it) or content."""
        held, self.held = self.held, ""
        if self.state == _REASONING:
            return (held.rstrip() if self.shown else held.strip()), ""
        if self.state == _AFTER:
            return "", ""
        return "", held


DEFAULT_PARSER = ReasoningParser()

CHOICES = {"auto": "the model family's (a plugin's register_reasoning_parsers hook), else "
                   "<think>...</think>",
           "think": "<think>...</think> whatever the family",
           "qwen3": "the same as think (vLLM's name)",
           "deepseek_r1": "the same as think (vLLM's name)",
           "none": "off: the reasoning stays in content"}
"""The values of ``mlx-zoo serve --reasoning-parser``."""


def reasoning_parser(model: Any, choice: str = "auto") -> ReasoningParser | None:
    """The reasoning parser for ``model`` under the server's ``--reasoning-parser`` ``choice``
    (:data:`CHOICES`); None: no reasoning is parsed."""
    if choice == "none":
        return None
    if choice == "auto":
        from .family import by_model_type

        return by_model_type("register_reasoning_parsers", model, DEFAULT_PARSER)
    return DEFAULT_PARSER
