"""mlx_zoo.compiled: the compiled decode step on a fixed-shape cache computes what the plain
per-token path computes, leaves the plain caches as if they had decoded, and steps aside for
models it cannot serve (chunked caches, length-dependent RoPE)."""

from __future__ import annotations

import importlib
from pathlib import Path

import mlx.core as mx
import pytest

import mlx_zoo
from mlx_zoo import registry
from mlx_zoo.compiled import StaticKVCache, compiled_decoder
from mlx_zoo.testing import relative_error as rel_err

TOL = 1e-4
PROMPT = [3, 17, 42, 8, 99, 5, 61]
STEPS = 12

TINY = {
    "qwen2": {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2,
              "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 128, "rope_theta": 10000.0, "tie_word_embeddings": False},
    "hunyuan_v1_dense": {"model_type": "hunyuan_v1_dense", "hidden_size": 64,
                         "num_hidden_layers": 2, "intermediate_size": 96,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                         "vocab_size": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                         "use_qk_norm": True, "tie_word_embeddings": True,
                         "rope_scaling": {"type": "dynamic", "alpha": 1000.0, "factor": 1.0}},
}
ATTENTION_SCALE = 4.0  # sharper attention than the random init gives, so that masks matter


def installed(model_type: str) -> bool:
    return any(r.model_type == model_type for r in mlx_zoo.list_plugins())


def tiny_checkpoint(tmp_path: Path, config: dict) -> Path:
    """A random checkpoint of ``config``, written by mlx_zoo.save (read back by mlx_zoo.load)."""
    arch = registry.resolve(config["model_type"])
    mx.random.seed(0)
    model = arch.model_class(arch.config_class.from_dict(dict(config), tmp_path / "config.json"))
    for name, layer in model.named_modules():
        if name.endswith(("q_proj", "k_proj")):
            layer.weight = layer.weight * ATTENTION_SCALE
    return mlx_zoo.save(model, dict(config), tmp_path / config["model_type"])


def plain_decode(model, steps: int):
    """Greedy decoding one token at a time through the model's own caches."""
    cache = mlx_zoo.make_prompt_cache(model)
    logits = model(mx.array([PROMPT]), cache=cache)[:, -1, :]
    out = []
    for _ in range(steps):
        y = mx.argmax(logits, axis=-1)
        out.append(logits)
        logits = model(y[None], cache=cache)[:, -1, :]
    return out, cache


def compiled_decode(model, steps: int):
    cache = mlx_zoo.make_prompt_cache(model)
    logits = model(mx.array([PROMPT]), cache=cache)[:, -1, :]
    decoder = compiled_decoder(model, cache, steps)
    assert decoder is not None
    out = []
    for _ in range(steps):
        y = mx.argmax(logits, axis=-1)
        out.append(logits)
        logits = decoder.step(y.astype(mx.uint32))
    decoder.finish()
    return out, cache


@pytest.fixture(params=sorted(TINY))
def tiny_model(request, tmp_path):
    if not installed(request.param):
        pytest.skip(f"no plugin for {request.param}")
    model, _ = mlx_zoo.load(tiny_checkpoint(tmp_path, TINY[request.param]))
    return model


def test_compiled_steps_match_plain_steps(tiny_model):
    plain, plain_cache = plain_decode(tiny_model, STEPS)
    compiled, compiled_cache = compiled_decode(tiny_model, STEPS)
    for step, (a, b) in enumerate(zip(plain, compiled, strict=True)):
        assert rel_err(b, a) < TOL, step
    # Written back: the plain caches now continue as if they had decoded every step.
    assert compiled_cache[0].offset == plain_cache[0].offset == len(PROMPT) + STEPS
    y = mx.array([[7]])
    assert rel_err(tiny_model(y, cache=compiled_cache), tiny_model(y, cache=plain_cache)) < TOL


def test_unwritten_positions_must_be_masked(tiny_model, monkeypatch):
    """Negative control: without the mask the zero keys of the free buffer are attended to."""
    plain, _ = plain_decode(tiny_model, 3)
    monkeypatch.setattr(StaticKVCache, "make_mask", lambda self, n: None)
    unmasked, _ = compiled_decode(tiny_model, 3)
    assert rel_err(unmasked[-1], plain[-1]) > 100 * TOL


def test_static_cache_grows_nothing_and_masks_future():
    keys = mx.random.normal((1, 2, 5, 8))
    cache = StaticKVCache(keys, keys, length=5, capacity=256)
    k, _ = cache.update_and_fetch(mx.ones((1, 2, 1, 8)), mx.ones((1, 2, 1, 8)))
    assert k.shape == (1, 2, 256, 8) and cache.offset.item() == 6
    assert mx.array_equal(k[..., :5, :], keys) and mx.all(k[..., 5, :] == 1).item()
    mask = cache.make_mask(2)  # queries at positions 6 and 7
    assert mask.shape == (2, 256)
    assert mask[0, :7].all().item() and not mask[0, 7:].any().item()
    assert mask[1, :8].all().item() and not mask[1, 8:].any().item()


def test_steps_aside_for_length_dependent_rope(tmp_path):
    if not installed("qwen2"):
        pytest.skip("no plugin for qwen2")
    config = {**TINY["qwen2"], "max_position_embeddings": 64,
              "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    model, _ = mlx_zoo.load(tiny_checkpoint(tmp_path, config))
    cache = mlx_zoo.make_prompt_cache(model)
    model(mx.array([PROMPT]), cache=cache)
    offsets = [c.offset for c in cache]
    assert compiled_decoder(model, cache, 4) is None
    assert [c.offset for c in cache] == offsets  # untouched


def test_steps_aside_for_other_caches():
    from mlx_zoo import RotatingKVCache

    keys = mx.zeros((1, 1, 2, 4))
    rotating = RotatingKVCache(8)
    rotating.update_and_fetch(keys, keys)
    assert compiled_decoder(object(), [rotating], 4) is None
    assert compiled_decoder(object(), [mlx_zoo.KVCache()], 4) is None  # empty: nothing to copy


def generated(model, compile_step: bool, **kwargs):
    steps = mlx_zoo.generate_step(mx.array(PROMPT, dtype=mx.uint32), model, max_tokens=STEPS,
                                  compile_step=compile_step, **kwargs)
    tokens, logprobs = zip(*steps, strict=True)
    return list(tokens), logprobs


def test_generate_step_compiled_equals_plain(tiny_model, monkeypatch):
    generate_module = importlib.import_module("mlx_zoo.generate")  # the name is also a function
    made = []

    def spy(*args):
        made.append(compiled_decoder(*args))
        return made[-1]

    monkeypatch.setattr(generate_module, "compiled_decoder", spy)
    plain_tokens, plain_logprobs = generated(tiny_model, False)
    assert made == []
    tokens, logprobs = generated(tiny_model, True)
    assert len(made) == 1 and made[0] is not None  # the compiled path did run
    assert tokens == plain_tokens
    for a, b in zip(logprobs, plain_logprobs, strict=True):
        assert rel_err(a, b) < TOL


def test_generate_step_compiled_with_processors_and_kept_cache(tiny_model):
    """Logits processors see the same history; a kept prompt cache continues correctly."""
    processors = mlx_zoo.make_logits_processors(repetition_penalty=1.5)
    results = []
    for compile_step in (False, True):
        cache = mlx_zoo.make_prompt_cache(tiny_model)
        tokens, _ = generated(tiny_model, compile_step, logits_processors=processors,
                              prompt_cache=cache)
        more = list(mlx_zoo.generate_step(mx.array([tokens[-1]], dtype=mx.uint32), tiny_model,
                                          max_tokens=4, prompt_cache=cache, compile_step=False))
        results.append((tokens, [t for t, _ in more], cache[0].offset))
    assert results[0] == results[1]
