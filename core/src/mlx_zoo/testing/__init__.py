"""Test kit for plugin authors: a conformance suite and the helpers it is made of.

A plugin's tests subclass :class:`PluginConformance` once per model_type::

    from mlx_zoo.testing import PluginConformance

    class TestLlama(PluginConformance):
        model_type = "llama"
        reference = "LlamaForCausalLM"          # transformers' class, or any callable
        base_config = dict(vocab_size=320, hidden_size=64, intermediate_size=96,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        switches = {"tied": dict(tie_word_embeddings=True)}

and pytest generates the checks (see the class): discovery through the entry point, parity with
the reference over every switch on sharpened weights with negative controls, cached decoding
fused and unfused, save/quantize/copy/thread/prompt-cache round trips, a two-process shard, the
CLI, and config errors that name the key.

Helpers (import from here): :func:`relative_error`, :func:`sharpen_weights`,
:func:`write_tiny_tokenizer`, :func:`write_tiny_checkpoint`, :func:`tiny_weights`,
:func:`isolated_registry` (a context manager, and a pytest fixture of that name through the
``mlx_zoo`` pytest plugin this distribution registers), :func:`transformers_reference`,
:func:`transformers_model`, :func:`torch_logits`, :func:`sharpen_torch_model` (a torch
reference written as the checkpoint), :func:`stacked_experts_reference` (a transformers MoE class
fed a checkpoint whose experts are stacked), :func:`logits`, :func:`incremental_logits`,
:func:`decode_steps`, and the constants :data:`TOLERANCE`, :data:`TOKENIZER_VOCAB`, :data:`PLAIN`.

Importing this package is cheap (nothing below is imported until used), so the pytest plugin
costs other projects' test runs nothing but ``import mlx_zoo``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "PluginConformance": "conformance", "TinyCase": "conformance", "decode_steps": "conformance",
    "incremental_logits": "conformance", "logits": "conformance",
    "BROKEN": "helpers", "PLAIN": "helpers", "SPECIAL_TOKENS": "helpers",
    "TOKENIZER_VOCAB": "helpers", "TOLERANCE": "helpers", "WEIGHT_STD": "helpers",
    "isolated_registry": "helpers", "relative_error": "helpers", "sharpen_weights": "helpers",
    "tiny_weights": "helpers", "write_tiny_checkpoint": "helpers",
    "write_tiny_tokenizer": "helpers",
    "Reference": "reference", "sharpen_torch_model": "reference", "torch_logits": "reference",
    "transformers_model": "reference",
    "transformers_reference": "reference", "stacked_experts_reference": "reference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
