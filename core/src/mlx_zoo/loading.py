"""``load`` and ``save``: from a directory or Hugging Face repo to a ready MLX model, and back.

Data flow of :func:`load`::

    path or repo id -> local directory (huggingface_hub snapshot: config, safetensors, tokenizer)
    config.json     -> normalised dict (mlx_zoo.config) -> model_type
    model_type      -> the one plugin serving it (mlx_zoo.registry) -> config dataclass, Model
    *.safetensors   -> headers validated, config checked against them (before the model is
                       built) -> read -> plugin sanitize -> quantized layers where the config
                       says so -> strict key/shape and dtype-kind checks -> dtype ->
                       model.load_weights -> every array the model holds evaluated

No file of the model directory other than JSON and safetensors is read; ``.py`` files shipped
with a checkpoint are never imported or executed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from . import backend, registry
from .config import CONFIG_FILE, read_config
from .errors import MlxZooError, SaveError
from .fusion import checkpoint_parameters, fuse_projections
from .hookspecs import Sanitizes
from .weights import (
    QUANTIZATION_KEY,
    apply_quantization,
    check_config_plausible,
    check_dtypes,
    check_weights,
    checkpoint_headers,
    load_safetensors,
    save_weights,
    tensor_sources,
    validate_quantization,
)

DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.tiktoken",
                     "*.txt"]
"""Files fetched from the Hub: configs, weights and tokenizer files -- never code."""


class ModelNotFoundError(MlxZooError):
    """Neither a local directory nor a Hugging Face repo that could be fetched."""


def resolve_model_dir(path_or_repo: str | Path, revision: str | None = None) -> Path:
    """A local model directory for a path, a Hub repo id fetched with ``snapshot_download``
    (only :data:`DOWNLOAD_PATTERNS`; honours the HF cache and ``HF_HUB_OFFLINE``), or
    ``demo:NAME`` for a demo checkpoint shipped with mlx-zoo (:mod:`mlx_zoo.demos`)."""
    from .demos import DEMO_PREFIX, demo_dir, is_demo_reference

    if is_demo_reference(path_or_repo):  # "demo:qwen2": a checkpoint shipped with mlx-zoo
        return demo_dir(str(path_or_repo)[len(DEMO_PREFIX):])
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ModelNotFoundError(f"{text}: no such model directory (and not a Hugging Face repo "
                                 "id of the form 'org/name')")
    import huggingface_hub  # imported only when a repo id is given

    try:
        return Path(huggingface_hub.snapshot_download(text, revision=revision,
                                                      allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as e:
        raise ModelNotFoundError(f"{text}: not a local directory, and the Hugging Face repo could "
                                 f"not be fetched ({type(e).__name__}: {e})") from e


def _as_dtype(dtype: str | mx.Dtype) -> mx.Dtype:
    if isinstance(dtype, mx.Dtype):
        return dtype
    try:
        value = getattr(mx, dtype)
    except AttributeError:
        value = None
    if not isinstance(value, mx.Dtype) or not mx.issubdtype(value, mx.floating):
        raise ValueError(f"dtype {dtype!r} is not a floating-point MLX dtype "
                         "(float32, float16, bfloat16)")
    return value


def load(path_or_repo: str | Path, *, revision: str | None = None,
         dtype: str | mx.Dtype | None = None, lazy: bool = False, plugin: str | None = None,
         dequantize: bool | str = False, fuse: bool = False) -> tuple[nn.Module, Any]:
    """Load a checkpoint; returns ``(model, config)``, config being the plugin's dataclass.

    ``dtype`` casts floating-point weights; ``lazy`` skips evaluating them (they are read on first
    use); ``plugin`` picks the distribution when several claim the checkpoint's model_type.

    ``dequantize=True`` loads a quantized checkpoint as dense layers holding the dequantized
    weights (in ``dtype``, default the dtype of the scales). ``"auto"`` for either option is the
    fast path of :mod:`mlx_zoo.backend`: on MLX's Linux CPU backend, whose quantized and
    half-precision matmuls are slow paths, dense float32 when it fits in memory
    (:func:`~mlx_zoo.backend.fits_in_memory`); elsewhere the checkpoint as stored.

    ``fuse=True`` fuses the projections that read the same input -- q/k/v of attention, gate/up
    of the gated MLPs, where the model's modules declare them -- into one matmul each
    (:mod:`mlx_zoo.fusion`): fewer, larger kernels per decoded token. Done once the checkpoint's
    weights are loaded and checked under their own names; groups that cannot fuse (parts
    quantized differently, layers without keys/values of their own) stay separate. Off by
    default, so that ``self_attn.q_proj`` and the like exist after loading, as with mlx-lm
    (LoRA tooling edits them); :func:`save` writes the separate names either way, and
    :func:`mlx_zoo.unfuse_projections` splits them again.
    """
    model_dir = resolve_model_dir(path_or_repo, revision)
    raw = read_config(model_dir)
    config_path = model_dir / CONFIG_FILE
    arch = registry.resolve(raw["model_type"], plugin=plugin, path=config_path)
    config = arch.config_class.from_dict(raw, config_path)
    quantization = raw.get(QUANTIZATION_KEY)
    if quantization is not None:
        validate_quantization(quantization, config_path)
    headers = checkpoint_headers(model_dir)  # names, dtypes, shapes: no tensor data yet
    check_config_plausible(raw, headers, config_path)
    model = arch.model_class(config)

    weights = load_safetensors(model_dir, headers)
    if isinstance(model, Sanitizes):
        weights = model.sanitize(weights)
    if quantization:
        apply_quantization(model, quantization, weights, config_path)
    check_weights(model, weights, model_dir)
    check_dtypes(model, weights, model_dir, tensor_sources(headers))
    dtype, dequantize = _resolve_auto(model_dir, quantization, dtype, dequantize)
    if dtype is not None:
        target = _as_dtype(dtype)
        weights = {k: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v
                   for k, v in weights.items()}
    model.load_weights(list(weights.items()), strict=False)
    del weights  # the model holds them now: fusing below may then free the parts it replaces
    if quantization and dequantize:
        backend.dequantize_model(model, None if dtype is None else _as_dtype(dtype))
        for key in (QUANTIZATION_KEY, "quantization_config"):  # save() now writes it dense
            getattr(config, "_source", {}).pop(key, None)
    if fuse:
        _fuse(model, lazy)
    if not lazy:
        evaluate_all(model)
    model.eval()
    return model, config


def evaluate_all(model: nn.Module) -> None:
    """Evaluate every array ``model`` holds: its parameters, and the arrays its modules keep
    outside them (RoPE tables in ``_periods``, other private attributes, lists and dicts of
    arrays). A lazy array left behind would be computed on first use, in the thread using it --
    and MLX streams belong to the thread that made them, so generating in another thread than
    the one that loaded would fail (``There is no Stream(cpu, 0) in current thread``)."""
    mx.eval(list(_arrays_in(model)))


def _arrays_in(root: Any) -> Iterator[mx.array]:
    """Every ``mx.array`` reachable from ``root`` through modules (their items and attributes,
    private ones included), dicts, lists and tuples; each container visited once."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, mx.array):
            yield item
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, nn.Module):
            stack.extend(item.values())
            stack.extend(vars(item).values())
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _fuse(model: nn.Module, lazy: bool) -> None:
    """Fuse the projections; unless ``lazy``, one fused layer at a time from evaluated weights,
    so that each layer's separate parts are freed as soon as its fused copy exists (peak memory:
    the model plus one fused layer, not the model plus every fused copy)."""
    if lazy:
        fuse_projections(model)
        return
    mx.eval(model.parameters())
    fuse_projections(model, evaluate=True)


AUTO = "auto"


def _resolve_auto(model_dir: Path, quantization: dict | None, dtype, dequantize):
    """``dtype``/``dequantize`` with ``"auto"`` resolved by :mod:`mlx_zoo.backend`'s policy."""
    if dequantize not in (True, False, AUTO):
        raise ValueError(f"dequantize must be True, False or {AUTO!r}, got {dequantize!r}")
    if AUTO not in (dtype, dequantize):
        return dtype, dequantize
    fast = backend.prefers_dense_float32() and backend.fits_in_memory(
        backend.dense_nbytes(model_dir, (quantization or {}).get("bits")))
    if dequantize == AUTO:
        dequantize = bool(quantization) and fast
    if dtype == AUTO:
        dtype = "float32" if fast else None
    return dtype, dequantize


def save(model: nn.Module, config: Any, path: str | Path, *,
         max_shard_bytes: int | None = None) -> Path:
    """Write ``model``'s weights (sharded safetensors) and ``config.json`` to ``path``, in the
    layout :func:`load` and mlx-lm read back. ``config`` is the dataclass from :func:`load` (or a
    dict); quantized models keep their ``quantization`` entry. A fused model
    (:mod:`mlx_zoo.fusion`) is written under the separate projections' names, and is not
    changed.

    The save is atomic (:func:`~mlx_zoo.weights.save_weights`): the checkpoint is written beside
    ``path`` and swapped in once complete, so a failure leaves ``path`` as it was (raising
    :class:`~mlx_zoo.errors.SaveError`); saving over a model directory replaces its weights,
    index and config.json and keeps its other files (tokenizer, README, ...)."""
    path = Path(path)
    text = _config_text(config, path)  # fails here, before anything is written
    weights = dict(checkpoint_parameters(model))
    kwargs = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
    save_weights(path, weights, files={CONFIG_FILE: text}, **kwargs)
    return path


def _config_text(config: Any, path: Path) -> str:
    """config.json's text for ``config`` (a dataclass from :func:`load`, or a dict); a value
    JSON cannot hold raises :class:`~mlx_zoo.errors.SaveError` naming its key."""
    data = config if isinstance(config, dict) else config.to_dict()
    data = tree_map(lambda x: x, data)  # a copy
    try:
        return json.dumps(data, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as e:
        where = _unserialisable(data)
        raise SaveError(path, f"config.json cannot be written: {where or 'a value'} is not "
                        f"JSON-serialisable ({e}); nothing was written") from e


def _unserialisable(value: Any, key: str = "") -> str | None:
    """The key path (``rope_scaling.factor``) of the first value JSON cannot hold, if found."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            return f"key {key!r} ({type(value).__name__})" if key else type(value).__name__
        return None
    for k, v in items:
        if not isinstance(k, (str, int, float, bool)) and k is not None:
            return f"key {k!r} under {key!r}" if key else f"key {k!r}"
        found = _unserialisable(v, f"{key}.{k}" if key else str(k))
        if found:
            return found
    return None
