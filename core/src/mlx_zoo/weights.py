"""Safetensors checkpoints: validation before reading, sharded loading, the strict key and dtype
checks, quantization as mlx-lm writes it, and saving.

Every file is checked before a single tensor is read -- a header that is not JSON or repeats a
key, a tensor past the end of the file or overlapping another, a missing shard or an index entry
naming a path outside the model directory is refused with the file and tensor named -- so a bad
checkpoint never crashes the process or yields a half-loaded model. Saving writes a complete
checkpoint beside the target and swaps it in, so a failed save leaves the old one intact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .config import CONFIG_FILE, QUANTIZATION_CONFIG_KEY, QUANTIZATION_KEY
from .errors import (
    ConfigError,
    MlxZooError,
    QuantizationError,
    SafetensorsError,
    SaveError,
    WeightMismatchError,
)
from .fusion import fuse_projections, unfuse_projections
from .hookspecs import QuantizePredicate

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SAFETENSORS_SUFFIX = ".safetensors"
HEADER_LENGTH_BYTES = 8  # safetensors: little-endian u64 length of the JSON header
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit on the header size
DEFAULT_SHARD_BYTES = 5 * 1024**3  # shards written by save(), like transformers' and mlx-lm's
METADATA_KEY = "__metadata__"  # the header's one non-tensor entry: a str -> str object

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MLX_UNREADABLE_DTYPES = {"F64": "float64", "F8_E5M2": "float8 e5m2"}
"""Valid safetensors dtypes that ``mx.load`` refuses (MLX has no such array dtype); F8_E4M3 it
reads, as raw ``uint8`` bytes."""


# -- strict JSON -------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    """Raised by :func:`_unique_keys` for a JSON object that repeats a key."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` refusing repeated keys: ``json`` would silently keep the last one,
    so that two readers of the same file may disagree on what it holds."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _strict_json(path: Path, raw: bytes | str, what: str) -> Any:
    """Parse ``raw`` (the JSON ``what`` of ``path``) refusing repeated keys."""
    try:
        return json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise SafetensorsError(path, f"{what} repeats the key {e.key!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SafetensorsError(path, f"{what} is not valid JSON ({e})") from e
    except RecursionError:
        raise SafetensorsError(path, f"{what} is nested too deeply to be parsed") from None


def _is_int(value: Any) -> bool:
    """A JSON integer (``true``/``false`` are Python ints too, but not integers here)."""
    return isinstance(value, int) and not isinstance(value, bool)


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
    header = _strict_json(path, raw, "header")
    if not isinstance(header, dict):
        raise SafetensorsError(path, "header is not a JSON object")
    _check_metadata(path, header.get(METADATA_KEY))
    data_bytes = size - HEADER_LENGTH_BYTES - header_len
    tensors = {k: v for k, v in header.items() if k != METADATA_KEY}
    for name, entry in tensors.items():
        _check_entry(path, name, entry, data_bytes)
    _check_tiling(path, tensors, data_bytes)
    return tensors


def _check_metadata(path: Path, metadata: Any) -> None:
    """The optional ``__metadata__`` entry: an object of strings (the spec's ``dict[str, str]``;
    ``mx.load`` fails with a bare JSON type error on anything else)."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise SafetensorsError(path, f"{METADATA_KEY} is {type(metadata).__name__}, expected an "
                               "object of strings")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise SafetensorsError(path, f"{METADATA_KEY}[{key!r}] is "
                                   f"{type(value).__name__}, expected a string")


def _check_entry(path: Path, name: str, entry: Any, data_bytes: int) -> None:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise SafetensorsError(path, "expected an object with dtype, shape and data_offsets", name)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise SafetensorsError(path, f"unknown dtype {dtype!r}", name)
    if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
        raise SafetensorsError(path, f"shape {shape!r} is not a list of non-negative ints", name)
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(_is_int(o) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise SafetensorsError(path, f"data_offsets {offsets!r} is not [begin, end]", name)
    if offsets[1] > data_bytes:
        raise SafetensorsError(path, f"tensor extends past the end of the file (data ends at "
                               f"byte {offsets[1]}, the file holds {data_bytes}): truncated?", name)
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise SafetensorsError(path, f"holds {offsets[1] - offsets[0]} bytes, but shape {shape} "
                               f"of {dtype} needs {expected}", name)


def _check_tiling(path: Path, tensors: dict[str, Any], data_bytes: int) -> None:
    """The tensors' byte ranges must tile the data area exactly, as the safetensors spec (and
    its reference library) requires: in order of their offsets, each begins where the previous
    ended, the first at 0 and the last at the end of the file. Overlapping ranges would alias
    two tensors onto the same bytes; gaps or trailing bytes mean the file is not what it says."""
    end, previous = 0, None
    ranges = sorted(tensors.items(), key=lambda item: tuple(item[1]["data_offsets"]))
    for name, entry in ranges:
        begin, stop = entry["data_offsets"]
        if begin < end:
            raise SafetensorsError(path, f"data_offsets {entry['data_offsets']} overlap tensor "
                                   f"{previous!r} (which ends at byte {end})", name)
        if begin > end:
            raise SafetensorsError(path, f"data_offsets {entry['data_offsets']} leave bytes "
                                   f"{end}..{begin} of the data area unused (tensors must be "
                                   "contiguous)", name)
        end, previous = stop, name
    if end != data_bytes:
        raise SafetensorsError(path, f"the tensors cover {end} bytes of data, but the file holds "
                               f"{data_bytes}: trailing bytes after the last tensor")


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint, validated (index first, then single file)."""
    return list(checkpoint_headers(model_dir))


def checkpoint_headers(model_dir: Path) -> dict[Path, dict[str, Any]]:
    """``{file: {tensor name: entry}}`` for every safetensors file of the checkpoint, each
    validated; a tensor stored in two files is refused (which copy would win is arbitrary)."""
    headers: dict[Path, dict[str, Any]] = {}
    seen: dict[str, Path] = {}
    for f in _checkpoint_files(model_dir):
        header = read_safetensors_header(f)
        for name in header:
            if name in seen:
                raise SafetensorsError(f, f"tensor also stored in {seen[name].name}: refused "
                                       "(which copy to use is ambiguous)", name)
            seen[name] = f
        headers[f] = header
    return headers


def _checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / INDEX_FILE
    if index.is_file():
        return _files_from_index(model_dir, index)
    if (model_dir / SINGLE_FILE).is_file():
        return [model_dir / SINGLE_FILE]
    files = sorted(model_dir.glob(f"*{SAFETENSORS_SUFFIX}"))
    if not files:
        raise SafetensorsError(model_dir, f"no {SINGLE_FILE}, {INDEX_FILE} or other "
                               f"*{SAFETENSORS_SUFFIX} file in the model directory")
    return files


def _files_from_index(model_dir: Path, index: Path) -> list[Path]:
    """The shards an index names, in order of first mention. Each name is checked as written
    (:func:`_check_shard_name`), not by where it resolves: in the Hugging Face cache every file
    of a snapshot is a symlink into the repo's ``blobs/`` folder, outside the snapshot."""
    try:
        text = index.read_bytes()
    except OSError as e:
        raise SafetensorsError(index, f"cannot be read ({e})") from e
    data = _strict_json(index, text, "index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise SafetensorsError(index, "expected an object with a 'weight_map' object")
    files: dict[Path, None] = {}
    for tensor, name in weight_map.items():
        _check_shard_name(index, tensor, name)
        if not (model_dir / name).is_file():
            raise SafetensorsError(index, f"shard {name!r} is missing from {model_dir}", tensor)
        files[model_dir / name] = None
    return list(files)


SHARD_NAME_FORBIDDEN = ("\\", "\0", ":")
"""Characters refused in a shard name: Windows separators and drive letters, and NUL (which the
OS would cut the name at)."""


def _check_shard_name(index: Path, tensor: str, name: Any) -> None:
    """A shard name from the index: a relative ``/``-separated path inside the model directory
    (no absolute path, no empty, ``.`` or ``..`` component, no backslash, drive or NUL), ending
    in ``.safetensors``."""
    problem = None
    if not isinstance(name, str):
        problem = "is not a string"
    elif any(c in name for c in SHARD_NAME_FORBIDDEN):
        problem = "contains a backslash, colon or NUL"
    elif name.startswith("/"):
        problem = "is an absolute path"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "has an empty, '.' or '..' component: outside the model directory"
    elif not name.endswith(SAFETENSORS_SUFFIX) or name == SAFETENSORS_SUFFIX:
        problem = f"is not a *{SAFETENSORS_SUFFIX} file name"
    if problem:
        raise SafetensorsError(index, f"weight_map entry {name!r} {problem}: refused", tensor)


def load_safetensors(model_dir: Path,
                     headers: dict[Path, dict[str, Any]] | None = None) -> dict[str, mx.array]:
    """Validate, then read every tensor of a (possibly sharded) checkpoint (lazily: MLX maps
    the data when it is first used). ``headers`` from :func:`checkpoint_headers` saves reading
    them again."""
    if headers is None:
        headers = checkpoint_headers(model_dir)
    weights: dict[str, mx.array] = {}
    for f, header in headers.items():
        _check_readable(f, header)
        try:
            weights.update(mx.load(str(f)))
        except Exception as e:  # MLX raises RuntimeError, ValueError or OSError
            raise SafetensorsError(f, f"MLX could not read it ({type(e).__name__}: {e})") from e
    return weights


def _check_readable(path: Path, header: dict[str, Any]) -> None:
    """Refuse, by name, the tensors whose dtype MLX cannot represent."""
    for name, entry in header.items():
        if entry["dtype"] in MLX_UNREADABLE_DTYPES:
            raise SafetensorsError(path, f"dtype {entry['dtype']} "
                                   f"({MLX_UNREADABLE_DTYPES[entry['dtype']]}) is not supported "
                                   "by MLX: convert the checkpoint to F32, F16 or BF16", name)


def tensor_sources(headers: dict[Path, dict[str, Any]]) -> dict[str, tuple[Path, str]]:
    """``{tensor name: (file, stored dtype)}`` from :func:`checkpoint_headers`."""
    return {name: (f, entry["dtype"]) for f, header in headers.items()
            for name, entry in header.items()}


# -- plausibility of the config against the headers --------------------------------------------

LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
"""A decoder layer's index in a tensor name: ``model.layers.3.mlp...``,
``language_model.model.layers.3...``."""
LAYER_COUNT_KEY = "num_hidden_layers"
NESTED_CONFIG_KEYS = ("text_config",)  # sections holding their own num_hidden_layers
MIN_BITS_PER_VALUE = 1
"""The fewest bits a stored value takes (1-bit quantization): a vocab_size x hidden_size
embedding therefore holds at least vocab_size * hidden_size / 8 bytes in some tensor."""
BITS_PER_BYTE = 8


def check_config_plausible(raw: dict[str, Any], headers: dict[Path, dict[str, Any]],
                           config_path: Path | str) -> None:
    """Refuse a config.json describing a model far larger than its checkpoint, from the headers
    alone and before the model is built: a ``num_hidden_layers`` of a million would otherwise
    build a million modules (many GiB) before the strict key check could fail.

    Checks ``num_hidden_layers`` (top level and ``text_config``) against the layer indices the
    tensor names hold, and ``vocab_size * hidden_size`` against the largest tensor. Checkpoints
    without ``layers.<i>.`` names are not judged on their layer count."""
    entries = [entry for header in headers.values() for entry in header.values()]
    indices = {int(m.group(1)) for header in headers.values() for name in header
               for m in LAYER_INDEX.finditer(name)}
    largest = max((entry["data_offsets"][1] - entry["data_offsets"][0] for entry in entries),
                  default=0)
    sections = [("", raw)] + [(f"{key}.", raw[key]) for key in NESTED_CONFIG_KEYS
                              if isinstance(raw.get(key), dict)]
    for prefix, section in sections:
        layers = section.get(LAYER_COUNT_KEY)
        if indices and _is_int(layers) and layers > max(indices) + 1:
            raise ConfigError(config_path, f"{layers} layers, but the checkpoint's tensors hold "
                              f"layers 0..{max(indices)} only ({len(indices)} distinct indices)",
                              prefix + LAYER_COUNT_KEY)
        vocab, hidden = section.get("vocab_size"), section.get("hidden_size")
        if entries and _is_int(vocab) and _is_int(hidden) and vocab > 0 and hidden > 0:
            needed = vocab * hidden * MIN_BITS_PER_VALUE // BITS_PER_BYTE
            if needed > largest:
                raise ConfigError(config_path, f"vocab_size {vocab} x hidden_size {hidden} needs "
                                  f"an embedding of at least {needed} bytes, but the largest "
                                  f"tensor of the checkpoint holds {largest}",
                                  prefix + "vocab_size")


# -- the strict checks -------------------------------------------------------------------------


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


def dtype_kind(dtype: mx.Dtype) -> str:
    """``"bool"``, ``"integer"``, ``"floating"`` or ``"complex"``: values of one kind cannot
    stand in for another's (bits of an int32 are not a float32 weight)."""
    if dtype == mx.bool_:
        return "bool"
    if mx.issubdtype(dtype, mx.complexfloating):
        return "complex"
    if mx.issubdtype(dtype, mx.floating):
        return "floating"
    return "integer"


def check_dtypes(model: nn.Module, weights: dict[str, mx.array], where: Path | str,
                 sources: dict[str, tuple[Path, str]] | None = None) -> None:
    """Refuse a tensor whose dtype is of another kind than its parameter's (an integer tensor
    for a floating weight would load as garbage). Quantized layers' packed weights are uint32
    parameters, so the check runs once :func:`apply_quantization` has made them. ``sources``
    (:func:`tensor_sources`) names the file and stored dtype of each tensor where known."""
    params = dict(tree_flatten(model.parameters()))
    bad = [k for k in sorted(params.keys() & weights.keys())
           if dtype_kind(weights[k].dtype) != dtype_kind(params[k].dtype)]
    if not bad:
        return
    name = bad[0]
    got, want = weights[name].dtype, params[name].dtype
    path, stored = (sources or {}).get(name, (where, None))
    as_stored = f" (stored as {stored})" if stored else ""
    more = f"; {len(bad) - 1} more tensors likewise: {', '.join(bad[1:])}" if len(bad) > 1 else ""
    raise SafetensorsError(path, f"dtype {_dtype_name(got)}{as_stored} does not fit the model's "
                           f"{_dtype_name(want)} parameter ({dtype_kind(want)} expected, "
                           f"{dtype_kind(got)} found){more}", name)


def _dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).removeprefix("mlx.core.")


# -- quantization ------------------------------------------------------------------------------

# QUANTIZATION_KEY (mlx_zoo.config): config.json's ``quantization`` entry, written by mlx-lm's
# convert: ``{"group_size", "bits", "mode"?}`` plus per-layer overrides keyed by module path
# (``false`` to keep a layer in full precision, ``true`` for the global settings, or its own
# ``{"group_size", "bits", "mode"?}``).
GLOBAL_QUANT_KEYS = ("group_size", "bits", "mode")
LAYER_QUANT_KEYS = frozenset({"group_size", "bits", "mode", "quantize_input"})
"""Keys a per-layer override may hold: the arguments of MLX's ``to_quantized``."""
DEFAULT_QUANT_MODE = "affine"


class QuantMode(NamedTuple):
    """What ``mx.quantize`` accepts for one mode (MLX 0.32); a group size of 0 or one that does
    not divide the rows would otherwise crash the process (SIGFPE) or fail deep inside MLX."""

    group_sizes: tuple[int, ...]
    bits: tuple[int, ...]
    default_group_size: int  # what MLX uses when group_size is omitted or null
    default_bits: int


QUANT_MODES = {
    "affine": QuantMode((32, 64, 128), (1, 2, 3, 4, 5, 6, 8), 64, 4),
    "mxfp4": QuantMode((32,), (4,), 32, 4),
    "nvfp4": QuantMode((16,), (4,), 16, 4),
    "mxfp8": QuantMode((32,), (8,), 32, 8),
}


def quant_params_problem(params: dict[str, Any]) -> tuple[str, str] | None:
    """``(key, what is wrong)`` for the first invalid ``mode``/``group_size``/``bits``/
    ``quantize_input`` in ``params``, or ``None``. An omitted size is MLX's default for the
    mode; one given as null is refused (MLX would silently put its default in its place, which
    need not be what wrote the weights)."""
    mode = params.get("mode", DEFAULT_QUANT_MODE)
    if not isinstance(mode, str) or mode not in QUANT_MODES:
        return "mode", f"{mode!r} is not a quantization mode (one of {', '.join(QUANT_MODES)})"
    allowed = QUANT_MODES[mode]
    for key, choices in (("group_size", allowed.group_sizes), ("bits", allowed.bits)):
        value = params.get(key)
        if key in params and (not _is_int(value) or value not in choices):
            return key, (f"{value!r} is not supported by MLX for mode {mode!r} "
                         f"(one of {', '.join(map(str, choices))})")
    if not isinstance(params.get("quantize_input", False), bool):
        return "quantize_input", f"{params['quantize_input']!r} is not true or false"
    return None


def effective_group_size(params: dict[str, Any]) -> int:
    """The group size MLX quantizes with for (valid) ``params``."""
    mode = QUANT_MODES[params.get("mode", DEFAULT_QUANT_MODE)]
    return params.get("group_size") or mode.default_group_size


def validate_quantization(quantization: Any, where: Path | str = CONFIG_FILE) -> None:
    """Check config.json's whole ``quantization`` block before it is used; a
    :class:`ConfigError` names the key (``quantization.group_size``,
    ``quantization["model.layers.0.mlp"].bits``)."""
    if not isinstance(quantization, dict):
        raise ConfigError(where, f"expected an object, got {type(quantization).__name__}",
                          QUANTIZATION_KEY)
    problem = quant_params_problem({k: quantization[k] for k in GLOBAL_QUANT_KEYS
                                    if k in quantization})
    if problem:
        raise ConfigError(where, problem[1], f"{QUANTIZATION_KEY}.{problem[0]}")
    for path, value in quantization.items():
        if path in GLOBAL_QUANT_KEYS or isinstance(value, bool):
            continue
        key = f"{QUANTIZATION_KEY}[{json.dumps(path)}]"
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected false, true or an object with group_size, bits "
                              f"and mode, got {value!r}", key)
        unknown = sorted(value.keys() - LAYER_QUANT_KEYS)
        if unknown:
            raise ConfigError(where, f"unknown keys {unknown} (expected "
                              f"{', '.join(sorted(LAYER_QUANT_KEYS))})", key)
        problem = quant_params_problem(value)
        if problem:
            raise ConfigError(where, problem[1], f"{key}.{problem[0]}")


def apply_quantization(model: nn.Module, quantization: dict[str, Any],
                       weights: dict[str, mx.array], where: Path | str = CONFIG_FILE) -> None:
    """Turn the layers the checkpoint stores quantized into quantized layers, in place, once
    the block is validated (:func:`validate_quantization`; ``where`` names config.json)."""
    validate_quantization(quantization, where)
    paths = {name for name, _ in model.named_modules()}
    overrides = {_module_path(k, paths): v for k, v in quantization.items()
                 if k not in GLOBAL_QUANT_KEYS}
    global_params = {k: quantization[k] for k in GLOBAL_QUANT_KEYS if k in quantization}

    def predicate(path: str, module: nn.Module):
        if path in overrides:
            decision = overrides[path]
            decision = dict(decision) if isinstance(decision, dict) else decision  # MLX pops
        else:
            decision = hasattr(module, "to_quantized") and f"{path}.scales" in weights
        if decision:
            params = decision if isinstance(decision, dict) else global_params
            _check_quantizable(path, module, effective_group_size(params), where)
        return decision

    try:
        nn.quantize(model, group_size=quantization.get("group_size"),
                    bits=quantization.get("bits"),
                    mode=quantization.get("mode", DEFAULT_QUANT_MODE), class_predicate=predicate)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(where, f"MLX could not quantize the model as configured ({e})",
                          QUANTIZATION_KEY) from e


def _module_path(key: str, paths: set[str]) -> str:
    """The model's module path for a per-layer quantization key. mlx-lm keys them by *its*
    module paths, which for some layouts carry a prefix the plugin's ``sanitize`` strips from
    the tensor names (Llama 4's published layout: ``language_model.model.layers.1...``); such a
    key is matched by its longest suffix that is one of this model's module paths."""
    if key in paths:
        return key
    parts = key.split(".")
    for start in range(1, len(parts)):
        suffix = ".".join(parts[start:])
        if suffix in paths:
            return suffix
    return key


def _check_quantizable(path: str, module: nn.Module, group_size: int, where: Path | str) -> None:
    """A layer config.json says is quantized must be able to be: a layer with ``to_quantized``
    whose input size divides by the group size."""
    key = f"{QUANTIZATION_KEY}[{json.dumps(path)}]"
    if not hasattr(module, "to_quantized"):
        raise ConfigError(where, f"layer {path!r} ({type(module).__name__}) cannot be quantized",
                          key)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.shape[-1] % group_size:
        raise ConfigError(where, f"layer {path!r} has input size {weight.shape[-1]}, not "
                          f"divisible by the group size {group_size}", key)


def quantize_model(model: nn.Module, config: Any, *, bits: int = 4, group_size: int = 64,
                   mode: str = "affine") -> dict[str, Any]:
    """Quantize ``model`` in place (layers its ``quantize_predicate`` allows, whose input size
    divides by ``group_size``) and record the result in ``config`` so that :func:`mlx_zoo.save`
    writes a checkpoint mlx-zoo and mlx-lm load. Returns the ``quantization`` entry.

    Arguments MLX does not support for ``mode`` (see :data:`QUANT_MODES`) raise
    :class:`QuantizationError`, and so does a model none of whose layers can be quantized (the
    model and ``config`` are then left as they were).

    A fused model (:mod:`mlx_zoo.fusion`) is unfused first, so that the predicate, the
    per-layer entries and the checkpoint see the separate projections, and fused again after
    (groups quantized differently stay separate)."""
    quantization: dict[str, Any] = {"group_size": group_size, "bits": bits, "mode": mode}
    problem = quant_params_problem(quantization)
    if problem:
        raise QuantizationError(f"quantize(): {problem[0]} {problem[1]}")
    was_fused = unfuse_projections(model) > 0
    own = model.quantize_predicate if isinstance(model, QuantizePredicate) else None
    quantized: list[str] = []

    def predicate(path: str, module: nn.Module):
        if not hasattr(module, "to_quantized"):
            return False
        decision = own(path, module) if own else True
        if not decision:
            if decision is False:
                quantization[path] = False
            return False
        if isinstance(decision, dict):
            layer_problem = quant_params_problem(decision)
            if layer_problem:
                raise QuantizationError(f"quantize(): the model's quantize_predicate gives "
                                        f"layer {path!r} {layer_problem[0]} {layer_problem[1]}")
        params = decision if isinstance(decision, dict) else quantization
        weight = getattr(module, "weight", None)
        if weight is not None and weight.shape[-1] % effective_group_size(params):
            return False
        if isinstance(decision, dict):
            quantization[path] = decision
            decision = dict(decision)  # MLX may pop keys from what it is given
        quantized.append(path)
        return decision

    try:
        nn.quantize(model, group_size=group_size, bits=bits, mode=mode,
                    class_predicate=predicate)
    finally:
        if was_fused:
            fuse_projections(model)
    if not quantized:
        raise QuantizationError(f"quantize(): no layer could be quantized with group_size "
                                f"{group_size} (already quantized, excluded by the model's "
                                "quantize_predicate, or input sizes not divisible by it)")
    if isinstance(config, dict):
        config[QUANTIZATION_KEY] = quantization
        config[QUANTIZATION_CONFIG_KEY] = quantization  # the key transformers' readers look for
    else:
        config.set_quantization(quantization)  # mlx_zoo.BaseModelArgs
    return quantization


# -- saving ------------------------------------------------------------------------------------

TMP_TAG, OLD_TAG = "tmp", "old"
"""Siblings of the target made while saving: ``.<name>.tmp-XXXX`` (the new checkpoint being
written) and ``.<name>.old-XXXX`` (the previous one, deleted once the new one is in place)."""


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
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 files: dict[str, str] | None = None) -> None:
    """Write ``weights`` as ``model.safetensors``, or as numbered shards with an index, plus
    ``files`` (``{name: text}``, e.g. config.json), atomically: everything is written into a
    fresh directory beside ``path`` and swapped in only once complete
    (:func:`replace_directory`), so a failure -- a full disk, an error at the third shard --
    leaves ``path`` as it was. Files of an existing ``path`` that are not part of the
    checkpoint (tokenizer, README, ...) are carried over."""
    with replace_directory(path) as tmp:
        _write_checkpoint(tmp, weights, max_shard_bytes)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")


def _write_checkpoint(path: Path, weights: dict[str, mx.array], max_shard_bytes: int) -> None:
    shards = list(_shards(weights, max_shard_bytes))
    if len(shards) == 1:
        mx.save_safetensors(str(path / SINGLE_FILE), shards[0], metadata={"format": "mlx"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}{SAFETENSORS_SUFFIX}"
        mx.save_safetensors(str(path / name), shard, metadata={"format": "mlx"})
        weight_map.update({k: name for k in shard})
    index = {"metadata": {"total_size": sum(a.nbytes for a in weights.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    (path / INDEX_FILE).write_text(json.dumps(index, indent=2), encoding="utf-8")


def is_checkpoint_file(name: str) -> bool:
    """Files a save replaces rather than carries over: weights, the index and config.json."""
    return name.endswith(SAFETENSORS_SUFFIX) or name in (INDEX_FILE, CONFIG_FILE)


@contextlib.contextmanager
def replace_directory(path: Path | str) -> Iterator[Path]:
    """``with replace_directory(path) as tmp:`` -- fill ``tmp``, a new directory beside
    ``path``; when the block completes, ``tmp`` replaces ``path`` (:func:`swap_in_directory`),
    after the old directory's non-checkpoint files (:func:`is_checkpoint_file`) are copied into
    it. On any
    error ``tmp`` is removed and ``path`` is left as it was; ``OSError`` and MLX's write errors
    become :class:`SaveError` naming ``path``. Missing parents are created."""
    path = Path(path)
    tmp = sibling_directory(path, TMP_TAG)
    try:
        yield tmp
        _carry_over(path, tmp)
        swap_in_directory(tmp, path)
    except MlxZooError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (OSError, RuntimeError, ValueError) as e:  # what file and MLX's writes raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaveError(path, f"could not write the checkpoint ({type(e).__name__}: {e}); "
                        "the previous contents are unchanged") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sibling_directory(path: Path, tag: str) -> Path:
    """A new, empty, uniquely named directory ``.<name>.<tag>-XXXX`` beside ``path`` (on the
    same file system, so that renames between them are atomic); parents are created."""
    if path.exists() and not path.is_dir():
        raise SaveError(path, "exists and is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.{tag}-", dir=path.parent))
    except OSError as e:
        raise SaveError(path, f"cannot create a directory beside it to write into ({e})") from e


def _carry_over(target: Path, tmp: Path) -> None:
    """Copy (:func:`_carry_file`) what ``target`` holds besides the checkpoint into ``tmp``, so
    that saving over a model directory keeps its tokenizer and the like."""
    if not target.is_dir():
        return
    for item in target.iterdir():
        if is_checkpoint_file(item.name) or (tmp / item.name).exists():
            continue
        if item.is_dir():
            shutil.copytree(item, tmp / item.name, symlinks=True)
        elif item.is_symlink() and not item.exists():  # a dangling link: kept as it is
            os.symlink(os.readlink(item), tmp / item.name)
        else:
            _carry_file(item, tmp / item.name, shared=target.is_symlink())


def _carry_file(src: Path, dst: Path, shared: bool) -> None:
    """Hard-link ``src`` to ``dst`` when ``src``'s directory is about to be deleted and the file
    has no other name (then no alias survives the save: cheap for large extras); copy it
    otherwise -- a link into the Hugging Face cache's blobs, a file of a directory that stays
    (``shared``) -- so that editing one copy can never change the other."""
    if not shared and not src.is_symlink() and src.stat().st_nlink == 1:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not supported: copy
            pass
    shutil.copy2(src, dst)


def swap_in_directory(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first and deleted
    after (put back if the rename fails)."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = sibling_directory(target, OLD_TAG)
    old.rmdir()  # only its unique name was wanted
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    if old.is_symlink():  # the target was a link to a directory: only the link is replaced
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


# -- dequantisation (load(dequantize=...)) -------------------------------------------------------


def _dense_linear(layer, dtype):
    weight = _dequantized_weight(layer, dtype)
    out_dims, in_dims = weight.shape
    dense = nn.Linear(in_dims, out_dims, bias="bias" in layer)
    dense.weight = weight
    if "bias" in layer:
        dense.bias = layer.bias.astype(weight.dtype)
    mx.eval(dense.parameters())
    return dense


def _dense_embedding(layer, dtype):
    weight = _dequantized_weight(layer, dtype)
    dense = nn.Embedding(*weight.shape)
    dense.weight = weight
    mx.eval(dense.parameters())
    return dense


def _dense_switch_linear(layer, dtype):
    from .layers import SwitchLinear

    weight = _dequantized_weight(layer, dtype)
    experts, out_dims, in_dims = weight.shape
    dense = SwitchLinear(in_dims, out_dims, experts, bias="bias" in layer)
    dense.weight = weight
    if "bias" in layer:
        dense.bias = layer.bias.astype(weight.dtype)
    mx.eval(dense.parameters())
    return dense


def _dequantized_weight(layer, dtype):
    weight = mx.dequantize(layer["weight"], layer["scales"], layer.get("biases"),
                           group_size=layer.group_size, bits=layer.bits,
                           mode=getattr(layer, "mode", "affine"))
    return weight.astype(dtype or layer["scales"].dtype)


def dequantize_model(model, dtype=None) -> int:
    """Replace every quantized layer of ``model`` (``QuantizedLinear``, ``QuantizedEmbedding``,
    :class:`~mlx_zoo.layers.QuantizedSwitchLinear`) by its dense counterpart holding the
    dequantized weights, in ``dtype`` (default: the dtype of its scales). Layer by layer, so
    that at most one dense copy is in flight. Returns the number of layers replaced."""
    from .layers import QuantizedSwitchLinear

    converters = ((nn.QuantizedLinear, _dense_linear), (nn.QuantizedEmbedding, _dense_embedding),
                  (QuantizedSwitchLinear, _dense_switch_linear))
    replaced = []
    for path, module in model.named_modules():
        for cls, convert in converters:
            if isinstance(module, cls):
                replaced.append((path, convert(module, dtype)))
                break
    if replaced:
        model.update_modules(tree_unflatten(replaced))
    return len(replaced)
