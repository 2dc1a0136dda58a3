"""The OpenAI wire format: reading and checking request bodies, writing responses and errors.

Every field a request may carry is checked here, before anything reaches the engine; a bad one is
an :class:`APIError` (HTTP 400 naming the field in ``param``), an unknown model a 404 -- the
shape is OpenAI's ``{"error": {"message", "type", "param", "code"}}``. Fields OpenAI defines that
do not change the output here (``user``, ``metadata``, ``store``, ...) are accepted and ignored;
ones that would change it and are not supported (``suffix``, ``best_of`` > ``n``, non-text
content parts, an unknown ``response_format``) are refused, never silently dropped.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .engine import SamplingParams

MAX_N = 16
MAX_LOGPROBS = 20
MAX_STOPS = 16


class APIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code
        self.type = type or {400: "invalid_request_error", 404: "not_found_error",
                             503: "server_error", 500: "server_error"}.get(status,
                                                                           "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    # a lone surrogate the client sent (quoted back in the message) cannot be encoded as UTF-8
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


MAX_BODY_DEPTH = 64
"""Nesting of a request body's arrays and objects (a JSON schema, template variables): deeper
is a 400 before anything walks it."""


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and dicts more than ``limit`` levels (iterative: safe for
    any depth)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth >= limit:
                return True
            stack.extend((sub, depth + 1) for sub in item)
    return False


# -- field readers -----------------------------------------------------------------------------


def _bad(name: str, expected: str, value: Any) -> APIError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return APIError(f"'{name}' must be {expected}, got {shown}", param=name,
                    code="invalid_value")


def number(body: dict, name: str, default: Any, *, lo: float | None = None,
           hi: float | None = None, lo_open: bool = False, expected: str = "a number") -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(name, expected, value)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise _bad(name, expected, value)
    if hi is not None and value > hi:
        raise _bad(name, expected, value)
    return value


def integer(body: dict, name: str, default: Any, *, lo: int | None = None, hi: int | None = None,
            expected: str = "an integer") -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, expected, value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _bad(name, expected, value)
    return value


def boolean(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, "true or false", value)
    return value


def stop_strings(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if (not isinstance(values, list) or len(values) > MAX_STOPS
            or not all(isinstance(s, str) for s in values)):
        raise _bad("stop", f"a string or a list of at most {MAX_STOPS} strings", value)
    return [s for s in values if s]


def logit_bias(body: dict, vocab: int | None) -> dict[int, float]:
    value = body.get("logit_bias")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("logit_bias", "an object mapping token ids to biases in [-100, 100]", value)
    out = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise _bad("logit_bias", "an object whose keys are token ids", key) from None
        if token < 0 or (vocab is not None and token >= vocab):
            raise APIError(f"'logit_bias': token id {token} is outside the vocabulary "
                           f"[0, {vocab})", param="logit_bias", code="invalid_value")
        if (isinstance(bias, bool) or not isinstance(bias, (int, float))
                or not math.isfinite(bias) or not -100 <= bias <= 100):
            raise _bad("logit_bias", "biases in [-100, 100]", bias)
        out[token] = float(bias)
    return out


@dataclass
class Parsed:
    """A checked request: the prompts (token ids), how to sample, how to answer."""

    prompts: list[list[int]]
    params: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    prompt_texts: list[str] = field(default_factory=list)
    tools: list[dict] | None = None
    tool_parser: Any = None
    reasoning_parser: Any = None
    reasoning_opened: bool = False  # the prompt leaves the reasoning open


def sampling(body: dict, defaults: dict, vocab: int | None, *, chat: bool) -> SamplingParams:
    """The sampling fields common to both endpoints."""
    if chat:
        max_tokens = integer(body, "max_completion_tokens", None, lo=1,
                             expected="an integer >= 1")
        if max_tokens is None:
            max_tokens = integer(body, "max_tokens", None, lo=1, expected="an integer >= 1")
    else:
        max_tokens = integer(body, "max_tokens", None, lo=0, expected="an integer >= 0")
    top_k = integer(body, "top_k", defaults["top_k"], lo=-1, expected="an integer >= -1 "
                    "(0 or -1 disable it)")
    params = SamplingParams(
        max_tokens=defaults["max_tokens"] if max_tokens is None else max_tokens,
        temperature=float(number(body, "temperature", defaults["temperature"], lo=0.0, hi=100.0,
                                 expected="a number in [0, 100] (0: greedy)")),
        top_p=float(number(body, "top_p", defaults["top_p"], lo=0.0, hi=1.0, lo_open=True,
                           expected="a number in (0, 1]")),
        top_k=max(top_k, 0),
        min_p=float(number(body, "min_p", defaults["min_p"], lo=0.0, hi=1.0,
                           expected="a number in [0, 1]")),
        seed=integer(body, "seed", None, lo=-(2**63), hi=2**64 - 1,
                     expected="an integer (64-bit)"),
        stop=stop_strings(body),
        logit_bias=logit_bias(body, vocab),
        presence_penalty=float(number(body, "presence_penalty", 0.0, lo=-2.0, hi=2.0,
                                      expected="a number in [-2, 2]")),
        frequency_penalty=float(number(body, "frequency_penalty", 0.0, lo=-2.0, hi=2.0,
                                       expected="a number in [-2, 2]")),
        repetition_penalty=number(body, "repetition_penalty", None, lo=0.0, lo_open=True,
                                  expected="a number > 0"),
    )
    if params.seed is not None:
        params.seed %= 2**64
    _check_unsupported(body)
    return params


def _check_unsupported(body: dict) -> None:
    if body.get("suffix"):
        raise APIError("'suffix' (fill-in-the-middle) is not supported", param="suffix",
                       code="unsupported_parameter")
    best_of = body.get("best_of")
    if best_of is not None and best_of != body.get("n", 1):
        raise APIError("'best_of' is not supported (only best_of == n)", param="best_of",
                       code="unsupported_parameter")


def stream_flags(body: dict) -> tuple[bool, bool]:
    stream = boolean(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("stream_options", "an object", options)
        if not stream:
            raise APIError("'stream_options' is only allowed when 'stream' is true",
                           param="stream_options", code="invalid_value")
        include_usage = boolean(options, "include_usage")
    return stream, include_usage


def token_ids(value: Any, vocab: int | None, param: str) -> list[int]:
    if not value:
        raise APIError(f"'{param}' is empty: expected text or token ids", param=param,
                       code="invalid_value")
    for i, t in enumerate(value):
        if isinstance(t, bool) or not isinstance(t, int) or t < 0 or (vocab is not None
                                                                      and t >= vocab):
            bound = f"[0, {vocab})" if vocab is not None else ">= 0"
            raise APIError(f"'{param}': token {i} is {t!r}, expected a token id in {bound}",
                           param=param, code="invalid_value")
    return list(value)


def completion_prompts(body: dict) -> list[str | list[int]]:
    """``prompt``: a string, a list of token ids, or a list of either (several prompts)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return [prompt]
        if all(isinstance(p, str) or (isinstance(p, list) and p) for p in prompt):
            return prompt
    raise _bad("prompt", "a string, a list of token ids, or a non-empty list of those", prompt)


ROLES = ("system", "developer", "user", "assistant", "tool")


def chat_messages(body: dict) -> list[dict[str, Any]]:
    """``messages`` as the chat template takes them: text content parts joined, roles checked."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "a non-empty list of messages", messages)
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(where, "an object with 'role' and 'content'", message)
        role = message.get("role")
        if role not in ROLES:
            raise APIError(f"'{where}.role' must be one of {', '.join(ROLES)}, got {role!r}",
                           param=f"{where}.role", code="invalid_value")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                        part.get("text"), str):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise APIError(f"'{where}.content[{j}]': only text parts "
                                   f"({{'type': 'text', 'text': ...}}) are supported, got "
                                   f"{kind!r}", param=f"{where}.content", code="invalid_value")
                texts.append(part["text"])
            content = "\n".join(texts)
        elif content is None:
            if role != "assistant" or not message.get("tool_calls"):
                raise APIError(f"'{where}.content' is missing", param=f"{where}.content",
                               code="invalid_value")
            content = ""  # templates (Qwen3's) test and concatenate it: a string, never None
        elif not isinstance(content, str):
            raise _bad(f"{where}.content", "a string or a list of text parts", content)
        entry = {"role": "system" if role == "developer" else role, "content": content}
        for key in ("name", "tool_call_id"):
            if isinstance(message.get(key), str):
                entry[key] = message[key]
        if message.get("tool_calls") is not None:
            entry["tool_calls"] = _tool_calls_in(message["tool_calls"], where)
        if role == "assistant":  # the reasoning returned with it, for templates that show it
            reasoning = next((message[key] for key in ("reasoning_content", "reasoning")
                              if isinstance(message.get(key), str)), None)
            if reasoning is not None:
                entry["reasoning_content"] = reasoning
        out.append(entry)
    return out


TEMPLATE_RESERVED = frozenset({
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "padding", "truncation", "max_length",
    "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"})
"""Names ``chat_template_kwargs`` may not set: the server passes them to the template itself."""


MAX_TEMPLATE_DEPTH = 8
"""Nesting of a ``chat_template_kwargs`` value: templates read flags and small lists; deeper
ones are refused here rather than failing inside the template (and blamed on it)."""


def chat_template_kwargs(body: dict) -> dict[str, Any]:
    """``chat_template_kwargs`` (vLLM's field): extra variables for the chat template, e.g.
    ``{"enable_thinking": false}`` (Qwen3: answer without thinking)."""
    value = body.get("chat_template_kwargs")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("chat_template_kwargs", "an object of chat template variables", value)
    if deeper_than(value, MAX_TEMPLATE_DEPTH):
        raise APIError(f"'chat_template_kwargs' nests values more than {MAX_TEMPLATE_DEPTH} "
                       f"levels deep", param="chat_template_kwargs", code="invalid_value")
    reserved = sorted(TEMPLATE_RESERVED.intersection(value))
    if reserved:
        raise APIError(f"'chat_template_kwargs' cannot set {', '.join(reserved)} (the server "
                       f"passes it to the template itself)", param="chat_template_kwargs",
                       code="invalid_value")
    return dict(value)


def _tool_calls_in(calls: Any, where: str) -> list[dict]:
    """Assistant ``tool_calls`` of the history, arguments parsed back to objects for the
    template (templates render ``arguments`` as JSON themselves)."""
    import json

    if not isinstance(calls, list):
        raise _bad(f"{where}.tool_calls", "a list", calls)
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(f"{where}.tool_calls", "a list of {'function': {'name', 'arguments'}}",
                       call)
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except json.JSONDecodeError:
                raise _bad(f"{where}.tool_calls", "arguments that are JSON", arguments) from None
        out.append({"id": call.get("id"), "type": "function",
                    "function": {"name": function["name"], "arguments": arguments}})
    return out


def logprob_fields(body: dict, *, chat: bool) -> tuple[bool, int]:
    """Whether token logprobs are wanted and how many alternatives per token."""
    if chat:
        wanted = boolean(body, "logprobs")
        top = integer(body, "top_logprobs", 0, lo=0, hi=MAX_LOGPROBS,
                      expected=f"an integer in [0, {MAX_LOGPROBS}]")
        if top and not wanted:
            raise APIError("'top_logprobs' needs 'logprobs': true", param="top_logprobs",
                           code="invalid_value")
        return wanted, top
    value = body.get("logprobs")
    if value is None or value is False:
        return False, 0
    if value is True:
        return True, 0
    top = integer(body, "logprobs", 0, lo=0, hi=MAX_LOGPROBS,
                  expected=f"an integer in [0, {MAX_LOGPROBS}]")
    return True, top


# -- responses ---------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached: int = 0) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


def chat_logprob_entry(text_of, token: int, lp: float, top: list) -> dict[str, Any]:
    def one(t: int, v: float) -> dict[str, Any]:
        s = text_of(t)
        return {"token": s, "logprob": v, "bytes": list(s.encode("utf-8"))}

    entry = one(token, lp)
    entry["top_logprobs"] = [one(t, v) for t, v in top]
    return entry


class CompletionLogprobs:
    """The legacy completions ``logprobs`` object, built token by token."""

    def __init__(self, text_of, offset: int = 0):
        self.text_of = text_of
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []
        self.offset = offset

    def add(self, token: int, lp: float | None, top: list | None) -> None:
        text = self.text_of(token)
        self.tokens.append(text)
        self.token_logprobs.append(lp)
        self.top_logprobs.append(None if top is None else {self.text_of(t): v for t, v in top})
        self.text_offset.append(self.offset)
        self.offset += len(text)

    def body(self, start: int = 0) -> dict[str, Any]:
        return {"tokens": self.tokens[start:], "token_logprobs": self.token_logprobs[start:],
                "top_logprobs": self.top_logprobs[start:], "text_offset": self.text_offset[start:]}
