"""Text generation: the decode loop, streaming, stop conditions and speed figures.

Layers, from the inside out:

* :func:`generate_step` -- token ids in, token ids out. Processes the prompt in chunks of
  ``prefill_step_size`` tokens into the model's own caches (:func:`mlx_zoo.make_prompt_cache`),
  then decodes one token at a time. The next step's graph is built and handed to
  ``mx.async_eval`` before the current token is given out, so the device computes token n + 1
  while Python handles token n; the per-token Python work is one ``.item()``.
* :func:`stream_generate` -- text in, :class:`GenerationResponse` per token out: tokenises the
  prompt, applies the sampler and logits processors, detokenises incrementally (never broken
  UTF-8), stops on EOS ids, stop strings or ``max_tokens``, and reports speed and peak memory.
* :func:`generate` -- the same, collected into one :class:`GenerationResult`.
"""

from __future__ import annotations

import numbers
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .cache import (
    KV_BITS,
    KV_GROUP_SIZES,
    KVCache,
    check_prompt_cache,
    make_prompt_cache,
)
from .compiled import compiled_decoder, enabled_by_default
from .errors import GenerationArgumentError
from .layers import checked_token_ids
from .sample import (
    DEFAULT_REPETITION_CONTEXT,
    LogitsProcessor,
    Sampler,
    greedy,
    make_logits_processors,
    make_sampler,
)
from .tokenizer import encode_prompt

DEFAULT_MAX_TOKENS = 256
DEFAULT_PREFILL_STEP_SIZE = 2048
"""Prompt tokens run through the model at once: bounds the memory of the attention scores."""

BYTES_PER_GB = 1e9


# -- tokens in, tokens out -----------------------------------------------------------------------


def check_generation_args(max_tokens: int, prefill_step_size: int) -> None:
    """Raise :class:`GenerationArgumentError` unless both are integers >= 1."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise GenerationArgumentError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if (isinstance(prefill_step_size, bool) or not isinstance(prefill_step_size, int)
            or prefill_step_size < 1):
        raise GenerationArgumentError(
            f"prefill_step_size must be an integer >= 1, got {prefill_step_size!r}")


def check_generation_hooks(sampler: Any, logits_processors: Any, stop: Any = None) -> None:
    """Raise :class:`GenerationArgumentError` naming the argument unless ``sampler`` is None or
    callable, ``logits_processors`` None or a list/tuple of callables, and ``stop`` None, a
    string or a list/tuple of non-empty strings (before they fail deep inside generation)."""
    if sampler is not None and not callable(sampler):
        raise GenerationArgumentError(f"sampler must be a callable (logprobs -> token ids), "
                                      f"got {type(sampler).__name__} {sampler!r:.60}")
    if logits_processors is not None and (
            not isinstance(logits_processors, (list, tuple))
            or not all(callable(p) for p in logits_processors)):
        raise GenerationArgumentError(f"logits_processors must be a list of callables "
                                      f"(tokens, logits) -> logits, got {logits_processors!r:.60}")
    if stop is None or isinstance(stop, str):
        return
    if (not isinstance(stop, (list, tuple))
            or not all(isinstance(s, str) and s for s in stop)):
        raise GenerationArgumentError(f"stop must be a string or a list of non-empty strings, "
                                      f"got {stop!r:.60}")


SEED_LIMIT = 2**64
"""Seeds are unsigned 64-bit integers (``mx.random.seed``): 0 .. 2**64 - 1."""


def check_seed(seed: int | None) -> None:
    """Raise :class:`GenerationArgumentError` unless ``seed`` is None or in [0, 2**64)."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise GenerationArgumentError(
            f"seed must be an integer in [0, 2**64) (MLX's random seed is 64-bit), got {seed!r}")


DEFAULT_KV_GROUP_SIZE = None
"""None: the largest of :data:`KV_GROUP_SIZES` dividing the head dimension
(:func:`resolve_kv_group_size`) -- a fixed 64 would fail on every model with 32-wide heads."""


def check_kv_args(kv_bits: int | None, kv_group_size: int | None,
                  quantized_kv_start: int) -> None:
    """Raise :class:`GenerationArgumentError` unless the KV-cache quantization is valid."""
    if kv_bits is not None and kv_bits not in KV_BITS:
        raise GenerationArgumentError(f"kv_bits must be one of {KV_BITS} (or None), "
                                      f"got {kv_bits!r}")
    if kv_group_size is not None and (isinstance(kv_group_size, bool)
                                      or kv_group_size not in KV_GROUP_SIZES):
        raise GenerationArgumentError(f"kv_group_size must be one of {KV_GROUP_SIZES} (or None: "
                                      f"the largest dividing the head dim), got {kv_group_size!r}")
    if (isinstance(quantized_kv_start, bool) or not isinstance(quantized_kv_start, int)
            or quantized_kv_start < 0):
        raise GenerationArgumentError(
            f"quantized_kv_start must be an integer >= 0, got {quantized_kv_start!r}")


def resolve_kv_group_size(kv_group_size: int | None, head_dims: Iterable[int]) -> int:
    """The group size to quantize keys/values of widths ``head_dims`` with: ``kv_group_size``
    when it divides each of them (else :class:`GenerationArgumentError`), or, when it is None,
    the largest of :data:`KV_GROUP_SIZES` that does (a group never straddles two heads)."""
    dims = sorted(set(head_dims))
    candidates = (KV_GROUP_SIZES[::-1] if kv_group_size is None else (kv_group_size,))
    for size in candidates:
        if all(d % size == 0 for d in dims):
            return size
    if kv_group_size is None:
        raise GenerationArgumentError(
            f"kv_bits: no KV group size of {KV_GROUP_SIZES} divides the head dim {dims}; "
            "this model's cache cannot be quantized (leave kv_bits unset)")
    fitting = [g for g in KV_GROUP_SIZES if all(d % g == 0 for d in dims)]
    raise GenerationArgumentError(
        f"kv_group_size {kv_group_size} does not divide the model's head dim {dims}: use one of "
        f"{fitting or 'none'} or leave it unset (the largest that divides)")


def model_head_dims(model: Any) -> list[int] | None:
    """The key/value head widths from the model's config (``args.head_dim``, else
    ``hidden_size // num_attention_heads``), or None when the config says neither."""
    args = getattr(model, "args", None)
    head_dim = getattr(args, "head_dim", None)
    if not _positive_int(head_dim):
        hidden = getattr(args, "hidden_size", None)
        heads = getattr(args, "num_attention_heads", None)
        if not (_positive_int(hidden) and _positive_int(heads)):
            return None
        head_dim = hidden // heads
    return [head_dim]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def quantize_kv_caches(cache: list, kv_bits: int | None, kv_group_size: int | None,
                       quantized_kv_start: int) -> None:
    """Replace, in ``cache`` (in place), each full-attention :class:`~mlx_zoo.KVCache` that holds
    at least ``quantized_kv_start`` positions by a :class:`~mlx_zoo.QuantizedKVCache` with the same
    contents (keys/values stored in ``kv_bits`` bits: less memory for long contexts, at a small
    loss). Sliding-window and chunked caches stay as they are; nothing happens when ``kv_bits`` is
    None. The group size is :func:`resolve_kv_group_size` of the cached keys' and values' widths."""
    if kv_bits is None:
        return
    for i, layer_cache in enumerate(cache):
        if type(layer_cache) is KVCache and layer_cache.offset >= quantized_kv_start:
            group = kv_group_size
            if layer_cache.keys is not None:
                group = resolve_kv_group_size(
                    kv_group_size, (layer_cache.keys.shape[-1], layer_cache.values.shape[-1]))
            cache[i] = layer_cache.to_quantized(group_size=group or KV_GROUP_SIZES[-1],
                                                bits=kv_bits)


def model_vocab_size(model: Any) -> int | None:
    """Token ids ``model`` reads: its ``vocab_size`` (:attr:`mlx_zoo.CausalLM.vocab_size`: the
    embedding's rows), else ``args.vocab_size``; None when neither is known."""
    size = getattr(model, "vocab_size", None)
    if not _positive_int(size):
        size = getattr(getattr(model, "args", None), "vocab_size", None)
    return size if _positive_int(size) else None


def model_context_length(model: Any) -> int | None:
    """``args.max_position_embeddings`` (the context length the model was trained for), or None."""
    limit = getattr(getattr(model, "args", None), "max_position_embeddings", None)
    return limit if _positive_int(limit) else None


class ContextLengthWarning(UserWarning):
    """A generation may run past the model's ``max_position_embeddings``."""


def as_prompt_array(prompt: Any, vocab_size: int | None = None) -> mx.array:
    """``prompt`` as a 1-D uint32 array of ids in ``[0, vocab_size)``, else
    :class:`GenerationArgumentError` naming the position and value. An ``mx.array`` is checked
    on the device with one synchronisation; a Python sequence element by element."""
    if prompt is None or isinstance(prompt, (str, bytes, bytearray)):
        raise GenerationArgumentError(
            "the prompt must be token ids (a 1-D sequence of ints or an mx.array; text goes "
            f"through stream_generate/generate), got {type(prompt).__name__}")
    if isinstance(prompt, mx.array):
        if prompt.ndim != 1 or prompt.size == 0:
            raise GenerationArgumentError(
                f"the prompt must be a non-empty 1-D sequence of token ids, got shape "
                f"{prompt.shape}")
        if not mx.issubdtype(prompt.dtype, mx.integer):
            raise GenerationArgumentError(
                f"the prompt's token ids must have an integer dtype, got {prompt.dtype}")
        if vocab_size is not None:
            invalid = prompt >= vocab_size
            if mx.issubdtype(prompt.dtype, mx.signedinteger):
                invalid = invalid | (prompt < 0)
            if mx.any(invalid).item():
                position = int(mx.argmax(invalid).item())
                _raise_bad_id(position, prompt[position].item(), vocab_size)
        return prompt.astype(mx.uint32)
    try:
        items = list(prompt)
    except TypeError:
        raise GenerationArgumentError(
            f"the prompt must be a sequence of token ids, got {type(prompt).__name__}") from None
    if not items:
        raise GenerationArgumentError("the prompt must be a non-empty 1-D sequence of token ids, "
                                      "got an empty one")
    upper = vocab_size if vocab_size is not None else 2**32  # uint32 holds the ids
    for position, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise GenerationArgumentError(
                f"the prompt's token at position {position} is {item!r} "
                f"({type(item).__name__}): expected an integer token id")
        if not 0 <= item < upper:
            _raise_bad_id(position, int(item), vocab_size)
    return mx.array([int(i) for i in items], dtype=mx.uint32)


def _raise_bad_id(position: int, value: Any, vocab_size: int | None) -> None:
    bound = f"[0, {vocab_size}), the model's vocabulary" if vocab_size else "[0, 2**32)"
    raise GenerationArgumentError(
        f"the prompt's token id at position {position} is {value}: expected an id in {bound}")


def _sampler_name(sampler: Any) -> str:
    return getattr(sampler, "__qualname__", None) or repr(sampler)


def _bad_sample(sampler: Any, what: str, width: int | None = None) -> GenerationArgumentError:
    bound = f"[0, {width})" if width is not None else "[0, vocab)"
    return GenerationArgumentError(f"the sampler {_sampler_name(sampler)} returned {what}: "
                                   f"expected one integer token id per row of logprobs, in "
                                   f"{bound}")


def generate_step(prompt: mx.array | Sequence[int], model: nn.Module, *,
                  max_tokens: int = DEFAULT_MAX_TOKENS, sampler: Sampler | None = None,
                  logits_processors: Sequence[LogitsProcessor] | None = None,
                  prompt_cache: list | None = None,
                  prefill_step_size: int = DEFAULT_PREFILL_STEP_SIZE,
                  compile_step: bool | None = None,
                  kv_bits: int | None = None,
                  kv_group_size: int | None = DEFAULT_KV_GROUP_SIZE,
                  quantized_kv_start: int = 0,
                  ) -> Iterator[tuple[int, mx.array]]:
    """Yield ``(token, logprobs)`` for up to ``max_tokens`` new tokens after ``prompt``.

    ``logprobs`` is the log-softmax of the (processed) logits the token was drawn from, shape
    ``(vocab,)``. ``prompt_cache`` (from :func:`mlx_zoo.make_prompt_cache`) is extended in place,
    so a caller can keep it for the next turn; by default a fresh one is made.

    ``compile_step`` runs the single-token steps through :mod:`mlx_zoo.compiled` (the model step
    compiled once, on a fixed-shape copy of the caches written back at the end); default
    (None): off unless ``MLX_ZOO_COMPILE=1`` (:func:`mlx_zoo.compiled.enabled_by_default`).

    ``kv_bits`` stores the full-attention caches' keys and values quantized (``kv_group_size``
    elements per scale; None: the largest of 128/64/32 dividing the head dim) once they hold
    ``quantized_kv_start`` positions, as mlx-lm's options of the same names do
    (:func:`quantize_kv_caches`); the compiled step is then not used.

    Checked before anything runs (:class:`GenerationArgumentError`): prompt ids must be integers
    in ``[0, vocab)`` (:func:`model_vocab_size`); a ``prompt_cache`` must have the model's layout
    (:func:`mlx_zoo.cache.check_prompt_cache`: an empty list is not "no cache"). A ``sampler``
    returning anything but one id in ``[0, vocab)`` raises when that token is handed out; the
    model is only ever fed the id clamped into range (lazily, no extra synchronisation). A
    :class:`ContextLengthWarning` is issued when the cached positions, the prompt and
    ``max_tokens`` together exceed the model's ``max_position_embeddings``
    (:func:`model_context_length`): quality degrades past it, but it is not refused here.
    """
    check_generation_args(max_tokens, prefill_step_size)
    check_generation_hooks(sampler, logits_processors)
    check_kv_args(kv_bits, kv_group_size, quantized_kv_start)
    vocab = model_vocab_size(model)
    tokens = as_prompt_array(prompt, vocab)
    if prompt_cache is not None:
        check_prompt_cache(model, prompt_cache)
    cache = prompt_cache if prompt_cache is not None else make_prompt_cache(model)
    if kv_bits is not None:
        head_dims = model_head_dims(model)
        if head_dims is not None:  # else decided from the cached keys' width when quantizing
            kv_group_size = resolve_kv_group_size(kv_group_size, head_dims)
    limit = model_context_length(model)
    cached = cache[0].offset if cache and isinstance(getattr(cache[0], "offset", None), int) else 0
    if limit is not None and cached + tokens.size + max_tokens > limit:
        warnings.warn(
            f"{cached} cached + {tokens.size} prompt + max_tokens {max_tokens} positions exceed "
            f"the model's max_position_embeddings ({limit}): output past it may degrade",
            ContextLengthWarning, stacklevel=2)
    sampler = sampler or greedy
    processors = list(logits_processors or ())
    history = tokens  # the prompt and the tokens generated so far: read by logits processors

    decoder = None  # a CompiledDecoder once the prompt is in the caches, where one is used

    def quantize_caches() -> None:
        quantize_kv_caches(cache, kv_bits, kv_group_size, quantized_kv_start)

    def step(inputs: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Queue the next token: ``(drawn, fed, logprobs)`` -- the sampler's id as it returned
        it (checked on the host when handed out), the same clamped into the vocabulary and
        as uint32 (what the model and the logits processors are fed), and its logprobs."""
        quantize_caches()
        with checked_token_ids():  # the prompt was checked above; sampled ids are clamped
            if decoder is not None:
                logits = decoder.step(inputs)
            else:
                logits = model(inputs[None], cache=cache)[:, -1, :]
        for process in processors:
            logits = process(history, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        drawn = sampler(logprobs)
        if not isinstance(drawn, mx.array):
            raise _bad_sample(sampler, f"a {type(drawn).__name__}, not an mx.array")
        if drawn.size != 1 or not mx.issubdtype(drawn.dtype, mx.integer):
            raise _bad_sample(sampler, f"an array of shape {drawn.shape} and dtype {drawn.dtype}")
        width = logprobs.shape[-1] if vocab is None else min(vocab, logprobs.shape[-1])
        fed = mx.clip(drawn.reshape(1), 0, width - 1).astype(mx.uint32)
        return drawn, fed, logprobs.squeeze(0)

    def handed_out(drawn: mx.array) -> int:
        """The drawn id, checked on the ``.item()`` that reads it anyway."""
        token = drawn.item()
        width = logprobs.shape[-1] if vocab is None else min(vocab, logprobs.shape[-1])
        if not 0 <= token < width:
            raise _bad_sample(sampler, f"token id {token}", width)
        return token

    # Prefill: every prompt token but the last, in chunks, evaluating only the caches after each
    # (bounds memory). No logits are computed for the prompt: the output head over a vocabulary
    # of 150k would dominate a CPU prefill. The last token goes through ``step``.
    while tokens.size > 1:
        chunk = min(prefill_step_size, tokens.size - 1)
        quantize_caches()
        with checked_token_ids():
            model(tokens[None, :chunk], cache=cache)
        mx.eval([c.state for c in cache])
        tokens = tokens[chunk:]

    drawn, y, logprobs = step(tokens)
    mx.async_eval(drawn, y, logprobs)
    compile_wanted = enabled_by_default() if compile_step is None else compile_step
    if max_tokens > 1 and compile_wanted and kv_bits is None:
        with checked_token_ids():  # traced here
            decoder = compiled_decoder(model, cache, max_tokens)
    try:
        for n in range(max_tokens):
            if n + 1 < max_tokens:  # queue token n + 1 before handing out token n
                if processors:
                    history = mx.concatenate([history, y])
                next_drawn, next_y, next_logprobs = step(y)
                mx.async_eval(next_drawn, next_y, next_logprobs)
            yield handed_out(drawn), logprobs
            if n + 1 < max_tokens:
                drawn, y, logprobs = next_drawn, next_y, next_logprobs
    finally:
        if decoder is not None:  # the caller's caches hold every decoded position
            decoder.finish()


def reuse_prompt_cache(model: nn.Module, cache: list, cached_tokens: Sequence[int],
                       tokens: Sequence[int]) -> tuple[list, int]:
    """Prepare ``cache`` (holding ``cached_tokens``) for a prompt ``tokens`` that may share a
    prefix with them, e.g. the next turn of a chat. Returns the cache to use and how many leading
    tokens of ``tokens`` it already holds; feed only ``tokens[start:]``. What follows the common
    prefix is trimmed off; caches that cannot be trimmed (sliding-window, chunked) are replaced by
    fresh ones (start 0). At least one token is always left to feed."""
    common = 0
    for cached, new in zip(cached_tokens, tokens, strict=False):
        if cached != new:
            break
        common += 1
    common = min(common, len(tokens) - 1)
    excess = len(cached_tokens) - common
    if excess > 0:
        if not all(c.is_trimmable() for c in cache):
            return make_prompt_cache(model), 0
        for c in cache:
            c.trim(excess)
    return cache, common


# -- text in, text out -----------------------------------------------------------------------------


@dataclass
class GenerationResponse:
    """One generated token, streamed. ``text`` is the new complete text (may be ""); the speed
    figures are running values: tokens per second of the prompt (until the first token) and of
    the generation so far, and the peak memory in GB (``mx.get_peak_memory``)."""

    text: str
    token: int
    logprobs: mx.array
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float
    finish_reason: str | None = None  # "stop" (EOS or stop string), "length", or None


@dataclass
class GenerationResult:
    """A whole generation (:func:`generate`): the text, the generated token ids (the final EOS
    included when generation ended on one) and the final speed figures."""

    text: str
    tokens: list[int]
    finish_reason: str
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float

    def __str__(self) -> str:
        return self.text


class _StopStrings:
    """Finds stop strings in streamed text. Text that could be the start of a stop string is held
    back until it is clear whether the stop string follows, so no part of it is ever emitted."""

    def __init__(self, stops: Sequence[str]):
        if any(not isinstance(s, str) or not s for s in stops):
            raise GenerationArgumentError(f"stop strings must be non-empty strings, got {stops!r}")
        self.stops = list(stops)
        self.longest = max(len(s) for s in stops)
        self.text = ""
        self.emitted = 0

    def feed(self, piece: str) -> tuple[str, bool]:
        """New text to emit, and whether a stop string was reached (text before it only)."""
        self.text += piece
        search_from = max(0, self.emitted - self.longest + 1)
        hits = [i for i in (self.text.find(s, search_from) for s in self.stops) if i >= 0]
        if hits:
            return self._emit_until(min(hits)), True
        return self._emit_until(len(self.text) - self._held_back()), False

    def flush(self) -> str:
        return self._emit_until(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        for size in range(min(self.longest - 1, len(self.text) - self.emitted), 0, -1):
            tail = self.text[-size:]
            if any(s.startswith(tail) for s in self.stops):
                return size
        return 0

    def _emit_until(self, end: int) -> str:
        piece = self.text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return piece


def _encode_prompt(tokenizer: Any, prompt: str | Sequence[int] | mx.array,
                   vocab_size: int | None) -> mx.array:
    """Text through the tokenizer (special tokens added, but no second BOS when the text
    already starts with one: :func:`mlx_zoo.tokenizer.encode_prompt`), or token ids: checked
    ids in ``[0, vocab_size)``."""
    if isinstance(prompt, str):
        return as_prompt_array(encode_prompt(tokenizer, prompt), vocab_size)
    return as_prompt_array(prompt, vocab_size)


def stream_generate(model: nn.Module, tokenizer: Any, prompt: str | Sequence[int] | mx.array, *,
                    max_tokens: int = DEFAULT_MAX_TOKENS, temp: float = 0.0, top_p: float = 1.0,
                    top_k: int = 0, min_p: float = 0.0,
                    repetition_penalty: float | None = None,
                    repetition_context_size: int = DEFAULT_REPETITION_CONTEXT,
                    seed: int | None = None, stop: str | Sequence[str] | None = None,
                    prompt_cache: list | None = None,
                    prefill_step_size: int = DEFAULT_PREFILL_STEP_SIZE,
                    sampler: Sampler | None = None,
                    logits_processors: Sequence[LogitsProcessor] | None = None,
                    kv_bits: int | None = None,
                    kv_group_size: int | None = DEFAULT_KV_GROUP_SIZE,
                    quantized_kv_start: int = 0,
                    ) -> Iterator[GenerationResponse]:
    """Generate text after ``prompt`` (a string, tokenised with the tokenizer's special tokens
    -- but a text that already starts with the BOS token, as a rendered chat template does, gets
    no second one -- or token ids), one :class:`GenerationResponse` per token.

    Sampling is greedy when ``temp == 0``; otherwise ``top_p``, ``top_k``, ``min_p`` restrict it
    (see :mod:`mlx_zoo.sample`); ``seed`` seeds MLX's random state first. ``sampler`` and
    ``logits_processors`` replace the ones those arguments would build. Generation ends on one
    of the tokenizer's ``eos_token_ids`` (the EOS is not part of the text), on a ``stop`` string
    (which is not part of the text either), or after ``max_tokens`` tokens; the last response
    carries the ``finish_reason``. ``kv_bits``, ``kv_group_size``, ``quantized_kv_start``: see
    :func:`generate_step`, which also checks the prompt ids and the ``prompt_cache``. A text
    prompt must be encodable as UTF-8 (no lone surrogates such as ``"\\ud800"``); ``seed`` must
    be in ``[0, 2**64)``; otherwise :class:`GenerationArgumentError`.
    """
    if prompt is None:
        raise GenerationArgumentError("the prompt is None: expected text or token ids")
    check_generation_hooks(sampler, logits_processors, stop)
    if sampler is None:
        sampler = make_sampler(temp, top_p, top_k, min_p)
    if logits_processors is None:
        logits_processors = make_logits_processors(repetition_penalty, repetition_context_size)
    if seed is not None:
        check_seed(seed)
        mx.random.seed(seed)
    stops = _StopStrings([stop] if isinstance(stop, str) else list(stop)) if stop else None
    tokens = _encode_prompt(tokenizer, prompt, model_vocab_size(model))
    eos_ids = frozenset(tokenizer.eos_token_ids)
    detokenizer = tokenizer.detokenizer()

    steps = generate_step(tokens, model, max_tokens=max_tokens, sampler=sampler,
                          logits_processors=logits_processors, prompt_cache=prompt_cache,
                          prefill_step_size=prefill_step_size, kv_bits=kv_bits,
                          kv_group_size=kv_group_size, quantized_kv_start=quantized_kv_start)
    mx.reset_peak_memory()
    start = time.perf_counter()
    prompt_tps = 0.0
    for n, (token, logprobs) in enumerate(steps):
        if n == 0:
            prompt_time = time.perf_counter() - start
            prompt_tps = tokens.size / prompt_time
            start = time.perf_counter()
        finish = None
        if token in eos_ids:
            text, finish = detokenizer.finalize(), "stop"
        else:
            text = detokenizer.add_token(token)
            if n + 1 == max_tokens:
                text, finish = text + detokenizer.finalize(), "length"
        if stops is not None:
            text, reached = stops.feed(text)
            if reached:
                finish = "stop"
            elif finish is not None:
                text += stops.flush()
        elapsed = time.perf_counter() - start
        yield GenerationResponse(
            text=text, token=token, logprobs=logprobs, prompt_tokens=tokens.size,
            prompt_tps=prompt_tps, generation_tokens=n + 1,
            generation_tps=(n + 1) / elapsed if elapsed > 0 else 0.0,
            peak_memory=mx.get_peak_memory() / BYTES_PER_GB, finish_reason=finish)
        if finish is not None:
            break


def generate(model: nn.Module, tokenizer: Any, prompt: str | Sequence[int] | mx.array, *,
             verbose: bool = False, **kwargs: Any) -> GenerationResult:
    """:func:`stream_generate` collected into one :class:`GenerationResult` (same arguments).
    With ``verbose`` the text is printed as it comes, then the speed figures."""
    pieces: list[str] = []
    tokens: list[int] = []
    last = None
    for last in stream_generate(model, tokenizer, prompt, **kwargs):
        pieces.append(last.text)
        tokens.append(last.token)
        if verbose:
            print(last.text, end="", flush=True)
    assert last is not None  # max_tokens >= 1 is checked, so there is always a response
    if verbose:
        print()
        print_stats(last)
    return GenerationResult(
        text="".join(pieces), tokens=tokens, finish_reason=last.finish_reason or "length",
        prompt_tokens=last.prompt_tokens, prompt_tps=last.prompt_tps,
        generation_tokens=last.generation_tokens, generation_tps=last.generation_tps,
        peak_memory=last.peak_memory)


def format_stats(response: GenerationResponse | GenerationResult) -> list[str]:
    """The speed report printed after a generation, as in mlx-lm."""
    return [
        f"Prompt: {response.prompt_tokens} tokens, {response.prompt_tps:.3f} tokens-per-sec",
        f"Generation: {response.generation_tokens} tokens, "
        f"{response.generation_tps:.3f} tokens-per-sec",
        f"Peak memory: {response.peak_memory:.3f} GB",
    ]


def print_stats(response: GenerationResponse | GenerationResult, file: Any = None) -> None:
    file = file or sys.stdout
    print("=" * 10, file=file)
    for line in format_stats(response):
        print(line, file=file)


def collect_text(responses: Iterable[GenerationResponse]) -> str:
    """Concatenate the text of streamed responses."""
    return "".join(r.text for r in responses)
