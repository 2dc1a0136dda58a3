"""``mlx-zoo info``: a short description of a checkpoint, built from the loaded model."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from mlx.utils import tree_flatten


def describe(path_or_repo: str | Path, plugin: str | None = None) -> Iterator[str]:
    """Lines describing the checkpoint: architecture, plugin, parameters, dtypes, quantization,
    and the cache each layer gets."""
    from . import registry
    from .cache import make_prompt_cache
    from .loading import load
    from .sources import open_checkpoint

    checkpoint = open_checkpoint(path_or_repo)  # a model directory or a GGUF file
    model_dir, raw = checkpoint.where, checkpoint.raw
    # the checkpoint as stored: no dtype/dequantize policy, no fused projections
    model, config = load(model_dir, lazy=True, plugin=plugin, dtype=None, dequantize=False,
                         fuse=False)
    params = tree_flatten(model.parameters())
    quantization = raw.get("quantization")
    count = sum(_logical_size(name, a, quantization) for name, a in params)
    dtypes = Counter(str(a.dtype).removeprefix("mlx.core.") for name, a in params
                     if not name_is_quant_aux(name))
    owner = next((r.distribution for r in registry.list_plugins()
                  if r.model_type == raw["model_type"]), "?")
    yield f"path:           {model_dir}"
    cls = type(model)
    yield f"model_type:     {raw['model_type']} ({cls.__module__}.{cls.__name__}, plugin {owner})"
    yield f"parameters:     {count:,} ({_human(count)})"
    yield "dtype:          " + ", ".join(f"{d} ({n} tensors)" for d, n in dtypes.most_common())
    if quantization:
        q = {k: v for k, v in quantization.items() if k in ("group_size", "bits", "mode")}
        overrides = len(quantization) - len(q)
        yield f"quantization:   {q}" + (f", {overrides} per-layer overrides" if overrides else "")
    else:
        yield "quantization:   none"
    caches = make_prompt_cache(model)
    layout = Counter(_cache_label(c) for c in caches)
    yield f"layers:         {len(model.layers)}"
    yield "cache layout:   " + ", ".join(f"{n} x {label}" for label, n in layout.items())


def name_is_quant_aux(name: str) -> bool:
    return name.endswith((".scales", ".biases"))


def _logical_size(name: str, array, quantization) -> int:
    """Parameter count, counting a packed quantized weight as the values it holds."""
    if name_is_quant_aux(name):
        return 0
    if quantization and str(array.dtype).endswith("uint32"):
        layer = quantization.get(name.rpartition(".")[0])  # a per-layer override, if any
        bits = (layer if isinstance(layer, dict) else quantization).get("bits", 4)
        return math.prod(array.shape) * 32 // bits
    return math.prod(array.shape)


def _cache_label(cache) -> str:
    label = type(cache).__name__
    for attr in ("max_size", "chunk_size"):
        if hasattr(cache, attr):
            label += f"({attr}={getattr(cache, attr)})"
    return label


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
