"""Reading ``config.json`` into typed form.

Two dialects of config.json are in the wild and both are read into one form:

* published checkpoints (transformers < 5): ``rope_theta`` at the top level and the RoPE scaling
  under ``rope_scaling``, whose kind is keyed ``type`` (older) or ``rope_type``;
* transformers >= 5 saves: ``rope_parameters`` holding ``rope_theta``, ``rope_type`` and the
  scaling parameters together.

:func:`normalize_config` rewrites either into ``rope_theta`` (a float) plus ``rope_scaling`` (a
:class:`RopeScaling` with ``rope_type`` set, or ``None`` for plain RoPE), recursively for nested
``text_config`` sections. Plugins then declare their fields as a dataclass derived from
:class:`BaseModelArgs`, whose :meth:`~BaseModelArgs.from_dict` checks the type of every field --
strictly: ``"2"`` is no number -- and the range the field declares (:class:`Range`,
:data:`PositiveInt` and friends; every float must be finite), then the checks across fields
(:class:`Divides`, the RoPE scaling, a plugin's own :meth:`~BaseModelArgs.validate`), and names
the file and key of any failure in a :class:`~mlx_zoo.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypedDict

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
    for key in NESTED_CONFIGS:
        if isinstance(config.get(key), dict):
            try:
                config[key] = normalize_config(config[key], path)
            except ConfigError as error:
                raise nested_error(error, key) from None
    return config


NESTED_CONFIGS = ("text_config",)
"""Sections normalised like the top level (multimodal checkpoints nest the language model)."""


def nested_error(error: ConfigError, section: str) -> ConfigError:
    """``error`` with its key named as it sits in ``section`` (``text_config.rope_scaling``)."""
    if error.key is None:
        return error
    prefix = str(ConfigError(error.path, "", key=error.key))  # "<file>, key '<key>': "
    return ConfigError(error.path, str(error).removeprefix(prefix),
                       key=f"{section}.{error.key}")


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

MAX_SIZE = 2**31 - 1
"""Largest count or width a config may give: MLX array shapes and indices are 32-bit signed
integers, so a dimension beyond it overflows (and a model that size would not fit anyway)."""

FLOAT32_MAX = 3.4028234663852886e38
"""Largest finite float32. MLX computes in float32 (or narrower): a config float of greater
magnitude becomes infinity there, so it is refused like ``NaN`` and ``Infinity`` (which
Python's json module accepts)."""


@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric field's allowed interval, declared on its type:
    ``Annotated[int, Range(1, MAX_SIZE)]``. ``exclusive_low`` makes the lower bound strict."""

    low: float
    high: float
    exclusive_low: bool = False

    def check(self, value: float, key: str, path: Path | str | None, where: str = "") -> None:
        too_low = value <= self.low if self.exclusive_low else value < self.low
        if too_low or value > self.high:
            raise ConfigError(path, f"{where}expected {self.describe()}, got {value!r}", key=key)

    def describe(self) -> str:
        low = f"> {self.low:g}" if self.exclusive_low else f">= {self.low:g}"
        if self.high >= FLOAT32_MAX:
            return f"a value {low}"
        high = "2**31 - 1" if self.high == MAX_SIZE else f"{self.high:g}"
        return f"a value {low} and <= {high}"


@dataclasses.dataclass(frozen=True)
class Divides:
    """Cross-field constraint, declared on the divisor's type: the field's value divides field
    ``other`` (e.g. key/value heads divide attention heads, for grouped-query attention).

    Checked once the dataclass is built (after ``__post_init__`` fills derived defaults). When
    config.json gives one of the ``unless_given`` keys (non-null), the division is not needed and
    the check is skipped -- e.g. ``hidden_size // num_attention_heads`` is the head width only
    when ``head_dim`` is absent."""

    other: str
    unless_given: tuple[str, ...] = ()


PositiveInt = Annotated[int, Range(1, MAX_SIZE)]
"""A count or width: head counts, layer counts, sizes, experts, top-k, chunk lengths."""
NonNegativeInt = Annotated[int, Range(0, MAX_SIZE)]
"""A count that may be zero (e.g. a number of optional shared experts) or an index."""
PositiveFloat = Annotated[float, Range(0, FLOAT32_MAX, exclusive_low=True)]
"""A scale, base or divisor: ``rope_theta``, RoPE factors, Llama 4's ``floor_scale``, and
``rms_norm_eps`` (MLX's RMSNorm refuses 0)."""
NonNegativeFloat = Annotated[float, Range(0, FLOAT32_MAX)]
"""A strength or coefficient that may be zero (Llama 4's ``attn_scale``, yarn's ``mscale``)."""


@dataclasses.dataclass
class BaseModelArgs:
    """Base of every plugin's config dataclass.

    :meth:`from_dict` keeps only the fields the dataclass declares (config.json carries many more),
    checks that required ones are present and that every value has the declared type and lies in
    its declared range, runs :meth:`validate` for checks across fields, and remembers the full
    dictionary (:meth:`to_dict`) so that :func:`mlx_zoo.save` writes it back.

    Plugins *declare* their constraints on the field types (:func:`check_value` enforces them):

    * every ``float`` field must be finite (no NaN or Infinity, within float32) -- automatic;
    * a range with :class:`Range` in ``Annotated``, usually through :data:`PositiveInt`,
      :data:`NonNegativeInt`, :data:`PositiveFloat` or :data:`NonNegativeFloat`; ``list[...]``
      fields check every entry, :class:`RopeScaling` fields every key it declares;
    * divisibility between fields with :class:`Divides`;
    * a ``rope_scaling`` field is checked against the RoPE variant it selects
      (:func:`mlx_zoo.rope.validate_rope_scaling`), with the dataclass's ``head_dim``,
      ``rope_theta``, ``max_position_embeddings`` and ``rope_type`` attributes where it has them.

    Anything else a plugin overrides :meth:`validate` for (calling ``super().validate(path)``).
    """

    @classmethod
    def from_dict(cls, config: dict[str, Any], path: Path | str | None = None):
        hints = typing.get_type_hints(cls, include_extras=True)
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
            values[field.name] = check_value(config[field.name], hints[field.name],
                                             field.name, path)
        args = cls(**values)
        object.__setattr__(args, "_source", dict(config))
        object.__setattr__(args, "_source_path", path)
        args.validate(path)
        return args

    def validate(self, path: Path | str | None = None) -> None:
        """Checks across fields, run by :meth:`from_dict` once every field has its type and range
        (so no check here divides by zero): the :class:`Divides` declarations and the RoPE
        scaling. Plugins extend it and raise :class:`ConfigError` naming the file and key."""
        hints = typing.get_type_hints(type(self), include_extras=True)
        given = getattr(self, "_source", {})
        for field in dataclasses.fields(self):
            for rule in _markers(hints[field.name], Divides):
                if any(given.get(key) is not None for key in rule.unless_given):
                    continue
                divisor, total = getattr(self, field.name), getattr(self, rule.other)
                if divisor is not None and total is not None and total % divisor:
                    raise ConfigError(path, f"{divisor} does not divide {rule.other} = {total}; "
                                      f"expected a divisor of it", key=field.name)
        if any(field.name == "rope_scaling" for field in dataclasses.fields(self)):
            from .rope import validate_rope_scaling  # rope.py imports this module

            validate_rope_scaling(self.rope_scaling, getattr(self, "head_dim", None), path,
                                  base=getattr(self, "rope_theta", None),
                                  max_position_embeddings=getattr(self, "max_position_embeddings",
                                                                  None),
                                  rope_type=getattr(self, "rope_type", None))

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
    tp, _ = _unannotated(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"list[{_type_name(item)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _unannotated(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """``Annotated[T, m1, m2]`` -> ``(T, (m1, m2))``; any other type -> ``(tp, ())``."""
    if typing.get_origin(tp) is typing.Annotated:
        return tp.__origin__, tp.__metadata__
    return tp, ()


def _markers(tp: Any, kind: type) -> list[Any]:
    """The ``kind`` markers in ``tp``'s annotations, looking inside unions (``X | None``)."""
    tp, metadata = _unannotated(tp)
    found = [m for m in metadata if isinstance(m, kind)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            found += _markers(arg, kind)
    return found


def check_value(value: Any, tp: Any, key: str, path: Path | str | None = None) -> Any:
    """Check ``value`` against the declared type ``tp`` and its constraints; return it (an int
    given for a ``float`` as that float: lossless) or raise a :class:`ConfigError` naming
    ``path`` and ``key``.

    Types are strict -- ``"2"`` is no number and ``1`` no bool; ``float`` values must be finite
    (:data:`FLOAT32_MAX`); ``Annotated`` :class:`Range` markers bound numbers; ``list[T]`` checks
    each entry (and is returned unchanged), a ``TypedDict`` (:class:`RopeScaling`) each key it
    declares (null meaning absent), ``X | Y`` the first alternative of the right kind."""
    return _check(value, tp, key, path, "")


def _check(value: Any, tp: Any, key: str, path: Path | str | None, where: str) -> Any:
    """:func:`check_value`; ``where`` prefixes the message (which list entry is wrong)."""
    tp, metadata = _unannotated(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        arm = next((arg for arg in typing.get_args(tp) if _matches(value, arg)), None)
        if arm is None:
            raise _type_error(value, tp, key, path, where)
        value = _check(value, arm, key, path, where)
    elif not _matches(value, tp):
        raise _type_error(value, tp, key, path, where)
    elif tp is float:
        value = float(value)
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            raise ConfigError(path, f"{where}expected a finite number (within float32), got "
                              f"{value!r}", key=key)
    elif origin is list and typing.get_args(tp):
        (item,) = typing.get_args(tp)
        for index, entry in enumerate(value):
            _check(entry, item, key, path, f"{where}entry {index}: ")
    elif isinstance(tp, type) and typing.is_typeddict(tp):
        for name, item in typing.get_type_hints(tp, include_extras=True).items():
            if value.get(name) is not None:
                _check(value[name], item, f"{key}.{name}", path, where)
    elif dataclasses.is_dataclass(tp) and isinstance(value, dict):
        value = tp.from_dict(value, path) if hasattr(tp, "from_dict") else tp(**value)
    for rule in metadata:
        if isinstance(rule, Range):
            rule.check(value, key, path, where)
    return value


def _type_error(value: Any, tp: Any, key: str, path: Path | str | None,
                where: str) -> ConfigError:
    return ConfigError(path, f"{where}expected {_type_name(tp)}, got {type(value).__name__} "
                       f"{value!r}", key=key)


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of ``tp``'s kind (the outer type only: no ranges, no entries)."""
    tp, _ = _unannotated(tp)
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
