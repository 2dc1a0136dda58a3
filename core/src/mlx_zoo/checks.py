"""Declared checks of config values: strict types, ranges and cross-field markers.

A plugin's config dataclass (:class:`mlx_zoo.BaseModelArgs`) declares its constraints on the
field types, and :func:`check_value` enforces them:

* every ``float`` must be finite (no NaN or Infinity, within float32) -- automatic;
* a range with :class:`Range` in ``Annotated``, usually through :data:`PositiveInt`,
  :data:`NonNegativeInt`, :data:`PositiveFloat` or :data:`NonNegativeFloat`; ``list[...]``
  values check every entry, ``TypedDict`` values (:class:`~mlx_zoo.RopeScaling`) every key
  they declare;
* divisibility between fields with :class:`Divides` (checked by
  :meth:`mlx_zoo.BaseModelArgs.from_dict`, which knows which keys config.json gave).

This module depends on nothing else of mlx-zoo but its errors, so that :mod:`mlx_zoo.config` and
:mod:`mlx_zoo.rope` both build on it. Everything here is exported from ``mlx_zoo`` too.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any

from .errors import ConfigError

__all__ = [
    "FLOAT32_MAX", "MAX_SIZE", "Divides", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat",
    "PositiveInt", "Range", "check_value", "markers", "type_name", "unannotated",
]

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


def type_name(tp: Any) -> str:
    """A declared type as an error message names it: ``int | null``, ``list[float]``."""
    tp, _ = unannotated(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"list[{type_name(item)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def unannotated(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """``Annotated[T, m1, m2]`` -> ``(T, (m1, m2))``; any other type -> ``(tp, ())``."""
    if typing.get_origin(tp) is typing.Annotated:
        return tp.__origin__, tp.__metadata__
    return tp, ()


def markers(tp: Any, kind: type) -> list[Any]:
    """The ``kind`` markers in ``tp``'s annotations, looking inside unions (``X | None``)."""
    tp, metadata = unannotated(tp)
    found = [m for m in metadata if isinstance(m, kind)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            found += markers(arg, kind)
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
    tp, metadata = unannotated(tp)
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
    """The error for ``value`` not of the declared type ``tp``."""
    return ConfigError(path, f"{where}expected {type_name(tp)}, got {type(value).__name__} "
                       f"{value!r}", key=key)


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of ``tp``'s kind (the outer type only: no ranges, no entries)."""
    tp, _ = unannotated(tp)
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
