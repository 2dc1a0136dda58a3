"""Reading ``config.json`` into typed form.

Two dialects of config.json are in the wild and both are read into one form:

* published checkpoints (transformers < 5): ``rope_theta`` at the top level and the RoPE scaling
  under ``rope_scaling``, whose kind is keyed ``type`` (older) or ``rope_type``;
* transformers >= 5 saves: ``rope_parameters`` holding ``rope_theta``, ``rope_type`` and the
  scaling parameters together.

:func:`normalize_config` rewrites either into ``rope_theta`` (a float) plus ``rope_scaling`` (a
:class:`RopeScaling` with ``rope_type`` set, or ``None`` for plain RoPE), recursively for nested
``text_config`` sections. Plugins then declare their fields as a dataclass derived from
:class:`BaseModelArgs`, whose :meth:`~BaseModelArgs.from_dict` checks the type of every field and
names the file and key of any mismatch.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypedDict

from .errors import ConfigError

CONFIG_FILE = "config.json"

_DEFAULT_ROPE_TYPE = "default"


class RopeScaling(TypedDict, total=False):
    """Hugging Face's RoPE-scaling parameters, normalised (``rope_type`` always present).

    Which keys a variant reads is documented on its class in :mod:`mlx_zoo.rope`.
    """

    rope_type: str  # registry key: default, linear, dynamic, yarn, longrope, llama3, or a plugin's
    factor: float  # context-extension factor (linear, dynamic, yarn, llama3, longrope)
    original_max_position_embeddings: int  # context length the model was pre-trained with
    low_freq_factor: float  # llama3: wavelengths above orig_max/low_freq_factor are scaled fully
    high_freq_factor: float  # llama3: wavelengths below orig_max/high_freq_factor are kept
    beta_fast: float  # yarn: rotations per context above which a dimension is extrapolated
    beta_slow: float  # yarn: rotations per context below which a dimension is interpolated
    mscale: float  # yarn (DeepSeek form): attention-scale coefficient
    mscale_all_dim: float  # yarn (DeepSeek form): attention-scale coefficient of the baseline
    attention_factor: float  # yarn/longrope: explicit attention (cos/sin) scale
    truncate: bool  # yarn: round the correction range to whole dimensions (default True)
    short_factor: list[float]  # longrope: per-dimension rescale within the original context
    long_factor: list[float]  # longrope: per-dimension rescale beyond it
    alpha: float  # dynamic NTK-alpha (HunYuan): base = theta * alpha ** (d / (d - 2))


def read_config(model_dir: Path | str) -> dict[str, Any]:
    """Read and normalise ``model_dir/config.json``; it must hold a JSON object with model_type."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(path, "file not found: a checkpoint directory must contain config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(path, f"not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ConfigError(path, f"expected a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type is None:
        raise ConfigError(path, "missing; every checkpoint names its architecture here",
                          key="model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ConfigError(path, f"expected a non-empty string, got {model_type!r}",
                          key="model_type")
    return normalize_config(config, path)


def normalize_config(config: dict[str, Any], path: Path | str | None = None) -> dict[str, Any]:
    """Return a copy of ``config`` with RoPE settings in one form (see the module docstring)."""
    config = dict(config)
    params = config.pop("rope_parameters", None)
    if params is not None:
        if not isinstance(params, dict):
            raise ConfigError(path, f"expected an object, got {type(params).__name__}",
                              key="rope_parameters")
        params = dict(params)
        if "rope_theta" in params:
            config["rope_theta"] = params.pop("rope_theta")
        config["rope_scaling"] = params
    config["rope_scaling"] = normalize_rope_scaling(config.get("rope_scaling"), path)
    for key in ("text_config",):
        if isinstance(config.get(key), dict):
            config[key] = normalize_config(config[key], path)
    return config


def normalize_rope_scaling(scaling: Any, path: Path | str | None = None) -> RopeScaling | None:
    """``rope_scaling`` with its kind under ``rope_type``; ``None`` for plain RoPE."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ConfigError(path, f"expected an object or null, got {scaling!r}", key="rope_scaling")
    scaling = dict(scaling)
    kind = scaling.pop("type", None)
    scaling.setdefault("rope_type", kind or _DEFAULT_ROPE_TYPE)
    if not isinstance(scaling["rope_type"], str):
        raise ConfigError(path, f"expected a string, got {scaling['rope_type']!r}",
                          key="rope_scaling.rope_type")
    # transformers >= 5 writes {"rope_type": "default"} for plain RoPE: the same as no scaling.
    if scaling["rope_type"] == _DEFAULT_ROPE_TYPE and len(scaling) == 1:
        return None
    return RopeScaling(**scaling)


# -- typed model arguments ---------------------------------------------------------------------


@dataclasses.dataclass
class BaseModelArgs:
    """Base of every plugin's config dataclass.

    :meth:`from_dict` keeps only the fields the dataclass declares (config.json carries many more),
    checks that required ones are present and that every value has the declared type, and
    remembers the full dictionary (:meth:`to_dict`) so that :func:`mlx_zoo.save` writes it back.
    """

    @classmethod
    def from_dict(cls, config: dict[str, Any], path: Path | str | None = None):
        hints = typing.get_type_hints(cls)
        values = {}
        for field in dataclasses.fields(cls):
            if not field.init:
                continue
            if field.name not in config:
                no_default = (field.default is dataclasses.MISSING
                              and field.default_factory is dataclasses.MISSING)
                if no_default:
                    raise ConfigError(path, f"missing; {cls.__name__} requires it "
                                      f"({_type_name(hints[field.name])})", key=field.name)
                continue
            values[field.name] = _check_type(config[field.name], hints[field.name],
                                             field.name, path)
        args = cls(**values)
        object.__setattr__(args, "_source", dict(config))
        object.__setattr__(args, "_source_path", path)
        return args

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a config.json dictionary (the file's other keys preserved)."""
        source = dict(getattr(self, "_source", {}))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if dataclasses.is_dataclass(value):
                value = value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value)
            if _same_number(source.get(field.name), value):
                continue  # keep 10000 as 10000, not 10000.0: some readers type-check integers
            source[field.name] = value
        return source


def _same_number(original: Any, value: Any) -> bool:
    """True when ``value`` is the float that ``from_dict`` made of the integer ``original``."""
    return (isinstance(original, int) and not isinstance(original, bool)
            and isinstance(value, float) and value == original)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_type(value: Any, tp: Any, key: str, path: Path | str | None) -> Any:
    """Return ``value`` converted where lossless (int -> float), or raise a :class:`ConfigError`."""
    if _matches(value, tp):
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            return tp.from_dict(value, path) if hasattr(tp, "from_dict") else tp(**value)
        return value
    raise ConfigError(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}",
                      key=key)


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (dict, tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin is not None:  # list[int], dict[str, Any], RopeScaling-like generics
        return isinstance(value, origin)
    if isinstance(tp, type):
        if typing.is_typeddict(tp):
            return isinstance(value, dict)
        return isinstance(value, tp)
    return True
