"""Samplers and logits processors against hand-computed expectations."""

import math

import mlx.core as mx
import numpy as np
import pytest

import mlx_zoo
from mlx_zoo.sample import (
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    make_logits_processors,
    make_repetition_penalty,
    make_sampler,
)

PROBS = [0.5, 0.25, 0.15, 0.1]  # a distribution with known cumulative sums 0.5, 0.75, 0.9, 1


def logprobs(probs=PROBS):
    return mx.log(mx.array([probs]))


def kept(filtered: mx.array) -> list[int]:
    """Indices whose log-probability survived the filter."""
    return [i for i, v in enumerate(np.array(filtered)[0]) if np.isfinite(v)]


def test_top_k_keeps_the_k_likeliest():
    assert kept(apply_top_k(logprobs(), 1)) == [0]
    assert kept(apply_top_k(logprobs(), 3)) == [0, 1, 2]
    assert kept(apply_top_k(logprobs([0.1, 0.15, 0.5, 0.25]), 2)) == [2, 3]
    # surviving values are unchanged
    np.testing.assert_allclose(np.array(apply_top_k(logprobs(), 2))[0, :2], np.log(PROBS[:2]),
                               rtol=1e-6)


def test_top_k_off_or_larger_than_vocab_is_identity():
    for k in (0, 4, 10):
        assert kept(apply_top_k(logprobs(), k)) == [0, 1, 2, 3]


@pytest.mark.parametrize("p, expected", [
    (0.5, [0]),            # mass before token 1 is 0.5: not below 0.5, dropped
    (0.6, [0, 1]),         # 0.5 < 0.6: token 1 kept; 0.75 >= 0.6: token 2 dropped
    (0.75, [0, 1]),
    (0.8, [0, 1, 2]),
    (0.95, [0, 1, 2, 3]),  # 0.9 < 0.95
    (0.1, [0]),            # the likeliest always survives
    (1.0, [0, 1, 2, 3]),
])
def test_top_p_keeps_the_smallest_nucleus(p, expected):
    assert kept(apply_top_p(logprobs(), p)) == expected


def test_top_p_does_not_depend_on_the_order_of_the_vocabulary():
    shuffled = [0.15, 0.1, 0.5, 0.25]  # token 2 is the likeliest, then 3
    assert kept(apply_top_p(logprobs(shuffled), 0.6)) == [2, 3]


@pytest.mark.parametrize("min_p, expected", [
    (0.0, [0, 1, 2, 3]),
    (0.2, [0, 1, 2, 3]),   # threshold 0.1: 0.1 >= 0.1 kept
    (0.25, [0, 1, 2]),     # threshold 0.125
    (0.5, [0, 1]),         # threshold 0.25: 0.25 kept
    (0.6, [0]),            # threshold 0.3
    (1.0, [0]),
])
def test_min_p_scales_with_the_top_probability(min_p, expected):
    assert kept(apply_min_p(logprobs(), min_p)) == expected


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = mx.array([[2.0, -1.0, 3.0, 0.5]])
    out = apply_repetition_penalty(logits, mx.array([0, 1, 1]), 2.0)  # 1 counted once
    np.testing.assert_allclose(np.array(out), [[1.0, -2.0, 3.0, 0.5]])
    np.testing.assert_allclose(np.array(logits), [[2.0, -1.0, 3.0, 0.5]])  # input untouched


def test_repetition_penalty_only_looks_at_its_context_window():
    process = make_repetition_penalty(2.0, context_size=2)
    out = process(mx.array([0, 2, 3]), mx.array([[2.0, 2.0, 2.0, 2.0]]))
    np.testing.assert_allclose(np.array(out), [[2.0, 2.0, 1.0, 1.0]])


def test_make_logits_processors_is_empty_when_disabled():
    assert make_logits_processors() == []
    assert make_logits_processors(repetition_penalty=1.0) == []
    assert len(make_logits_processors(repetition_penalty=1.3)) == 1


def test_greedy_sampler_is_argmax():
    sampler = make_sampler(temp=0.0, top_p=0.5, top_k=1)
    assert sampler(logprobs([0.1, 0.6, 0.3])).item() == 1


def test_sampling_follows_the_filtered_distribution():
    """2000 draws with top-k 2 at temperature 1: only tokens 0 and 1, in ratio ~ 2:1."""
    mx.random.seed(0)
    sampler = make_sampler(temp=1.0, top_k=2)
    draws = np.array(sampler(mx.broadcast_to(logprobs(), (2000, 4))))
    counts = np.bincount(draws, minlength=4)
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / 2000 - 2 / 3) < 0.05


def test_temperature_sharpens_before_the_filters():
    """At temp 0.5, p ~ p**2 renormalised: 0.25/0.3625 + ... token 0 has 0.69, so top-p 0.6
    keeps only it (at temp 1 it would keep two)."""
    mx.random.seed(0)
    sampler = make_sampler(temp=0.5, top_p=0.6)
    draws = np.array(sampler(mx.broadcast_to(logprobs(), (200, 4))))
    assert set(draws.tolist()) == {0}


def test_seeded_sampling_is_reproducible():
    sampler = make_sampler(temp=1.0)
    batch = mx.broadcast_to(logprobs(), (64, 4))
    mx.random.seed(7)
    first = np.array(sampler(batch))
    mx.random.seed(7)
    second = np.array(sampler(batch))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("kwargs, name", [
    ({"temp": -0.1}, "temp"),
    ({"temp": math.nan}, "temp"),
    ({"temp": "hot"}, "temp"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"min_p": -0.1}, "min_p"),
    ({"min_p": 1.1}, "min_p"),
])
def test_invalid_sampling_arguments_are_named(kwargs, name):
    with pytest.raises(mlx_zoo.GenerationArgumentError, match=name):
        make_sampler(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"repetition_penalty": 1.2, "repetition_context_size": 0}, "repetition_context_size"),
])
def test_invalid_processor_arguments_are_named(kwargs, name):
    with pytest.raises(mlx_zoo.GenerationArgumentError, match=name):
        make_logits_processors(**kwargs)


def test_generation_argument_error_is_a_value_error():
    with pytest.raises(ValueError):
        make_sampler(temp=-1)
