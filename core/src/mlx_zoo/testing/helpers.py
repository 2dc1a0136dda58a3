"""The public helpers of :mod:`mlx_zoo.testing` (see the package docstring)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TOLERANCE = 1e-4
"""Parity tolerance in float32: :func:`relative_error` against the reference must stay below."""

BROKEN = 100 * TOLERANCE
"""An error at least this large is a wrong model, not rounding (the negative controls)."""

WEIGHT_STD = 0.4
"""Standard deviation of :func:`sharpen_weights`' random weights."""

PLAIN = {"dtype": None, "dequantize": False, "fuse": False}
"""``mlx_zoo.load`` options that load a checkpoint exactly as stored (no auto dtype, no fusion)."""

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
"""The special tokens of :func:`write_tiny_tokenizer`, ids 256, 257, 258."""

TOKENIZER_VOCAB = 256 + len(SPECIAL_TOKENS)
"""Ids the tiny tokenizer produces: a tiny config's ``vocab_size`` must be at least this."""

CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
                 "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def relative_error(ours: Any, reference: Any) -> float:
    """``max |ours - reference| / max |reference|``, in float64: the measure of every parity check
    (arrays of one shape; MLX arrays, torch tensors and numpy arrays alike)."""
    import numpy as np

    ours, reference = _numpy(ours), _numpy(reference)
    if ours.shape != reference.shape:
        raise AssertionError(f"shapes differ: {ours.shape} vs reference {reference.shape}")
    scale = np.abs(reference).max()
    return float(np.abs(ours - reference).max() / scale) if scale else float(
        np.abs(ours).max())


def _numpy(a: Any):
    import numpy as np

    if hasattr(a, "detach"):  # torch
        a = a.detach().float().cpu().numpy()
    elif type(a).__module__.startswith("mlx"):
        import mlx.core as mx

        a = np.array(a.astype(mx.float32))
    return np.asarray(a, dtype=np.float64)


def sharpen_weights(weights: Mapping[str, Any], *, std: float = WEIGHT_STD,
                    seed: int = 0) -> dict[str, Any]:
    """Random weights that make a model's attention sharp: every tensor ~ N(0, ``std``), and
    the 1-D ``norm`` weights ~ 1 + N(0, ``std`` / 4) (norms stay near identity).

    ``weights`` maps names to arrays (``dict(mlx.utils.tree_flatten(model.parameters()))``; only
    the shapes and dtypes are read). Returns MLX arrays of the same names, shapes and dtypes,
    drawn from a numpy generator seeded by ``seed`` in sorted name order (reproducible).

    Why: with the small initialisation of transformers (std 0.02) attention logits are close to
    zero, every query attends almost uniformly, and position barely matters: a RoPE base 10x
    off moves a tiny Qwen2's logits (2 layers, width 64, 40 tokens) by only 4.3e-3, ~40x the
    1e-4 parity tolerance -- a subtler RoPE bug (one variant's factor, an offset) would pass.
    Sharpened (std 0.4), the attention logits are large and the same bug moves them by 1.55,
    ~15,000x the tolerance, while the correct model still matches its reference to 8e-6; the
    negative controls demand >= 100x.
    """
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(weights):
        array = weights[name]
        noise = rng.standard_normal(tuple(array.shape)).astype(np.float32)
        value = 1.0 + noise * std / 4 if ("norm" in name and len(array.shape) == 1) else noise * std
        out[name] = mx.array(value).astype(array.dtype)
    return out


def write_tiny_tokenizer(directory: str | os.PathLike, vocab_size: int | None = None) -> Path:
    """Write a byte-level BPE tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) into
    ``directory``: ids 0-255 are the 256 bytes (GPT-2's byte-to-character table), no merges,
    then :data:`SPECIAL_TOKENS` (``<|im_end|>`` ends a turn and is the EOS) and a chat template.
    Any text encodes, so generation runs with any model whose ``vocab_size`` is at least
    :data:`TOKENIZER_VOCAB`. With ``vocab_size``, reserved special tokens
    (``<|reserved_N|>``, as Llama 3's tokenizer has) fill the ids up to it, so that every id a
    random model may sample decodes."""
    from mlx_zoo.tokenizer import bytes_to_unicode

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    added = [{"id": 256 + i, "content": token, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i, token in enumerate(SPECIAL_TOKENS)]
    added += [{**added[-1], "id": i, "content": f"<|reserved_{i}|>"}
              for i in range(TOKENIZER_VOCAB, vocab_size or 0)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
              "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
              "add_bos_token": False, "clean_up_tokenization_spaces": False,
              "model_max_length": 4096, "chat_template": CHAT_TEMPLATE}
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False),
                                              encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory


def tiny_weights(model_type: str, config: Mapping[str, Any], seed: int = 0,
                 std: float = WEIGHT_STD) -> dict[str, Any]:
    """Sharpened random weights (:func:`sharpen_weights`) for the model ``config`` describes,
    under the names its checkpoints use (the model's parameters, projections unfused)."""
    from mlx.utils import tree_flatten

    from mlx_zoo import registry
    from mlx_zoo.config import normalize_config

    raw = normalize_config({**config, "model_type": model_type})
    arch = registry.resolve(model_type)
    model = arch.model_class(arch.config_class.from_dict(raw))
    return sharpen_weights(dict(tree_flatten(model.parameters())), std=std, seed=seed)


def write_tiny_checkpoint(directory: str | os.PathLike, model_type: str,
                          config: Mapping[str, Any], seed: int = 0, *,
                          std: float = WEIGHT_STD) -> Path:
    """Write a checkpoint of ``model_type`` into ``directory``: ``config.json`` (``config`` as
    given, with ``model_type``), ``model.safetensors`` with sharpened random weights
    (:func:`tiny_weights`, reproducible from ``seed``) and the tiny tokenizer
    (:func:`write_tiny_tokenizer`, filled up to the config's ``vocab_size``). The plugin serving
    ``model_type`` builds the model, so the weight names are the plugin's checkpoint names.
    Returns ``directory``."""
    import mlx.core as mx

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = tiny_weights(model_type, config, seed, std)
    (directory / "config.json").write_text(
        json.dumps({**config, "model_type": model_type}, indent=2))
    mx.save_safetensors(str(directory / "model.safetensors"), weights,
                        metadata={"format": "mlx"})
    write_tiny_tokenizer(directory, config.get("vocab_size"))
    return directory


@contextmanager
def isolated_registry() -> Iterator[Any]:
    """Within this block the plugin registry starts empty -- no plugin imported or registered,
    no ``mlx_zoo.register`` of earlier tests, ``MLX_ZOO_PLUGINS`` / ``MLX_ZOO_PREFER`` unset --
    and everything is restored afterwards. Yields :mod:`mlx_zoo.registry` (its public
    functions: ``register``, ``unregister``, ``resolve``, ``list_plugins``, ...). Also a pytest
    fixture of the same name (:mod:`mlx_zoo.testing.pytest_plugin`)."""
    from mlx_zoo import registry

    saved = registry._manager, registry._in_process
    env = {key: os.environ.pop(key) for key in (registry.PLUGINS_ENV, registry.PREFER_ENV)
           if key in os.environ}
    registry._manager, registry._in_process = None, {}
    try:
        yield registry
    finally:
        registry._manager, registry._in_process = saved
        for key in (registry.PLUGINS_ENV, registry.PREFER_ENV):
            os.environ.pop(key, None)
        os.environ.update(env)
