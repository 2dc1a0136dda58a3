"""Tool calls: finding them in generated text and returning them in the OpenAI shape.

A :class:`ToolCallParser` knows how a model family writes a call. The default is the Qwen /
Hermes style, one JSON object per call between markers::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A plugin supplies another through the ``register_tool_parsers`` hook (``{model_type: parser}``,
:mod:`mlx_zoo.hookspecs`). While streaming, text that may begin a call is held back until it is
clear whether it does; calls are returned when the choice finishes, as
``[{"id", "type": "function", "function": {"name", "arguments": "<json string>"}}]``.
A ``tool_choice`` that forces a call is answered by :class:`ForcedToolCalls` instead: generation
follows :func:`forced_schema`, so the answer is the call whatever the family writes.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any


class ToolCallParser:
    """Calls written as JSON objects ``{"name", "arguments"}`` between ``start`` and ``end``."""

    def __init__(self, start: str = "<tool_call>", end: str = "</tool_call>"):
        self.start, self.end = start, end

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """``text`` without the calls, and the calls found (unparseable ones stay as text)."""
        calls, kept, pos = [], [], 0
        pattern = re.compile(re.escape(self.start) + r"(.*?)(?:" + re.escape(self.end) + r"|$)",
                             re.S)
        for match in pattern.finditer(text):
            call = self._call(match.group(1))
            if call is None:
                continue
            kept.append(text[pos:match.start()])
            pos = match.end()
            calls.append(call)
        kept.append(text[pos:])
        return "".join(kept).strip() if calls else text, calls

    @staticmethod
    def _call(body: str) -> dict[str, Any] | None:
        try:
            data = json.loads(body.strip())
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        arguments = data.get("arguments", data.get("parameters", {}))
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": data["name"], "arguments": arguments}}

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self)


class ToolCallStream:
    """Incremental: :meth:`feed` returns the text safe to show now (never part of a call);
    :meth:`finish` the rest and the calls."""

    def __init__(self, parser: ToolCallParser):
        self.parser = parser
        self.text = ""
        self.shown = 0
        self.in_call = False

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.in_call:
            return ""
        found = self.text.find(self.parser.start, self.shown)
        if found >= 0:
            self.in_call = True
            out, self.shown = self.text[self.shown:found], found
            return out
        held = 0  # a tail that may be the beginning of the start marker
        for size in range(min(len(self.parser.start) - 1, len(self.text) - self.shown), 0, -1):
            if self.parser.start.startswith(self.text[-size:]):
                held = size
                break
        end = len(self.text) - held
        out, self.shown = self.text[self.shown:end], end
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        rest = self.text[self.shown:]
        text, calls = self.parser.parse(rest)
        return (text if calls else rest), calls


class ForcedToolCalls:
    """The answer to a request whose ``tool_choice`` forces a call (``"required"``, or
    ``{"type": "function", "function": {"name": ...}}``), as OpenAI-compatible servers do it:
    generation is constrained by :func:`forced_schema`'s JSON schema (a logits processor, see
    :mod:`mlx_zoo.serve.structured`), so the whole answer *is* the call -- the named function's
    arguments, or ``{"name", "arguments"}`` of one of the tools -- in any model family. Same
    interface as :class:`ToolCallParser`; nothing is shown as content while streaming."""

    def __init__(self, name: str | None):
        self.name = name  # the forced function; None: any of the tools

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        if self.name is not None:
            try:
                arguments = json.loads(text)
            except json.JSONDecodeError:  # cut short (max_tokens): left as text
                return text, []
            call = ToolCallParser._call(json.dumps({"name": self.name, "arguments": arguments}))
        else:
            call = ToolCallParser._call(text)
        return ("", [call]) if call is not None else (text, [])

    def stream(self) -> ToolCallStream:
        stream = ToolCallStream(self)
        stream.in_call = True  # everything is the call
        return stream


def tool_parameters(tool: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a tool's arguments: its ``parameters``, an object when it declares
    none."""
    schema = tool["function"].get("parameters")
    return schema if isinstance(schema, dict) and schema else {"type": "object"}


def forced_schema(tools: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    """The JSON schema a forced answer follows: the ``name``d tool's ``parameters`` (an object
    when it declares none), or -- ``name`` None, ``tool_choice: "required"`` -- an object naming
    one of ``tools`` with its arguments."""
    parameters = tool_parameters
    if name is not None:
        return parameters(next(t for t in tools if t["function"]["name"] == name))
    # each tool's schema moves to $defs/tool_<i>: its local $refs ("#", "#/$defs/City" as
    # pydantic writes them) are rewritten to point there, not at the wrapper's root
    defs = {f"tool_{i}": relocated(parameters(t), f"#/$defs/tool_{i}")
            for i, t in enumerate(tools)}
    return {"$defs": defs,
            "anyOf": [{"type": "object",
                       "properties": {"name": {"const": t["function"]["name"]},
                                      "arguments": {"$ref": f"#/$defs/tool_{i}"}},
                       "required": ["name", "arguments"], "additionalProperties": False}
                      for i, t in enumerate(tools)]}


_LITERAL_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
"""Keywords whose values are JSON data, not schemas: a ``"$ref"`` key inside them is data."""
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions",
                          "dependentSchemas"})
"""Keywords whose values map names (any string, ``"const"`` too) to schemas."""


def relocated(schema: Any, root: str) -> Any:
    """``schema`` as it reads when placed at the JSON pointer ``root`` (``"#/$defs/x"``) of
    another document: every local ``$ref`` (``"#"``, ``"#/..."``) is prefixed with ``root``;
    other references (anchors, URLs) and literal values are kept."""
    if isinstance(schema, list):
        return [relocated(item, root) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and (value == "#" or value.startswith("#/")):
            out[key] = root + value[1:]
        elif key in _LITERAL_KEYWORDS:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):  # names -> schemas
            out[key] = {name: relocated(sub, root) for name, sub in value.items()}
        else:
            out[key] = relocated(value, root)
    return out


DEFAULT_PARSER = ToolCallParser()


def tool_parser(model: Any) -> ToolCallParser:
    """The parser for ``model``'s family: its plugin's (``register_tool_parsers`` hook), else
    the default ``<tool_call>`` one."""
    from .family import by_model_type

    return by_model_type("register_tool_parsers", model, DEFAULT_PARSER)
