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
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from . import blas, registry
from .config import CONFIG_FILE
from .errors import MlxZooError, SafetensorsError, SaveError
from .fusion import checkpoint_parameters, fuse_projections
from .hookspecs import Sanitizes
from .sources import (  # noqa: F401 (resolve_model_dir, dense_nbytes: public here too)
    DOWNLOAD_PATTERNS,
    dense_nbytes,
    open_checkpoint,
    resolve_model_dir,
)
from .weights import (
    QUANTIZATION_KEY,
    apply_quantization,
    check_config_plausible,
    check_dtypes,
    check_weights,
    dequantize_model,
    save_weights,
    tensor_sources,
    validate_quantization,
)


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


def _check_load_args(path_or_repo: Any, revision: Any, dtype: Any, lazy: Any, plugin: Any,
                     dequantize: Any, fuse: Any) -> None:
    """A ``TypeError`` naming the argument of :func:`load` that has the wrong type (before it
    fails deep inside); values are checked where they are used."""
    if path_or_repo is not None and not isinstance(path_or_repo, (str, os.PathLike)):
        raise TypeError(f"load: path_or_repo must be a directory, a repo id or demo:NAME (a "
                        f"str or path), got {type(path_or_repo).__name__}")
    for name, value in (("revision", revision), ("plugin", plugin)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"load: {name} must be a str or None, got {value!r:.60}")
    if dtype is not None and not isinstance(dtype, (str, mx.Dtype)):
        raise TypeError(f"load: dtype must be 'auto', None, a floating-point dtype name "
                        f"('float32', 'bfloat16', 'float16') or an mx.Dtype, got {dtype!r:.60}")
    if not (isinstance(dequantize, bool) or dequantize == AUTO):
        raise ValueError(f"load: dequantize must be True, False or 'auto', got "
                         f"{dequantize!r:.60}")
    for name, value in (("lazy", lazy), ("fuse", fuse)):
        if not isinstance(value, bool):
            raise TypeError(f"load: {name} must be True or False, got {value!r:.60}")


def _check_save_args(model: Any, config: Any, path: Any) -> None:
    """A ``TypeError`` naming the argument of :func:`save` that has the wrong type."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"save: model must be an mlx.nn.Module (as load returns it), got "
                        f"{type(model).__name__}")
    if not (isinstance(config, dict) or callable(getattr(config, "to_dict", None))):
        raise TypeError(f"save: config must be the config load returned, or a dict, got "
                        f"{type(config).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"save: path must be a str or path, got {type(path).__name__}")


def load(path_or_repo: str | Path, *, revision: str | None = None,
         dtype: str | mx.Dtype | None = "auto", lazy: bool = False, plugin: str | None = None,
         dequantize: bool | str = "auto", fuse: bool = True, parallel: str | None = None,
         group: Any = None) -> tuple[nn.Module, Any]:
    """Load a checkpoint; returns ``(model, config)``, config being the plugin's dataclass.

    The defaults are the fastest correct settings for this machine; every one has an opt-out
    that loads the checkpoint exactly as stored (``dtype=None, dequantize=False, fuse=False``).
    Explicit settings are never second-guessed.

    ``dtype``: ``"auto"`` (default) computes in dense float32 where that is measurably faster --
    MLX on the Linux CPU with a fast BLAS actually serving it (:func:`mlx_zoo.blas.blas_status`;
    MLX's bf16/fp16 CPU matmuls are slow paths next to OpenBLAS's float32) and the float32
    weights fitting in :data:`MEMORY_FRACTION` of the available memory
    (:func:`prefers_dense_float32`, :func:`fits_in_memory`) -- and keeps the stored dtype
    everywhere else (GPUs, macOS, MLX's reference BLAS, too little memory). ``None`` keeps the
    checkpoint's dtypes; ``"float32"``, ``"bfloat16"``, ``"float16"`` or an ``mx.Dtype`` casts
    the floating-point weights.

    ``dequantize``: ``"auto"`` (default) loads a quantized checkpoint as dense layers exactly
    where ``dtype="auto"`` picks float32 (MLX's 4-bit CPU matmuls are slower still); ``True``
    always (in ``dtype``, default the dtype of the scales); ``False`` keeps the quantized layers.

    ``fuse``: ``True`` (default) fuses the projections that read the same input -- q/k/v of
    attention, gate/up of the gated MLPs, where the model's modules declare them -- into one
    matmul each (:mod:`mlx_zoo.fusion`): fewer, larger kernels per decoded token. So after
    loading, ``self_attn.qkv_proj`` and ``mlp.gate_up_proj`` hold them, not ``q_proj`` &c.;
    pass ``fuse=False`` for the separate modules (LoRA tooling, code that edits ``q_proj``), or
    split them later with :func:`mlx_zoo.unfuse_projections`. :func:`save` writes the separate
    checkpoint names either way, and plugins' ``shard`` unfuses first. Groups that cannot fuse
    (parts quantized differently, layers without keys/values of their own) stay separate.

    ``lazy`` skips evaluating the weights (they are read on first use); ``plugin`` picks the
    distribution when several claim the checkpoint's model_type.

    ``parallel``: ``"pipeline"`` or ``"tensor"`` splits the model over ``group`` (default:
    ``mx.distributed.init()``, i.e. the processes ``mlx.launch`` started), each rank reading and
    materialising only its own part (lazy load, split, then evaluate layer by layer:
    :func:`mlx_zoo.pipeline.load_distributed`). ``"pipeline"`` returns a
    :class:`~mlx_zoo.pipeline.PipelineLM` holding this rank's layers; ``"tensor"`` the model with
    its ``shard`` applied (unfused). Impossible combinations raise
    :class:`~mlx_zoo.ShardingError` before any weight is read.
    """
    _check_load_args(path_or_repo, revision, dtype, lazy, plugin, dequantize, fuse)
    if parallel is not None:
        return load_distributed(path_or_repo, parallel, group, revision=revision, dtype=dtype,
                                lazy=lazy, plugin=plugin, dequantize=dequantize, fuse=fuse)
    source = open_checkpoint(path_or_repo, revision)  # a model directory or a GGUF file
    raw, config_path = source.raw, source.path
    arch = registry.resolve(raw["model_type"], plugin=plugin, path=config_path)
    config = arch.config_class.from_dict(raw, config_path)
    quantization = raw.get(QUANTIZATION_KEY)
    if quantization is not None:
        validate_quantization(quantization, config_path)
    headers = source.headers()  # names, dtypes, shapes: no tensor data yet
    check_config_plausible(raw, headers, config_path)
    dtype, dequantize = _resolve_auto(source, quantization, dtype, dequantize)
    target = None if dtype is None else _as_dtype(dtype)
    model = arch.model_class(config)

    weights = source.read_weights(headers, target)
    if isinstance(model, Sanitizes):
        weights = _sanitized(model, weights, source.where)
    if quantization:
        apply_quantization(model, quantization, weights, config_path)
    check_weights(model, weights, source.where)
    check_dtypes(model, weights, source.where, tensor_sources(headers))
    if target is not None:
        weights = {k: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v
                   for k, v in weights.items()}
    model.load_weights(list(weights.items()), strict=False)
    del weights  # the model holds them now: fusing below may then free the parts it replaces
    if quantization and dequantize:
        dequantize_model(model, target)
        config.clear_quantization()  # save() now writes it dense
    if fuse:
        _fuse(model, lazy)
    if os.environ.get(FAST_KERNELS_ENV) == "1":  # opt-in: see FAST_KERNELS_ENV
        from .kernels import use_fast_kernels

        use_fast_kernels(model)
    if not lazy:
        evaluate_all(model)
    model.eval()
    return model, config


def _sanitized(model: nn.Module, weights: dict[str, mx.array], where: Path) -> dict:
    """The plugin's ``sanitize`` of the checkpoint's tensors. A checkpoint it cannot map (a
    tensor missing or misshapen where it stacks experts or splits a fused projection: its
    KeyError, IndexError, ValueError...) is a :class:`SafetensorsError` naming the file, as
    the strict check after it would name the tensors."""
    try:
        return model.sanitize(weights)
    except MlxZooError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
        raise SafetensorsError(where, f"{type(model).__name__}.sanitize could not map the "
                               f"checkpoint's tensors ({type(e).__name__}: {e})") from e


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

FAST_KERNELS_ENV = "MLX_ZOO_FAST_KERNELS"
"""``1``: on a CUDA GPU, quantized layers run batch-1 matvecs through mlx-zoo's own kernel
(:mod:`mlx_zoo.kernels`: 2.3-2.8x MLX's kernel time on 7B shapes; fused bias and SwiGLU). Off
by default: each custom kernel costs about twice the host time of a built-in op, and MLX's CUDA
decode is bound by host time per op, so whole-model decode measured no faster with it
(docs/benchmarks.md, "Precompiled kernels"). No effect on other devices."""

MEMORY_FRACTION = 0.6
"""Share of available memory that dense float32 weights may take for the "auto" load policy:
the rest is for the KV cache, activations and the half-precision copy held while converting."""


def _resolve_auto(source: Any, quantization: dict | None, dtype, dequantize):
    """``dtype``/``dequantize`` with ``"auto"`` resolved: dense float32 where
    :func:`prefers_dense_float32` and the float32 weights fit in memory (``source``: a
    :mod:`mlx_zoo.sources` checkpoint), else as stored."""
    if dequantize not in (True, False, AUTO):
        raise ValueError(f"dequantize must be True, False or {AUTO!r}, got {dequantize!r}")
    if AUTO not in (dtype, dequantize):
        return dtype, dequantize
    fast = prefers_dense_float32() and fits_in_memory(
        source.dense_nbytes((quantization or {}).get("bits")))
    if dequantize == AUTO:
        dequantize = bool(quantization) and fast
    if dtype == AUTO:
        dtype = "float32" if fast else None
    return dtype, dequantize


# -- when dense float32 is the fast way: memory policy and size estimates -----------------------


def is_linux_cpu() -> bool:
    """True when MLX computes on its Linux CPU backend (no GPU device is the default)."""
    return sys.platform.startswith("linux") and mx.default_device() == mx.cpu


def prefers_dense_float32() -> bool:
    """Whether dense float32 is the fast way to compute here: MLX on its Linux CPU backend with a
    fast BLAS actually serving its float32 matmuls (:func:`mlx_zoo.blas.blas_status`), where
    its quantized and half-precision kernels are slow paths next to OpenBLAS's sgemm/sgemv.
    With MLX's reference BLAS (``mlx.core`` imported before ``mlx_zoo``,
    ``MLX_ZOO_BLAS=reference``, no compiler for the shim) float32 prefill is slower than bf16's,
    so the stored dtype stays."""
    return blas.blas_status().fast and is_linux_cpu()


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits_in_memory(nbytes: int, fraction: float = MEMORY_FRACTION) -> bool:
    """Whether ``nbytes`` of weights fit in ``fraction`` of the available memory."""
    available = available_memory()
    return available is not None and nbytes <= fraction * available


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
    _check_save_args(model, config, path)
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


# -- each rank its part: pipeline and tensor parallelism (mlx_zoo.pipeline, mlx_zoo.sharding) ------


def _evaluate_by_parts(model: nn.Module) -> None:
    """Evaluate a (lazily loaded, then split) model one layer at a time, then the rest: each
    step reads only its own tensors, so the peak is this rank's share plus one layer."""
    for layer in getattr(model, "layers", []):
        evaluate_all(layer)
    evaluate_all(model)


def load_distributed(path_or_repo: str | Path, parallel: str, group: Any = None, *,
                     broadcast: str = "logits", **load_options: Any) -> tuple[nn.Module, Any]:
    """``load(path, parallel=..., group=...)``: each rank reads and materialises only its part
    -- the model is loaded lazily (nothing read but headers), checked, split (``"tensor"``: the
    plugin's ``shard``; ``"pipeline"``: :func:`mlx_zoo.pipeline.pipeline`, whose ``broadcast``
    this passes on), then evaluated layer by layer. Returns ``(model, config)``. Bad
    combinations raise :class:`~mlx_zoo.ShardingError` before any weight is read."""
    from .errors import ShardingError
    from .hookspecs import Shards
    from .pipeline import check_parallel, pipeline, same_random_state, share_host_cpus

    group = group or mx.distributed.init()
    check_parallel(parallel, group.size())
    share_host_cpus(group)  # ranks on one CPU host split its cores (no-op on GPUs)
    source = open_checkpoint(path_or_repo, load_options.get("revision"))
    model_dir = source.where
    arch = registry.resolve(source.raw["model_type"], plugin=load_options.get("plugin"),
                            path=source.path)
    config = arch.config_class.from_dict(source.raw, source.path)
    check_parallel(parallel, group.size(), config, source.where)
    load_options.pop("lazy", None)
    fuse = load_options.get("fuse", True)
    if parallel == "tensor":
        load_options["fuse"] = False  # shard splits q/k/v and gate/up by heads: fused after
    model, config = load(model_dir, lazy=True, **load_options)
    if parallel == "pipeline":
        model = pipeline(model, group, broadcast=broadcast)
    else:
        if not isinstance(model, Shards):
            raise ShardingError(f"{model_dir}: {type(model).__name__} has no shard method "
                                "(tensor parallelism); try parallel='pipeline'")
        model.shard(group)
        if fuse:  # each rank's q/k/v and gate/up shards (lazily: nothing is read yet)
            fuse_projections(model)
        same_random_state(group)
    _evaluate_by_parts(model)
    model.eval()
    return model, config
