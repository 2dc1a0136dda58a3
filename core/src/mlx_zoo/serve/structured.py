"""Structured output: ``response_format`` enforced while sampling, with llguidance.

``{"type": "json_object"}`` constrains the answer to a JSON object, ``{"type": "json_schema",
"json_schema": {"schema": {...}}}`` to JSON valid against the schema. Each sequence gets a
:class:`GrammarProcessor`: before each token it asks llguidance's matcher which tokens may come
next (a bitmask over the vocabulary, from the checkpoint's ``tokenizer.json``) and sets every
other logit to ``-inf``; the chosen token is then fed to the matcher. When the grammar is complete
the matcher allows only end-of-sequence, and the choice finishes with ``"stop"``.

Anything else -- another ``type``, a schema llguidance rejects, llguidance not installed -- is a
400 naming ``response_format``: never silently ignored.
"""

from __future__ import annotations

import threading
from typing import Any

import mlx.core as mx
import numpy as np

from .protocol import APIError

_TOKENIZERS: dict[int, Any] = {}
COMPACT = {"x-guidance": {"whitespace_flexible": False, "key_separator": ": ",
                          "item_separator": ", "}}
"""JSON written on one line with single spaces (as OpenAI's structured outputs): free
whitespace lets a small model pad forever. A schema's own ``x-guidance`` options win."""
_LOCK = threading.Lock()


def _lltokenizer(tokenizer: Any, vocab_size: int | None) -> Any:
    """llguidance's view of the tokenizer (built once per tokenizer from its tokenizer.json)."""
    import llguidance

    key = id(tokenizer)
    with _LOCK:
        cached = _TOKENIZERS.get(key)
        if cached is None:
            backend = getattr(tokenizer.hf, "backend_tokenizer", None)
            if backend is not None:
                text = backend.to_str()
            elif tokenizer.model_dir is not None and (tokenizer.model_dir
                                                      / "tokenizer.json").is_file():
                text = (tokenizer.model_dir / "tokenizer.json").read_text(encoding="utf-8")
            else:
                raise APIError("response_format needs a tokenizer.json (a fast tokenizer)",
                               param="response_format", code="unsupported_parameter")
            eos = sorted(tokenizer.eos_token_ids)
            cached = _TOKENIZERS[key] = llguidance.LLTokenizer(
                text, n_vocab=vocab_size, eos_token=eos if len(eos) > 1 else eos[0])
        return cached


def grammar_for(fmt: dict) -> str:
    """The llguidance grammar of a ``response_format`` object."""
    import llguidance

    kind = fmt.get("type")
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object", **COMPACT})
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise APIError("'response_format.json_schema.schema' must be a JSON schema object",
                           param="response_format", code="invalid_value")
        return llguidance.LLMatcher.grammar_from_json_schema({**COMPACT, **schema})
    raise APIError(f"response_format type {kind!r} is not supported (text, json_object, "
                   "json_schema)", param="response_format", code="unsupported_parameter")


class GrammarProcessor:
    """A logits processor (and token acceptor) for one sequence."""

    def __init__(self, lltokenizer: Any, grammar: str):
        import llguidance
        import llguidance.numpy as lnp

        self._lnp = lnp
        self.matcher = llguidance.LLMatcher(lltokenizer, grammar)
        self.vocab = lltokenizer.vocab_size
        self.bitmask = lnp.allocate_token_bitmask(1, self.vocab)

    def process(self, logits: mx.array) -> mx.array:
        self._lnp.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        allowed = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")
        width = logits.shape[-1]
        allowed = allowed[:width]
        if allowed.size < width:
            allowed = np.concatenate([allowed, np.zeros(width - allowed.size, np.uint8)])
        return mx.where(mx.array(allowed.astype(bool))[None], logits,
                        mx.array(-mx.inf, logits.dtype))

    def accept(self, token: int) -> None:
        self.matcher.consume_token(token)

    def is_finished(self) -> bool:
        return self.matcher.is_stopped()


def processor_factory(fmt: dict, tokenizer: Any, vocab_size: int | None,
                      param: str = "response_format"):
    """A function making a fresh :class:`GrammarProcessor` per sequence; the grammar is checked
    now: a 400 naming ``param`` (the request field the schema came from) for one llguidance
    rejects, and for one no JSON text satisfies -- a ``$ref`` cycle that never reaches a type,
    such as ``{"$ref": "#"}``, which would otherwise end the answer at once with nothing."""
    try:
        import llguidance  # noqa: F401
    except ImportError:
        raise APIError(f"{param} needs llguidance: pip install 'mlx-zoo[serve]'",
                       param=param, code="unsupported_parameter") from None
    grammar = grammar_for(fmt)
    lltokenizer = _lltokenizer(tokenizer, vocab_size)
    probe = GrammarProcessor(lltokenizer, grammar)
    if probe.matcher.is_error():
        raise APIError(f"{param}: the schema cannot be used ({probe.matcher.get_error()})",
                       param=param, code="invalid_value")
    probe.process(mx.zeros((1, probe.vocab)))  # the first token's mask
    if probe.matcher.is_error() or probe.matcher.is_accepting():
        raise APIError(f"{param}: no JSON value satisfies the schema (a '$ref' that only "
                       f"refers to itself, such as {{\"$ref\": \"#\"}}?)", param=param,
                       code="invalid_value")

    def make() -> GrammarProcessor:
        return GrammarProcessor(lltokenizer, grammar)

    return make
