"""mlx-lm's top-level API on mlx-zoo: code written for mlx-lm switches with one import.

    from mlx_zoo.lm import load, generate, stream_generate, batch_generate

The four functions take mlx-lm's (0.32) arguments and return what mlx-lm's return: ``load`` ->
``(model, tokenizer)`` (``(model, tokenizer, config)`` with ``return_config``), ``generate`` ->
the text (``str``), ``stream_generate`` -> :class:`GenerationResponse` per token,
``batch_generate`` -> :class:`BatchResponse`. Underneath run mlx-zoo's loader
(:func:`mlx_zoo.load`, plugins found by ``model_type``), its tokenizer
(:class:`mlx_zoo.Tokenizer`: ``apply_chat_template`` as transformers', ids by default) and its
generation (:func:`mlx_zoo.stream_generate`; batches over :class:`mlx_zoo.compat.BatchCache`).

Where mlx-zoo has no counterpart the option is refused with an :class:`~mlx_zoo.MlxZooError`
naming it, never silently ignored: speculative decoding (``draft_model``), LoRA adapters
(``adapter_path``), config overrides (``model_config``), rotating caches by size
(``max_kv_size``), ``input_embeddings``. Checkpoint code is never run: ``trust_remote_code`` is
accepted and changes nothing (a tokenizer that needs custom code is a
:class:`~mlx_zoo.TokenizerError` either way).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .batch_cache import BatchCache, share_memo
from .cache import make_prompt_cache
from .config import read_config
from .errors import ConfigError, GenerationArgumentError, TokenizerError
from .generate import (
    BYTES_PER_GB,
    DEFAULT_PREFILL_STEP_SIZE,
    as_prompt_array,
    check_generation_args,
    format_stats,
    model_vocab_size,
)
from .generate import GenerationResponse as ZooGenerationResponse
from .generate import stream_generate as zoo_stream_generate
from .layers import checked_token_ids
from .loading import load as _zoo_load
from .loading import resolve_model_dir
from .sample import greedy
from .tokenizer import Tokenizer, encode_prompt, load_tokenizer

__all__ = ["BatchResponse", "BatchStats", "GenerationResponse", "batch_generate", "generate",
           "load", "stream_generate"]

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
"""``tokenizer_config`` keys naming a special token (which must be in the vocabulary)."""
TOKENIZER_CONFIG_KEYS = (*SPECIAL_TOKEN_KEYS, "chat_template", "trust_remote_code")


# -- load ------------------------------------------------------------------------------------------


def load(path_or_hf_repo: str | Path, tokenizer_config: dict[str, Any] | None = None,
         model_config: dict[str, Any] | None = None, adapter_path: str | None = None,
         lazy: bool = False, return_config: bool = False, revision: str | None = None,
         trust_remote_code: bool = False) -> tuple:
    """mlx-lm's ``load``: the model and tokenizer of a local directory, Hub repo or
    ``demo:NAME``, as ``(model, tokenizer)``, or ``(model, tokenizer, config)`` (config.json as
    a dict) with ``return_config``.

    ``tokenizer_config`` sets the tokenizer's special tokens (``eos_token``, ``bos_token``,
    ``unk_token``, ``pad_token``: tokens of the vocabulary; an ``eos_token`` also ends
    generation) and ``chat_template``; ``trust_remote_code`` (the argument or the key) is
    accepted and changes nothing: no checkpoint code runs, and a tokenizer that needs some is a
    :class:`~mlx_zoo.TokenizerError`. Any other key, ``model_config`` and ``adapter_path`` are
    refused (:class:`~mlx_zoo.TokenizerError`, :class:`~mlx_zoo.ConfigError`) before anything
    is loaded: mlx-zoo has no counterpart and does not ignore them."""
    _check_tokenizer_config(tokenizer_config or {})
    model_dir = resolve_model_dir(path_or_hf_repo, revision)
    if model_config:
        raise ConfigError(model_dir / "config.json", f"mlx_zoo.lm.load's model_config="
                          f"{model_config!r} is not supported: mlx-zoo builds the model from "
                          "config.json as stored (edit it, or pass model_config=None)",
                          key=next(iter(model_config)))
    if adapter_path is not None:
        raise ConfigError(adapter_path, "mlx_zoo.lm.load's adapter_path is not supported: "
                          "mlx-zoo loads no LoRA adapters (fuse them into the weights first)")
    model, _ = _zoo_load(model_dir, lazy=lazy)
    tokenizer = load_tokenizer(model_dir)
    _apply_tokenizer_config(tokenizer, tokenizer_config or {})
    if return_config:
        return model, tokenizer, read_config(model_dir)
    return model, tokenizer


def _check_tokenizer_config(options: dict[str, Any]) -> None:
    """:class:`TokenizerError` for a ``tokenizer_config`` key mlx-zoo cannot set, or a value
    that is not a non-empty string (``trust_remote_code`` aside)."""
    if not isinstance(options, dict):
        raise TokenizerError(f"tokenizer_config: expected a dict, got {type(options).__name__}")
    for key, value in options.items():
        if key not in TOKENIZER_CONFIG_KEYS:
            raise TokenizerError(f"tokenizer_config, key {key!r}: not supported by mlx-zoo "
                                 f"(expected one of {', '.join(TOKENIZER_CONFIG_KEYS)})")
        if key != "trust_remote_code" and (not isinstance(value, str) or not value):
            raise TokenizerError(f"tokenizer_config, key {key!r}: expected a non-empty string, "
                                 f"got {value!r}")


def _apply_tokenizer_config(tokenizer: Tokenizer, options: dict[str, Any]) -> None:
    """Set what mlx-lm's ``tokenizer_config`` sets, where mlx-zoo can (checked by
    :func:`_check_tokenizer_config`): special tokens of the vocabulary and the chat template."""
    hf = tokenizer.hf
    for key, value in options.items():
        if key == "trust_remote_code":
            continue  # no checkpoint code runs, whatever it says
        if key == "chat_template":
            hf.chat_template = value
            continue
        token_id = hf.convert_tokens_to_ids(value)
        if not isinstance(token_id, int) or hf.convert_ids_to_tokens(token_id) != value:
            raise TokenizerError(f"tokenizer_config, key {key!r}: {value!r} is not a token of "
                                 "this tokenizer's vocabulary")
        setattr(hf, key, value)
        if key == "eos_token":
            tokenizer.eos_token_ids = tokenizer.eos_token_ids | {token_id}


# -- generate, stream_generate ---------------------------------------------------------------------


@dataclass
class GenerationResponse(ZooGenerationResponse):
    """mlx-lm's ``GenerationResponse``: mlx-zoo's (``text``, ``token``, ``logprobs``,
    ``prompt_tokens``, ``prompt_tps``, ``generation_tokens``, ``generation_tps``,
    ``peak_memory``, ``finish_reason``) with ``from_draft`` (always False: no speculative
    decoding)."""

    from_draft: bool = False


def _as_tokenizer(tokenizer: Any) -> Any:
    """An mlx-zoo tokenizer as it is; a transformers tokenizer (what mlx-lm also accepts)
    wrapped in :class:`~mlx_zoo.Tokenizer`."""
    if isinstance(tokenizer, Tokenizer) or callable(getattr(tokenizer, "detokenizer", None)):
        return tokenizer
    if callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
        return Tokenizer(tokenizer)
    raise GenerationArgumentError(
        f"the tokenizer must be an mlx_zoo.Tokenizer (from mlx_zoo.lm.load) or a transformers "
        f"tokenizer, got {type(tokenizer).__name__}")


def _refuse(option: str, value: Any, why: str) -> None:
    if value is not None:
        raise GenerationArgumentError(f"{option}={value!r} is not supported by mlx-zoo: {why}")


def stream_generate(model: nn.Module, tokenizer: Any, prompt: str | mx.array | list[int],
                    max_tokens: int = 256, draft_model: nn.Module | None = None,
                    stream: Any = None, **kwargs: Any) -> Iterator[GenerationResponse]:
    """mlx-lm's ``stream_generate``: one :class:`GenerationResponse` per generated token after
    ``prompt`` (text -- given the BOS unless it starts with it -- or token ids).

    ``kwargs`` are mlx-lm's ``generate_step`` options: ``sampler``, ``logits_processors``,
    ``prompt_cache``, ``prefill_step_size``, ``kv_bits``, ``kv_group_size``,
    ``quantized_kv_start``, ``prompt_progress_callback`` (called with ``(0, n)`` before the
    prompt is processed and ``(n, n)`` after), and mlx-zoo's (``temp``, ``top_p``, ``stop``,
    ...: :func:`mlx_zoo.stream_generate`). ``draft_model``, ``max_kv_size``,
    ``input_embeddings`` and ``stream`` are refused (:class:`~mlx_zoo.GenerationArgumentError`).
    """
    _refuse("draft_model", draft_model, "no speculative decoding")
    _refuse("stream", stream, "generation runs on MLX's default stream")
    _refuse("max_kv_size", kwargs.pop("max_kv_size", None),
            "no size-bounded rotating cache for full-attention models")
    _refuse("input_embeddings", kwargs.pop("input_embeddings", None), "token ids or text only")
    kwargs.pop("num_draft_tokens", None)  # meaningless without a draft model, as in mlx-lm
    progress: Callable[[int, int], None] | None = kwargs.pop("prompt_progress_callback", None)
    tokenizer = _as_tokenizer(tokenizer)
    if isinstance(prompt, str):
        prompt = encode_prompt(tokenizer, prompt)
    if progress is not None and prompt is not None:
        progress(0, len(prompt))
    names = [f.name for f in fields(ZooGenerationResponse)]
    for n, response in enumerate(zoo_stream_generate(
            model, tokenizer, prompt, max_tokens=max_tokens, **kwargs)):
        if n == 0 and progress is not None:
            progress(response.prompt_tokens, response.prompt_tokens)
        yield GenerationResponse(**{name: getattr(response, name) for name in names})


def generate(model: nn.Module, tokenizer: Any, prompt: str | list[int], verbose: bool = False,
             **kwargs: Any) -> str:
    """mlx-lm's ``generate``: the text generated after ``prompt`` (a ``str``). ``verbose``
    prints it as it comes between two ``==========`` lines, then the speed and peak memory
    (for an empty answer mlx-lm returns None after its notice; this returns ``""``).
    ``kwargs``: :func:`stream_generate`'s."""
    if verbose:
        print("=" * 10)
    pieces: list[str] = []
    response = None
    for response in stream_generate(model, tokenizer, prompt, **kwargs):
        if verbose:
            print(response.text, end="", flush=True)
        pieces.append(response.text)
    text = "".join(pieces)
    if verbose and response is not None:
        print()
        print("=" * 10)
        if not text:
            print("No text generated for this prompt")
        for line in format_stats(response):
            print(line)
    return text


# -- batch_generate --------------------------------------------------------------------------------


@dataclass(kw_only=True)
class BatchStats:
    """mlx-lm's ``BatchStats``: what a batch generation did (times in seconds, memory in GB)."""

    prompt_tokens: int = 0
    prompt_time: float = 0.0
    generation_tokens: int = 0
    generation_steps: int = 0
    decode_time: float = 0.0
    wall_time: float = 0.0
    peak_memory: float = 0.0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_time if self.prompt_time > 0 else 0.0

    @property
    def generation_time(self) -> float:
        return max(0.0, self.wall_time - self.prompt_time)

    @property
    def generation_tps(self) -> float:
        time_ = self.generation_time
        return self.generation_tokens / time_ if time_ > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.generation_tokens / self.decode_time if self.decode_time > 0 else 0.0


@dataclass
class BatchResponse:
    """mlx-lm's ``BatchResponse``: the texts in prompt order, the :class:`BatchStats`, and,
    when asked for, each sequence's prompt cache, generated ids and their logprobs."""

    texts: list[str]
    stats: BatchStats
    caches: list[list[Any]] | None
    token_ids: list[list[int]] | None = None
    logprobs: list[list[float]] | None = None


@dataclass
class _Row:
    """One sequence of a batch: its prompt's last id (fed first), limit and output so far."""

    index: int
    next_id: int
    max_tokens: int
    history: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    cache: list[Any] | None = None


def batch_generate(model: nn.Module, tokenizer: Any, prompts: list[list[int]],
                   prompt_caches: list[list[Any]] | None = None,
                   max_tokens: int | list[int] = 128, verbose: bool = False,
                   return_prompt_caches: bool = False, return_token_ids: bool = False,
                   return_logprobs: bool = False, **kwargs: Any) -> BatchResponse:
    """mlx-lm's ``batch_generate``: continuations of ``prompts`` (token ids; text is encoded
    as :func:`stream_generate` does) decoded together, one model call per step for every
    unfinished sequence (:class:`~mlx_zoo.compat.BatchCache`). ``max_tokens`` may be one per
    prompt; ``prompt_caches`` (one cache list per prompt, already holding a prefix) are not
    changed. A sequence ends on an EOS id (not part of its text) or after its ``max_tokens``.

    ``kwargs`` are mlx-lm's ``BatchGenerator`` options: ``sampler``, ``logits_processors``,
    ``prefill_step_size``, ``completion_batch_size`` (sequences decoded together at most),
    ``prefill_batch_size`` (accepted; prompts are prefilled one by one); ``max_kv_size`` and
    ``stream`` are refused."""
    options = _batch_options(kwargs)
    tokenizer = _as_tokenizer(tokenizer)
    limits = _per_prompt(max_tokens, len(prompts), "max_tokens")
    for limit in limits:
        check_generation_args(limit, 1)
    caches_in = _per_prompt(prompt_caches, len(prompts), "prompt_caches")
    vocab = model_vocab_size(model)
    ids = [as_prompt_array(encode_prompt(tokenizer, p) if isinstance(p, str) else p,
                           vocab).tolist() for p in prompts]
    stats = BatchStats()
    mx.reset_peak_memory()
    start = time.perf_counter()
    rows: list[_Row] = []
    width = options["completion_batch_size"]
    for first in range(0, len(ids), width):
        group = [_prefill(model, i, ids[i], caches_in[i], limits[i], options, stats)
                 for i in range(first, min(first + width, len(ids)))]
        _decode(model, group, frozenset(tokenizer.eos_token_ids), options,
                return_prompt_caches, stats)
        rows.extend(group)
        if verbose:
            print(f"[batch_generate] Finished processing {len(rows)}/{len(ids)} ...", end="\r")
    stats.wall_time = time.perf_counter() - start
    stats.peak_memory = mx.get_peak_memory() / BYTES_PER_GB
    if verbose:
        print(f"[batch_generate] Finished processing {len(rows)}/{len(ids)}")
        print(f"[batch_generate] Prompt: {stats.prompt_tokens} tokens, "
              f"{stats.prompt_tps:.3f} tokens-per-sec")
        print(f"[batch_generate] Generation: {stats.generation_tokens} tokens, "
              f"{stats.generation_tps:.3f} tokens-per-sec")
        print(f"[batch_generate] Peak memory: {stats.peak_memory:.3f} GB")
    return BatchResponse(
        texts=[tokenizer.decode(r.tokens) for r in rows], stats=stats,
        caches=[r.cache for r in rows] if return_prompt_caches else None,
        token_ids=[r.tokens for r in rows] if return_token_ids else None,
        logprobs=[r.logprobs for r in rows] if return_logprobs else None)


def _batch_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """mlx-lm's ``BatchGenerator`` keywords, checked; ``TypeError`` for unknown ones."""
    _refuse("max_kv_size", kwargs.pop("max_kv_size", None),
            "no size-bounded rotating cache for full-attention models")
    _refuse("stream", kwargs.pop("stream", None), "generation runs on MLX's default stream")
    options = {"sampler": kwargs.pop("sampler", None) or greedy,
               "logits_processors": list(kwargs.pop("logits_processors", None) or ()),
               "prefill_step_size": kwargs.pop("prefill_step_size", DEFAULT_PREFILL_STEP_SIZE),
               "completion_batch_size": kwargs.pop("completion_batch_size", 32),
               "prefill_batch_size": kwargs.pop("prefill_batch_size", 8)}
    if kwargs:
        raise TypeError(f"batch_generate() got unexpected keyword arguments {sorted(kwargs)}")
    for name in ("prefill_step_size", "completion_batch_size", "prefill_batch_size"):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GenerationArgumentError(f"{name} must be an integer >= 1, got {value!r}")
    return options


def _per_prompt(value: Any, n: int, name: str) -> list[Any]:
    """``value`` once per prompt: a list (of ``n``) is taken as it is, anything else (one
    ``max_tokens``, no ``prompt_caches``) repeated."""
    if not isinstance(value, (list, tuple)):
        return [value] * n
    if len(value) != n:
        raise GenerationArgumentError(f"{name}: {len(value)} entries for {n} prompts")
    return list(value)


def _prefill(model: nn.Module, index: int, ids: list[int], cache: list | None, limit: int,
             options: dict[str, Any], stats: BatchStats) -> _Row:
    """A row whose own cache (a copy of ``cache``, or a fresh one) holds every prompt id but
    the last, processed in chunks of ``prefill_step_size``."""
    tic = time.perf_counter()
    cache = copy.deepcopy(cache) if cache is not None else make_prompt_cache(model)
    step = options["prefill_step_size"]
    with checked_token_ids():  # checked by as_prompt_array
        for start in range(0, len(ids) - 1, step):
            model(mx.array(ids[start:min(start + step, len(ids) - 1)])[None], cache=cache)
            mx.eval([c.state for c in cache])
    stats.prompt_tokens += len(ids)
    stats.prompt_time += time.perf_counter() - tic
    return _Row(index, ids[-1], limit, list(ids), cache=cache)


def _decode(model: nn.Module, rows: list[_Row], eos: frozenset[int], options: dict[str, Any],
            keep_caches: bool, stats: BatchStats) -> None:
    """Decode ``rows`` together until each ends (EOS or its limit): one batched model call per
    step over their caches merged into :class:`BatchCache` per layer."""
    batch = [BatchCache.merge([r.cache[layer] for r in rows])
             for layer in range(len(rows[0].cache))]
    share_memo(batch)
    live = list(rows)
    first = True
    while live:
        tic = time.perf_counter()
        inputs = mx.array([[r.next_id] for r in live], dtype=mx.uint32)
        with checked_token_ids():
            logits = model(inputs, cache=batch)[:, -1, :]
        logits = _process(logits, live, options["logits_processors"])
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        drawn = options["sampler"](logprobs).reshape(-1)
        picked = mx.take_along_axis(logprobs, drawn[:, None], axis=-1)[:, 0]
        mx.eval(drawn, picked)
        if first:  # the last prompt token went through here: prompt work, not decoding
            stats.prompt_time += time.perf_counter() - tic
            first = False
        else:
            stats.decode_time += time.perf_counter() - tic
        stats.generation_steps += 1
        keep = []
        for i, (row, token, lp) in enumerate(zip(live, drawn.tolist(), picked.tolist(),
                                                 strict=True)):
            stats.generation_tokens += 1
            done = token in eos
            if not done:
                row.tokens.append(token)
                row.logprobs.append(lp)
                row.history.append(token)
                row.next_id = token
            if done or len(row.tokens) >= row.max_tokens:
                if keep_caches:
                    row.cache = [layer.extract(i) for layer in batch]
            else:
                keep.append(i)
        if len(keep) != len(live):
            for layer in batch:
                layer.filter(keep)
            live = [live[i] for i in keep]
    for row in rows:
        if not keep_caches:
            row.cache = None


def _process(logits: mx.array, rows: list[_Row], processors: Sequence[Callable]) -> mx.array:
    """Each row's logits through the logits processors, with that row's own history."""
    if not processors:
        return logits
    out = []
    for i, row in enumerate(rows):
        row_logits = logits[i:i + 1]
        history = mx.array(row.history, dtype=mx.uint32)
        for process in processors:
            row_logits = process(history, row_logits)
        out.append(row_logits)
    return mx.concatenate(out, axis=0)

