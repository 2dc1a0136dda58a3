"""Safetensors checkpoints: validation before reading, sharded loading, the strict key check,
quantization as mlx-lm writes it, and saving.

Every file is checked before a single tensor is read -- a header that is not JSON, a tensor past
the end of the file, a missing shard or an index entry pointing outside the model directory is
refused with the file and tensor named -- so a bad checkpoint never crashes the process or yields
a half-loaded model.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import SafetensorsError, WeightMismatchError
from .fusion import fuse_projections, unfuse_projections

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
HEADER_LENGTH_BYTES = 8  # safetensors: little-endian u64 length of the JSON header
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit on the header size
DEFAULT_SHARD_BYTES = 5 * 1024**3  # shards written by save(), like transformers' and mlx-lm's

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


# -- validation --------------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and validate a safetensors header; returns ``{tensor name: entry}``."""
    if not path.is_file():
        raise SafetensorsError(path, "file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(HEADER_LENGTH_BYTES)
        if len(prefix) < HEADER_LENGTH_BYTES:
            raise SafetensorsError(path, f"truncated: {size} bytes, shorter than the "
                                   f"{HEADER_LENGTH_BYTES}-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(MAX_HEADER_BYTES, size - HEADER_LENGTH_BYTES):
            raise SafetensorsError(path, f"header length {header_len} exceeds the file "
                                   f"({size} bytes): the file is truncated or not safetensors")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SafetensorsError(path, f"header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise SafetensorsError(path, "header is not a JSON object")
    data_bytes = size - HEADER_LENGTH_BYTES - header_len
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, entry in tensors.items():
        _check_entry(path, name, entry, data_bytes)
    return tensors


def _check_entry(path: Path, name: str, entry: Any, data_bytes: int) -> None:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise SafetensorsError(path, "expected an object with dtype, shape and data_offsets", name)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise SafetensorsError(path, f"unknown dtype {dtype!r}", name)
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise SafetensorsError(path, f"shape {shape!r} is not a list of non-negative ints", name)
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise SafetensorsError(path, f"data_offsets {offsets!r} is not [begin, end]", name)
    if offsets[1] > data_bytes:
        raise SafetensorsError(path, f"tensor extends past the end of the file (data ends at "
                               f"byte {offsets[1]}, the file holds {data_bytes}): truncated?", name)
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise SafetensorsError(path, f"holds {offsets[1] - offsets[0]} bytes, but shape {shape} "
                               f"of {dtype} needs {expected}", name)


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint, validated (index first, then single file)."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        files = _files_from_index(model_dir, index)
    elif (model_dir / SINGLE_FILE).is_file():
        files = [model_dir / SINGLE_FILE]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise SafetensorsError(model_dir, f"no {SINGLE_FILE}, {INDEX_FILE} or other "
                                   "*.safetensors file in the model directory")
    for f in files:
        read_safetensors_header(f)
    return files


def _files_from_index(model_dir: Path, index: Path) -> list[Path]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SafetensorsError(index, f"not valid JSON ({e})") from e
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise SafetensorsError(index, "expected an object with a 'weight_map' object")
    root = model_dir.resolve()
    files: dict[Path, None] = {}
    for tensor, name in weight_map.items():
        if not isinstance(name, str) or Path(name).is_absolute():
            raise SafetensorsError(index, f"weight_map entry {name!r} is not a relative file name",
                                   tensor)
        target = (model_dir / name).resolve()
        if root not in target.parents:
            raise SafetensorsError(index, f"weight_map names {name!r}, outside the model "
                                   f"directory {model_dir}: refused", tensor)
        if not target.is_file():
            raise SafetensorsError(index, f"shard {name!r} is missing from {model_dir}", tensor)
        files[model_dir / name] = None
    return list(files)


def load_safetensors(model_dir: Path) -> dict[str, mx.array]:
    """Validate, then read every tensor of a (possibly sharded) checkpoint (lazily: MLX maps
    the data when it is first used)."""
    weights: dict[str, mx.array] = {}
    for f in weight_files(model_dir):
        weights.update(mx.load(str(f)))
    return weights


# -- the strict check --------------------------------------------------------------------------


def check_weights(model: nn.Module, weights: dict[str, mx.array], where: Path | str) -> None:
    """Raise :class:`WeightMismatchError` listing every missing, unexpected or misshapen key."""
    params = dict(tree_flatten(model.parameters()))
    missing = sorted(params.keys() - weights.keys())
    unexpected = sorted(weights.keys() - params.keys())
    shapes = [(k, tuple(weights[k].shape), tuple(params[k].shape))
              for k in sorted(params.keys() & weights.keys())
              if tuple(weights[k].shape) != tuple(params[k].shape)]
    if missing or unexpected or shapes:
        raise WeightMismatchError(where, missing, unexpected, shapes)


# -- quantization ------------------------------------------------------------------------------

QUANTIZATION_KEY = "quantization"
"""config.json key written by mlx-lm's convert: ``{"group_size", "bits", "mode"?}`` plus
per-layer overrides keyed by module path (``false`` to keep a layer in full precision, or its own
``{"group_size", "bits"}``)."""
GLOBAL_QUANT_KEYS = ("group_size", "bits", "mode")


def apply_quantization(model: nn.Module, quantization: dict[str, Any],
                       weights: dict[str, mx.array]) -> None:
    """Turn the layers the checkpoint stores quantized into quantized layers, in place."""
    overrides = {k: v for k, v in quantization.items() if k not in GLOBAL_QUANT_KEYS}

    def predicate(path: str, module: nn.Module):
        if path in overrides:
            return overrides[path]
        return hasattr(module, "to_quantized") and f"{path}.scales" in weights

    nn.quantize(model, group_size=quantization.get("group_size"), bits=quantization.get("bits"),
                mode=quantization.get("mode", "affine"), class_predicate=predicate)


def quantize_model(model: nn.Module, config: Any, *, bits: int = 4, group_size: int = 64,
                   mode: str = "affine") -> dict[str, Any]:
    """Quantize ``model`` in place (layers its ``quantize_predicate`` allows, whose input size
    divides by ``group_size``) and record the result in ``config`` so that :func:`mlx_zoo.save`
    writes a checkpoint mlx-zoo and mlx-lm load. Returns the ``quantization`` entry.

    A fused model (:mod:`mlx_zoo.fusion`) is unfused first, so that the predicate, the
    per-layer entries and the checkpoint see the separate projections, and fused again after
    (groups quantized differently stay separate)."""
    was_fused = unfuse_projections(model) > 0
    quantization: dict[str, Any] = {"group_size": group_size, "bits": bits, "mode": mode}
    own = getattr(model, "quantize_predicate", None)

    def predicate(path: str, module: nn.Module):
        if not hasattr(module, "to_quantized") or module.weight.shape[-1] % group_size:
            return False
        decision = own(path, module) if own else True
        if isinstance(decision, dict):
            quantization[path] = decision
        elif decision is False:
            quantization[path] = False
        return decision

    nn.quantize(model, group_size=group_size, bits=bits, mode=mode, class_predicate=predicate)
    if was_fused:
        fuse_projections(model)
    source = _source_dict(config)
    source[QUANTIZATION_KEY] = quantization
    source["quantization_config"] = quantization  # the key transformers' readers look for
    return quantization


def _source_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, dict):
        return config
    source = getattr(config, "_source", None)
    if source is None:
        source = {}
        object.__setattr__(config, "_source", source)
    return source


# -- saving ------------------------------------------------------------------------------------


def _shards(weights: dict[str, mx.array], max_bytes: int) -> Iterable[dict[str, mx.array]]:
    shard: dict[str, mx.array] = {}
    size = 0
    for name, array in weights.items():
        if shard and size + array.nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[name] = array
        size += array.nbytes
    if shard:
        yield shard


def save_weights(path: Path, weights: dict[str, mx.array],
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """Write ``weights`` as ``model.safetensors``, or as numbered shards with an index."""
    path.mkdir(parents=True, exist_ok=True)
    shards = list(_shards(weights, max_shard_bytes))
    if len(shards) == 1:
        mx.save_safetensors(str(path / SINGLE_FILE), shards[0], metadata={"format": "mlx"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(path / name), shard, metadata={"format": "mlx"})
        weight_map.update({k: name for k in shard})
    index = {"metadata": {"total_size": sum(a.nbytes for a in weights.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    (path / INDEX_FILE).write_text(json.dumps(index, indent=2), encoding="utf-8")
