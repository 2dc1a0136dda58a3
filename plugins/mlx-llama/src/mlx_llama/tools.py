"""Llama 3.1 / 3.2 tool calls for ``mlx-zoo serve``.

Llama 3.1's chat template (JSON-based tool calling) asks the model to answer with a bare JSON
object, optionally after the ``<|python_tag|>`` special token, and renders an assistant
``tool_calls`` turn the same way::

    {"name": "get_weather", "parameters": {"city": "Paris"}}

There is no closing marker: a reply is a call when, apart from an optional leading
``<|python_tag|>``, it *is* such an object (several may be separated by ``;``). Anything else is
plain text. While streaming, a reply whose first non-blank character is ``{`` (or that begins
with the tag) is held back until the choice finishes.
"""

from __future__ import annotations

import json
from typing import Any

from mlx_zoo.serve.tools import ToolCallParser

PYTHON_TAG = "<|python_tag|>"


class LlamaToolCallParser(ToolCallParser):
    """Calls written as the whole reply: ``[<|python_tag|>]{"name", "parameters"}[; ...]``."""

    def __init__(self) -> None:
        super().__init__(start=PYTHON_TAG, end="")

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        body = text.strip()
        if body.startswith(PYTHON_TAG):
            body = body[len(PYTHON_TAG):].strip()
        if not body.startswith("{"):
            return text, []
        calls = []
        decoder, pos = json.JSONDecoder(), 0
        while pos < len(body):
            try:
                obj, end = decoder.raw_decode(body, pos)
            except json.JSONDecodeError:
                return text, []
            call = self._call(json.dumps(obj)) if isinstance(obj, dict) else None
            if call is None:
                return text, []
            calls.append(call)
            pos = end
            while pos < len(body) and body[pos] in " \t\r\n;":
                pos += 1
        return ("", calls) if calls else (text, [])

    def stream(self) -> LlamaToolCallStream:
        return LlamaToolCallStream(self)


class LlamaToolCallStream:
    """:meth:`feed` shows text at once unless the reply may be a call (it starts with ``{`` or
    the tag); :meth:`finish` returns what was held back (or nothing) and the calls."""

    def __init__(self, parser: LlamaToolCallParser):
        self.parser = parser
        self.text = ""
        self.shown = 0
        self.plain = False

    def feed(self, piece: str) -> str:
        self.text += piece
        if not self.plain:
            head = self.text.lstrip()
            if not head:
                return ""
            if head.startswith("{") or head.startswith(PYTHON_TAG):
                return ""
            if PYTHON_TAG.startswith(head):  # may still become the tag
                return ""
            self.plain = True
        out, self.shown = self.text[self.shown:], len(self.text)
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        rest = self.text[self.shown:]
        if self.plain:
            return rest, []
        text, calls = self.parser.parse(rest)
        return (text if calls else rest), calls
