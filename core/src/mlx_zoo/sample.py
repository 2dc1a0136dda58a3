"""Samplers and logits processors: how the next token is chosen from the model's logits.

A **sampler** maps log-probabilities ``(batch, vocab)`` to token ids ``(batch,)``; a **logits
processor** maps ``(tokens so far, logits)`` to new logits before sampling (the repetition
penalty). :func:`make_sampler` and :func:`make_logits_processors` build them from the usual
arguments and reject invalid ones with a :class:`~mlx_zoo.errors.GenerationArgumentError`.

Order of the sampling steps (the one of Hugging Face's logits warpers)::

    logprobs --(/ temp)--> log_softmax --> top-k --> top-p --> min-p --> categorical

Each filter sets the log-probability of the tokens it removes to ``-inf`` and never removes the
most likely token, so at least one token always survives. ``temp == 0`` is greedy decoding
(argmax) and ignores the filters.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mlx.core as mx

from .errors import GenerationArgumentError

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]

DEFAULT_REPETITION_CONTEXT = 20
"""Tokens looked back at by the repetition penalty unless told otherwise (as in mlx-lm)."""


# -- validation --------------------------------------------------------------------------------


def _check_number(name: str, value, *, lower: float | None = None, lower_open: bool = False,
                  upper: float | None = None, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GenerationArgumentError(f"{name} must be a finite number ({expected}), got {value!r}")
    too_low = lower is not None and (value <= lower if lower_open else value < lower)
    too_high = upper is not None and value > upper
    if too_low or too_high:
        raise GenerationArgumentError(f"{name} must be {expected}, got {value!r}")


def _check_int(name: str, value, *, minimum: int, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GenerationArgumentError(f"{name} must be {expected}, got {value!r}")


def check_sampling_args(temp: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                        min_p: float = 0.0) -> None:
    """Raise :class:`GenerationArgumentError` naming the first invalid argument."""
    _check_number("temp", temp, lower=0.0, expected=">= 0 (0 means greedy)")
    _check_number("top_p", top_p, lower=0.0, lower_open=True, upper=1.0,
                  expected="in (0, 1] (1 disables it)")
    _check_int("top_k", top_k, minimum=0, expected="an integer >= 0 (0 disables it)")
    _check_number("min_p", min_p, lower=0.0, upper=1.0, expected="in [0, 1] (0 disables it)")


# -- filters on log-probabilities ----------------------------------------------------------------


def apply_top_k(logprobs: mx.array, k: int) -> mx.array:
    """Keep the ``k`` most likely tokens (ties at the boundary: an arbitrary ``k`` of them)."""
    vocab = logprobs.shape[-1]
    if k <= 0 or k >= vocab:
        return logprobs
    # indices of the vocab - k least likely tokens
    dropped = mx.argpartition(logprobs, kth=vocab - k - 1, axis=-1)[..., : vocab - k]
    return mx.put_along_axis(logprobs, dropped, mx.array(-mx.inf, logprobs.dtype), axis=-1)


def apply_top_p(logprobs: mx.array, p: float) -> mx.array:
    """Nucleus sampling (Holtzman et al. 2019, https://arxiv.org/abs/1904.09751): keep the most
    likely tokens until their probabilities add up to ``p``. A token survives when the total
    probability of the tokens more likely than it is still below ``p``; so the most likely token
    always does. ``logprobs`` must be normalised (log-softmax)."""
    if p >= 1.0:
        return logprobs
    order = mx.argsort(-logprobs, axis=-1)  # most likely first
    sorted_probs = mx.exp(mx.take_along_axis(logprobs, order, axis=-1))
    mass_before = mx.cumsum(sorted_probs, axis=-1) - sorted_probs
    sorted_keep = mass_before < p
    keep = mx.put_along_axis(mx.zeros(logprobs.shape, mx.bool_), order, sorted_keep, axis=-1)
    return mx.where(keep, logprobs, -mx.inf)


def apply_min_p(logprobs: mx.array, min_p: float) -> mx.array:
    """Min-p sampling (Nguyen et al. 2024, https://arxiv.org/abs/2407.01082): drop tokens whose
    probability is below ``min_p`` times the probability of the most likely token, i.e. whose
    log-probability is below ``max + log(min_p)``."""
    if min_p <= 0.0:
        return logprobs
    threshold = logprobs.max(axis=-1, keepdims=True) + math.log(min_p)
    return mx.where(logprobs >= threshold, logprobs, -mx.inf)


def greedy(logprobs: mx.array) -> mx.array:
    """The most likely token."""
    return mx.argmax(logprobs, axis=-1)


def make_sampler(temp: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                 min_p: float = 0.0) -> Sampler:
    """A sampler for the given settings: greedy when ``temp == 0``, otherwise a draw from
    ``softmax(logprobs / temp)`` restricted by the enabled filters (see the module docstring).
    Draws use MLX's global random state: ``mx.random.seed`` (or ``seed=`` of
    :func:`mlx_zoo.generate`) makes them reproducible."""
    check_sampling_args(temp, top_p, top_k, min_p)
    if temp == 0:
        return greedy
    inv_temp = 1.0 / temp

    def sample(logprobs: mx.array) -> mx.array:
        scaled = logprobs * inv_temp
        scaled = scaled - mx.logsumexp(scaled, axis=-1, keepdims=True)
        if top_k > 0:
            scaled = apply_top_k(scaled, top_k)
        if top_p < 1.0:
            scaled = apply_top_p(scaled, top_p)
        if min_p > 0.0:
            scaled = apply_min_p(scaled, min_p)
        return mx.random.categorical(scaled, axis=-1)

    return sample


# -- logits processors ---------------------------------------------------------------------------


def apply_repetition_penalty(logits: mx.array, tokens: mx.array, penalty: float) -> mx.array:
    """CTRL's repetition penalty (Keskar et al. 2019, https://arxiv.org/abs/1909.05858): the
    logit of every token in ``tokens`` is divided by ``penalty`` if positive and multiplied by it
    if negative, so a penalty > 1 always makes those tokens less likely. ``logits`` is
    ``(batch, vocab)``, ``tokens`` the 1-D ids to penalise (repeats count once)."""
    if tokens.size == 0:
        return logits
    selected = logits[:, tokens]
    penalised = mx.where(selected > 0, selected / penalty, selected * penalty)
    logits = mx.array(logits)  # a copy: the caller's array stays untouched
    logits[:, tokens] = penalised
    return logits


def make_repetition_penalty(penalty: float,
                            context_size: int = DEFAULT_REPETITION_CONTEXT) -> LogitsProcessor:
    """A logits processor penalising the last ``context_size`` tokens (prompt included)."""
    _check_number("repetition_penalty", penalty, lower=0.0, lower_open=True,
                  expected="> 0 (1 disables it; > 1 discourages repeats)")
    _check_int("repetition_context_size", context_size, minimum=1, expected="an integer >= 1")

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        return apply_repetition_penalty(logits, tokens[-context_size:], penalty)

    return process


def make_logits_processors(repetition_penalty: float | None = None,
                           repetition_context_size: int = DEFAULT_REPETITION_CONTEXT,
                           ) -> list[LogitsProcessor]:
    """The logits processors for the given settings (empty when none is enabled)."""
    processors: list[LogitsProcessor] = []
    if repetition_penalty is not None and repetition_penalty != 1.0:
        processors.append(make_repetition_penalty(repetition_penalty, repetition_context_size))
    return processors
