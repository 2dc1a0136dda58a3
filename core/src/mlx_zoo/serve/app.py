"""The HTTP side: a Starlette application serving the OpenAI API from an :class:`Engine`.

Endpoints: ``GET /health``, ``GET /v1/models`` (and ``/v1/models/{id}``),
``POST /v1/completions``, ``POST /v1/chat/completions`` -- answers as JSON, or as server-sent
events with ``"stream": true``. Request bodies are checked by :mod:`mlx_zoo.serve.protocol`
(tokenising and rendering the chat template run in a worker thread); generation runs on the
engine's thread; its events come back through an ``asyncio.Queue`` per request. A client that
disconnects -- mid-stream, or while waiting for a whole answer -- has its sequences cancelled,
which frees their batch slots at the next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import MlxZooError
from . import protocol as P
from .engine import Engine, LoopSink, Seq

log = logging.getLogger("mlx_zoo.serve")

POLL_DISCONNECT_S = 0.5


class Server:
    """Request handling around one engine (one model, served under ``model_name``);
    ``reasoning`` is the ``--reasoning-parser`` choice (:mod:`mlx_zoo.serve.reasoning`)."""

    def __init__(self, engine: Engine, model_name: str, defaults: dict[str, Any],
                 aliases: tuple[str, ...] = (), reasoning: str = "auto"):
        self.engine = engine
        self.model_name = model_name
        self.names = {model_name, *aliases}
        self.defaults = defaults
        self.reasoning = reasoning
        self.created = P.now()

    # -- plumbing ------------------------------------------------------------------------------

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise P.APIError(f"the request body is not valid JSON ({e})",
                             code="invalid_json") from None
        except RecursionError:
            body = None  # nested deeper than Python's parser goes: refused just below
        if body is None or P.deeper_than(body, P.MAX_BODY_DEPTH):
            raise P.APIError(f"the request body nests arrays and objects more than "
                             f"{P.MAX_BODY_DEPTH} levels deep", code="invalid_json")
        if not isinstance(body, dict):
            raise P.APIError(f"the request body must be a JSON object, got "
                             f"{type(body).__name__}", code="invalid_json")
        if not self.engine.ready.is_set() or self.engine.load_error is not None:
            raise P.APIError("the model is not loaded yet", status=503)
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise P._bad("model", "a string (the served model's id)", model)
        if model is not None and model not in self.names:
            raise P.APIError(f"The model '{model}' does not exist: this server serves "
                             f"'{self.model_name}'", status=404, param="model",
                             code="model_not_found")
        return body

    def _max_tokens(self, params, prompt_len: int, explicit: bool,
                    prompt_param: str = "messages") -> None:
        limit = self.engine.context_length
        if limit is None:
            return
        if prompt_len >= limit and params.max_tokens > 0:
            raise P.APIError(f"the prompt has {prompt_len} tokens; this model's context length "
                             f"is {limit}", param=prompt_param, code="context_length_exceeded")
        if prompt_len + params.max_tokens > limit:
            if explicit:
                raise P.APIError(
                    f"the prompt ({prompt_len} tokens) plus max_tokens ({params.max_tokens}) "
                    f"exceeds this model's context length ({limit})", param="max_tokens",
                    code="context_length_exceeded")
            params.max_tokens = max(limit - prompt_len, 0)

    # -- parsing (worker thread: tokenising, templates) ----------------------------------------

    def parse_completion(self, body: dict) -> P.Parsed:
        engine, tok = self.engine, self.engine.tokenizer
        params = P.sampling(body, self.defaults, engine.vocab_size, chat=False)
        params.logprobs, params.top_logprobs = P.logprob_fields(body, chat=False)
        echo = P.boolean(body, "echo")
        params.prompt_logprobs = echo and params.logprobs
        stream, include_usage = P.stream_flags(body)
        n = P.integer(body, "n", 1, lo=1, hi=P.MAX_N, expected=f"an integer in [1, {P.MAX_N}]")
        prompts, texts = [], []
        for prompt in P.completion_prompts(body):
            if isinstance(prompt, str):
                ids = tok.encode_prompt(prompt)  # no second BOS if the text starts with it
                if not ids:
                    raise P.APIError("'prompt' is empty", param="prompt", code="invalid_value")
                texts.append(prompt)
            else:
                ids = P.token_ids(prompt, engine.vocab_size, "prompt")
                texts.append(tok.decode(ids))
            self._max_tokens(params, len(ids), body.get("max_tokens") is not None, "prompt")
            prompts.append(ids)
        self._response_format(body, params)
        return P.Parsed(prompts, params, n, stream, include_usage, echo, texts)

    def parse_chat(self, body: dict) -> P.Parsed:
        engine = self.engine
        messages = P.chat_messages(body)
        params = P.sampling(body, self.defaults, engine.vocab_size, chat=True)
        params.logprobs, params.top_logprobs = P.logprob_fields(body, chat=True)
        stream, include_usage = P.stream_flags(body)
        n = P.integer(body, "n", 1, lo=1, hi=P.MAX_N, expected=f"an integer in [1, {P.MAX_N}]")
        template_kwargs = P.chat_template_kwargs(body)
        tools, parse_calls, forced = self._tools(body)
        ids = self._render_chat(messages, tools, template_kwargs, forced is not None)
        explicit = body.get("max_tokens") is not None or body.get(
            "max_completion_tokens") is not None
        self._max_tokens(params, len(ids), explicit)
        self._response_format(body, params)
        parsed = P.Parsed([ids], params, n, stream, include_usage)
        if tools:
            from .tools import ForcedToolCalls, forced_schema, tool_parameters, tool_parser

            parsed.tools = tools
            parsed.tool_parser = tool_parser(engine.model) if parse_calls else None
            if forced is not None:
                from .structured import processor_factory

                if params.processor_factory is not None:
                    raise P.APIError("'response_format' cannot be combined with a 'tool_choice' "
                                     "that forces a call", param="tool_choice")
                name = forced or None  # "" (required): any of the tools
                for tool in tools if name is None else ():  # each is checked on its own: an
                    processor_factory({"type": "json_schema", "json_schema": {  # unusable one
                        "schema": tool_parameters(tool)}},  # is not hidden in the anyOf
                        engine.tokenizer, engine.vocab_size, "tools")
                schema = {"type": "json_schema", "json_schema": {
                    "schema": forced_schema(tools, name)}}
                params.processor_factory = processor_factory(schema, engine.tokenizer,
                                                             engine.vocab_size, "tools")
                parsed.tool_parser = ForcedToolCalls(name)
        if params.processor_factory is None:  # a grammar writes the whole answer: no reasoning
            self._reasoning(parsed, ids)
        return parsed

    def _reasoning(self, parsed: P.Parsed, ids: list[int]) -> None:
        """The reasoning parser for the answer, and whether the prompt leaves the reasoning
        open (the answer then starts inside it)."""
        from .reasoning import PROMPT_TAIL_TOKENS, reasoning_parser

        parser = reasoning_parser(self.engine.model, self.reasoning)
        if parser is not None:
            parsed.reasoning_parser = parser
            parsed.reasoning_opened = parser.opened(
                self.engine.tokenizer.decode(ids[-PROMPT_TAIL_TOKENS:]))

    def _render_chat(self, messages: list[dict], tools: list[dict] | None,
                     template_kwargs: dict[str, Any], forced: bool = False) -> list[int]:
        """The prompt's token ids. Tools that the template leaves out of the prompt are refused
        when the model is to choose a call (it would never see them); a forced call is still
        answered (the grammar carries the schema), with a warning in the log."""
        tok = self.engine.tokenizer
        if not tools:
            return tok.apply_chat_template(messages, add_generation_prompt=True,
                                           **template_kwargs)
        if not tok.has_chat_template:
            tok.apply_chat_template(messages)  # raises the TokenizerError naming the problem
        try:
            text = tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                           add_generation_prompt=True, **template_kwargs)
            without = tok.apply_chat_template(messages, tokenize=False,
                                              add_generation_prompt=True, **template_kwargs)
        except MlxZooError as e:  # the template is the checkpoint's code
            cause = e.__cause__ or e
            raise P.APIError(f"rendering the chat template with tools failed "
                             f"({type(cause).__name__}: {cause})", param="tools") from None
        if text == without and not forced:
            raise P.APIError("this model's chat template does not show tools (the prompt is "
                             "the same with and without them): the model would never see "
                             "them; send the request without 'tools', or force a call with "
                             "'tool_choice'", param="tools", code="unsupported_parameter")
        if text == without:
            log.warning("the chat template does not show tools: the forced call follows the "
                        "tool's schema, but the model never saw its description")
        return tok.encode(text, add_special_tokens=False)

    def _tools(self, body: dict) -> tuple[list[dict] | None, bool, str | None]:
        """``(tools, parse_calls, forced)``: the tools the prompt shows (None: none), whether
        calls are read from the answer (not with ``tool_choice: "none"``: as vLLM, the prompt
        still shows the tools, and a call the model writes stays text), and the call the answer
        must be -- ``""`` for ``tool_choice: "required"`` (any tool), a function's name when
        one is named, None when the model chooses (``"auto"``, ``"none"``)."""
        tools = body.get("tools")
        choice = body.get("tool_choice")
        if tools is None:
            if choice not in (None, "none", "auto"):
                raise P.APIError("'tool_choice' needs 'tools'", param="tool_choice")
            return None, False, None
        if not isinstance(tools, list) or not all(
                isinstance(t, dict) and t.get("type") == "function"
                and isinstance(t.get("function"), dict)
                and isinstance(t["function"].get("name"), str) for t in tools):
            raise P._bad("tools", "a list of {'type': 'function', 'function': {'name', ...}}",
                         tools)
        _check_tool_parameters(tools)
        names = [t["function"]["name"] for t in tools]
        if choice in (None, "none", "auto"):
            return tools or None, choice != "none", None
        if not tools:
            raise P.APIError("'tool_choice' forces a call but 'tools' is empty",
                             param="tool_choice")
        if choice == "required":
            return tools, True, ""
        if (isinstance(choice, dict) and choice.get("type") == "function"
                and isinstance(choice.get("function"), dict)
                and isinstance(choice["function"].get("name"), str)):
            name = choice["function"]["name"]
            if name not in names:
                raise P.APIError(f"'tool_choice' names the function {name!r}, which is not "
                                 f"among the tools ({', '.join(names)})", param="tool_choice")
            return tools, True, name
        raise P._bad("tool_choice", "'none', 'auto', 'required' or {'type': 'function', "
                     "'function': {'name': ...}}", choice)

    def _response_format(self, body: dict, params) -> None:
        fmt = body.get("response_format")
        if fmt is None:
            return
        if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
            raise P._bad("response_format", "an object with a 'type'", fmt)
        if fmt["type"] == "text":
            return
        from .structured import processor_factory

        params.processor_factory = processor_factory(fmt, self.engine.tokenizer,
                                                     self.engine.vocab_size)

    # -- endpoints -----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if self.engine.load_error is not None:
            return JSONResponse({"status": "error", "error": str(self.engine.load_error)}, 503)
        if not self.engine.ready.is_set():
            return JSONResponse({"status": "loading"}, 503)
        return JSONResponse({"status": "ok", "model": self.model_name, **self.engine.stats()})

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created,
                "owned_by": "mlx-zoo", "max_model_len": self.engine.context_length}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in self.names:
            raise P.APIError(f"The model '{name}' does not exist", status=404, param="model",
                             code="model_not_found")
        return JSONResponse(self._model_card())

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        parsed = await run_in_threadpool(self.parse_completion, body)
        return await self._answer(request, parsed, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        body = await self._body(request)
        parsed = await run_in_threadpool(self.parse_chat, body)
        return await self._answer(request, parsed, chat=True)

    # -- running a request ---------------------------------------------------------------------

    def _submit(self, parsed: P.Parsed) -> tuple[list[Seq], asyncio.Queue]:
        events: asyncio.Queue = asyncio.Queue()
        sink = LoopSink(asyncio.get_running_loop(), events)
        seqs = [Seq(prompt, parsed.params, sink, index=p * parsed.n + j)
                for p, prompt in enumerate(parsed.prompts) for j in range(parsed.n)]
        self.engine.submit(seqs)
        return seqs, events

    async def _answer(self, request: Request, parsed: P.Parsed, chat: bool) -> Response:
        seqs, events = self._submit(parsed)
        state = _Answer(self, parsed, chat)
        if parsed.stream:
            return StreamingResponse(self._stream(request, seqs, events, state),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        last_check = [time.monotonic()]
        try:
            while state.pending:
                batch = await _next_events(request, events, last_check)
                if batch is None:
                    return Response(status_code=499)
                for event in batch:
                    if event["type"] == "error":
                        raise P.APIError(event["message"], status=event.get("status", 500))
                    state.add(event)
            return JSONResponse(state.final())
        finally:
            self.engine.cancel([s for s in seqs if not s.finished])

    async def _stream(self, request: Request, seqs: list[Seq], events: asyncio.Queue,
                      state: _Answer) -> AsyncIterator[str]:
        last_check = [time.monotonic()]
        try:
            for chunk in state.opening_chunks():
                yield _sse(chunk)
            while state.pending:
                batch = await _next_events(request, events, last_check)
                if batch is None:
                    return
                out = []
                for event in batch:
                    if event["type"] == "error":
                        out.append(_sse(P.error_body(event["message"], "server_error"
                                                     if event.get("status", 500) >= 500
                                                     else "invalid_request_error")))
                        yield "".join(out)
                        return
                    out += [_sse(chunk) for chunk in state.add(event, streaming=True)]
                if out:
                    yield "".join(out)  # one write for every event that was waiting
            if state.parsed.include_usage:
                yield _sse(state.usage_chunk())
            yield "data: [DONE]\n\n"
        finally:
            self.engine.cancel([s for s in seqs if not s.finished])


def _check_tool_parameters(tools: list[dict]) -> None:
    """Each tool's ``parameters``: absent, or a JSON schema of an object (as OpenAI requires) --
    never silently replaced by an empty object."""
    for i, tool in enumerate(tools):
        schema = tool["function"].get("parameters")
        if schema is None:
            continue
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise P._bad(f"tools[{i}].function.parameters", "a JSON schema of an object "
                         "({'type': 'object', 'properties': ...})", schema)


async def _next_events(request: Request, events: asyncio.Queue,
                       last_check: list[float]) -> list[dict] | None:
    """Every event waiting in ``events`` (at least one, waited for); None when the client went
    away meanwhile. Waiting goes through ``asyncio.wait_for`` only when nothing is there; while
    events keep coming the connection is still checked every ``POLL_DISCONNECT_S``
    (``last_check`` holds the time of the last check)."""
    now = time.monotonic()
    if now - last_check[0] >= POLL_DISCONNECT_S:
        last_check[0] = now
        if await request.is_disconnected():
            return None
    while events.empty():
        try:
            first = await asyncio.wait_for(events.get(), POLL_DISCONNECT_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                return None
            continue
        batch = [first]
        break
    else:
        batch = []
    while not events.empty():
        batch.append(events.get_nowait())
    return batch


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _delta(reasoning: str, content: str) -> dict[str, Any]:
    """A streamed chat delta: the reasoning piece under both names clients read
    (``reasoning_content``: vLLM before 0.11, SGLang, llama.cpp, DeepSeek's API; ``reasoning``:
    vLLM since), then the content (``""`` when there is nothing else)."""
    delta: dict[str, Any] = {"reasoning_content": reasoning,
                             "reasoning": reasoning} if reasoning else {}
    if content or not reasoning:
        delta["content"] = content
    return delta


class _Answer:
    """The response of one request, assembled from engine events (whole or as chunks)."""

    def __init__(self, server: Server, parsed: P.Parsed, chat: bool):
        self.server, self.parsed, self.chat = server, parsed, chat
        self.text_of = server.engine.token_text
        self.id = P.new_id("chatcmpl" if chat else "cmpl")
        self.created = P.now()
        total = len(parsed.prompts) * parsed.n
        self.pending = total
        self.texts = [""] * total
        self.finish: list[str | None] = [None] * total
        self.chat_logprobs: list[list] = [[] for _ in range(total)]
        self.completion_logprobs = [P.CompletionLogprobs(self.text_of) for _ in range(total)]
        self.completion_tokens = 0
        self.cached = 0
        self.prompt_tokens = sum(len(p) for p in parsed.prompts)
        self.streamed_echo = [False] * total
        self.tool_calls: list[list | None] = [None] * total
        self.tool_streams = [parsed.tool_parser.stream() if parsed.tool_parser else None
                             for _ in range(total)]
        self.reasonings = [""] * total
        self.reasoning_streams = [
            parsed.reasoning_parser.stream(parsed.reasoning_opened)
            if parsed.reasoning_parser else None for _ in range(total)]

    def _prompt_of(self, index: int) -> tuple[list[int], str]:
        p = index // self.parsed.n
        return self.parsed.prompts[p], (self.parsed.prompt_texts[p]
                                        if self.parsed.prompt_texts else "")

    def _base(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat
                else "text_completion", "created": self.created,
                "model": self.server.model_name}

    def opening_chunks(self) -> list[dict]:
        """Chat: the assistant role first; completions with echo (no logprobs): the prompt."""
        chunks = []
        for i in range(len(self.texts)):
            if self.chat:
                chunks.append({**self._base(), "choices": [{
                    "index": i, "delta": {"role": "assistant", "content": ""},
                    "logprobs": None, "finish_reason": None}]})
            elif self.parsed.echo and not self.parsed.params.prompt_logprobs:
                chunks.append(self._completion_chunk(i, self._prompt_of(i)[1], None, None))
                self.streamed_echo[i] = True
        return chunks

    def _completion_chunk(self, i: int, text: str, logprobs: Any, finish: str | None) -> dict:
        return {**self._base(), "choices": [{"index": i, "text": text, "logprobs": logprobs,
                                             "finish_reason": finish}]}

    def _chat_chunk(self, i: int, delta: dict, logprobs: Any, finish: str | None) -> dict:
        return {**self._base(), "choices": [{"index": i, "delta": delta, "logprobs": logprobs,
                                             "finish_reason": finish}]}

    def add(self, event: dict, streaming: bool = False) -> list[dict]:
        i = event["index"]
        kind = event["type"]
        out: list[dict] = []
        if kind == "prompt_logprobs":
            ids, text = self._prompt_of(i)
            lp = self.completion_logprobs[i]
            entries = event["entries"]
            lp.add(ids[0], None, None)
            for token, value, top in entries[1:]:
                lp.add(token, value, top if self.parsed.params.top_logprobs else None)
            if self.parsed.echo:
                self.texts[i] = text + self.texts[i]
                if streaming:
                    out.append(self._completion_chunk(i, text, lp.body(), None))
                    self.streamed_echo[i] = True
        elif kind == "token":
            info = event["logprob"]
            reasoning, text = self._split(i, event["text"])
            self.reasonings[i] += reasoning
            self.texts[i] += text
            if info is not None:
                if self.chat:
                    self.chat_logprobs[i].append(P.chat_logprob_entry(
                        self.text_of, event["token"], info[0], info[1]))
                else:
                    self.completion_logprobs[i].add(
                        event["token"], info[0],
                        info[1] if self.parsed.params.top_logprobs else None)
            if streaming and (reasoning or text or info is not None):
                out.append(self._token_chunk(i, reasoning, text, info is not None))
        elif kind == "done":
            self.pending -= 1
            self.completion_tokens += event["completion_tokens"]
            self.cached += event.get("cached_tokens", 0)
            reason = event["finish_reason"]
            reasoning, rest, calls = self._finish(i)
            self.reasonings[i] += reasoning
            self.texts[i] += rest
            if calls:
                self.tool_calls[i] = calls
                reason = "tool_calls"
            if streaming and (reasoning or rest or calls):
                delta = _delta(reasoning, rest) if reasoning or rest else {}
                if calls:
                    delta["tool_calls"] = [{**c, "index": k} for k, c in enumerate(calls)]
                out.append(self._chat_chunk(i, delta, None, None))
            self.finish[i] = reason
            if streaming:
                if self.chat:
                    out.append(self._chat_chunk(i, {}, None, reason))
                else:
                    out.append(self._completion_chunk(i, "", None, reason))
        return out

    def _split(self, i: int, text: str) -> tuple[str, str]:
        """``(reasoning, content)`` of choice ``i``'s next piece that can be shown now: the
        reasoning parser's split, then the content without what may be a tool call."""
        stream = self.reasoning_streams[i]
        reasoning, content = stream.feed(text) if stream is not None else ("", text)
        tools = self.tool_streams[i]
        if tools is not None:
            content = tools.feed(content)
        return reasoning, content

    def _finish(self, i: int) -> tuple[str, str, list]:
        """``(reasoning, content, tool calls)``: what choice ``i``'s parsers still held."""
        stream = self.reasoning_streams[i]
        reasoning, content = stream.finish() if stream is not None else ("", "")
        tools = self.tool_streams[i]
        if tools is None:
            return reasoning, content, []
        content = tools.feed(content)
        rest, calls = tools.finish()
        return reasoning, content + rest, calls

    def _token_chunk(self, i: int, reasoning: str, text: str, with_logprobs: bool) -> dict:
        if self.chat:
            logprobs = ({"content": self.chat_logprobs[i][-1:]} if with_logprobs else None)
            return self._chat_chunk(i, _delta(reasoning, text), logprobs, None)
        logprobs = self.completion_logprobs[i].body(len(self.completion_logprobs[i].tokens) - 1) \
            if with_logprobs else None
        return self._completion_chunk(i, text, logprobs, None)

    def usage(self) -> dict[str, Any]:
        return P.usage(self.prompt_tokens, self.completion_tokens, self.cached)

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._base(), "choices": [], "usage": self.usage()}

    def final(self) -> dict[str, Any]:
        choices = []
        for i, text in enumerate(self.texts):
            if self.chat:
                reasoning = self.reasonings[i] or None
                message: dict[str, Any] = {"role": "assistant", "content": text,
                                           "reasoning_content": reasoning,
                                           "reasoning": reasoning}
                if self.tool_calls[i] or reasoning:
                    message["content"] = text or None  # vLLM's: no answer after the reasoning
                if self.tool_calls[i]:
                    message["tool_calls"] = self.tool_calls[i]
                logprobs = ({"content": self.chat_logprobs[i]}
                            if self.parsed.params.logprobs else None)
                choices.append({"index": i, "message": message, "logprobs": logprobs,
                                "finish_reason": self.finish[i]})
            else:
                if self.parsed.echo and not self.parsed.params.prompt_logprobs:
                    text = self._prompt_of(i)[1] + text
                logprobs = (self.completion_logprobs[i].body()
                            if self.parsed.params.logprobs else None)
                choices.append({"index": i, "text": text, "logprobs": logprobs,
                                "finish_reason": self.finish[i]})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.server.model_name, "choices": choices,
                "usage": self.usage()}


# -- the application ---------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, P.APIError):
        return JSONResponse(exc.body(), status_code=exc.status)
    if isinstance(exc, MlxZooError):
        return JSONResponse(P.error_body(str(exc)), status_code=400)
    if isinstance(exc, HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(P.error_body(f"{request.method} {request.url.path}: {exc.detail}",
                                         kind), status_code=exc.status_code)
    log.exception("internal error on %s", request.url.path)
    return JSONResponse(P.error_body(f"internal error: {type(exc).__name__}: {exc}",
                                     "server_error"), status_code=500)


def create_app(server: Server) -> Starlette:
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{model:path}", server.model, methods=["GET"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={
        P.APIError: _api_error, MlxZooError: _api_error, HTTPException: _api_error,
        Exception: _api_error})
