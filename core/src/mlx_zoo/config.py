"""Reading ``config.json`` into typed form.

Two dialects of config.json are in the wild and both are read into one form:

* published checkpoints (transformers < 5): ``rope_theta`` at the top level and the RoPE scaling
  under ``rope_scaling``, whose kind is keyed ``type`` (older) or ``rope_type``;
* transformers >= 5 saves: ``rope_parameters`` holding ``rope_theta``, ``rope_type`` and the
  scaling parameters together.

:func:`normalize_config` rewrites either into ``rope_theta`` (a float) plus ``rope_scaling`` (a
:class:`RopeScaling` with ``rope_type`` set, or ``None`` for plain RoPE), recursively for nested
``text_config`` sections; a section that gives neither is left without them. Plugins then declare
their fields as a dataclass derived from :class:`BaseModelArgs`, whose
:meth:`~BaseModelArgs.from_dict` checks the type of every field -- strictly: ``"2"`` is no number
-- and the range the field declares (:class:`Range`, :data:`PositiveInt` and friends; every float
must be finite), then the checks across fields (:class:`Divides`, the RoPE scaling, a plugin's own
:meth:`~BaseModelArgs.validate`), and names the file and key of any failure in a
:class:`~mlx_zoo.ConfigError`. The checks themselves live in :mod:`mlx_zoo.checks` (re-exported
here and from ``mlx_zoo``).

A config object carries everything it read, explicitly: its declared fields, ``extra`` (the keys
of config.json the dataclass does not declare, kept for :meth:`~BaseModelArgs.to_dict`) and
``quantization`` (mlx-lm's quantization entry, or ``None``). :meth:`~BaseModelArgs.to_dict` is a
function of those alone, so :func:`mlx_zoo.save` writes the same config.json whatever happened to
the model in between (fused, sharded, quantized and dequantized again).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, ClassVar

from .checks import (
    FLOAT32_MAX,
    MAX_SIZE,
    Divides,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    check_value,
    markers,
    type_name,
)
from .errors import ConfigError
from .rope import SCALING_KEY, RopeScaling, validate_rope_scaling

__all__ = [
    "CONFIG_FILE", "FLOAT32_MAX", "MAX_SIZE", "NESTED_CONFIGS", "QUANTIZATION_CONFIG_KEY",
    "QUANTIZATION_KEY", "BaseModelArgs", "Divides", "NonNegativeFloat", "NonNegativeInt",
    "PositiveFloat", "PositiveInt", "Range", "RopeScaling", "check_value", "internal_field",
    "is_internal", "normalize_config", "normalize_rope_scaling", "read_config",
]

CONFIG_FILE = "config.json"

QUANTIZATION_KEY = "quantization"
"""config.json key written by mlx-lm's convert: ``{"group_size", "bits", "mode"?}`` plus
per-layer overrides keyed by module path (see :func:`mlx_zoo.weights.validate_quantization`)."""

QUANTIZATION_CONFIG_KEY = "quantization_config"
"""The copy of :data:`QUANTIZATION_KEY` mlx-lm also writes: the key transformers' readers look
for."""

NESTED_CONFIGS = ("text_config",)
"""Sections normalised like the top level (multimodal checkpoints nest the language model)."""

_DEFAULT_ROPE_TYPE = "default"

INTERNAL = "mlx_zoo.internal"
"""Field metadata key marking a field of a config dataclass that is no config.json key
(:func:`internal_field`)."""


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
    """Return a copy of ``config`` with RoPE settings in one form (see the module docstring).
    A section with neither ``rope_scaling`` nor ``rope_parameters`` gains no ``rope_scaling``
    key (a config dataclass then takes its declared default): the keys a config keeps as read
    -- the Llama 4 wrapper around ``text_config`` -- are written back by save as the file had
    them."""
    config = dict(config)
    params = config.pop("rope_parameters", None)
    if params is not None:
        if not isinstance(params, dict):
            raise ConfigError(path, f"expected an object, got {type(params).__name__}",
                              key="rope_parameters")
        params = dict(params)
        if params and all(isinstance(v, dict) for v in params.values()):
            # one section per layer type (transformers >= 5's Gemma 3: {"full_attention": {...},
            # "sliding_attention": {...}}): kept as it is, for the plugin to read
            # (mlx_gemma.Gemma3TextArgs.from_dict)
            config["rope_parameters"] = params
            params = None
    if params is not None:
        if "rope_theta" in params:
            config["rope_theta"] = params.pop("rope_theta")
        config[SCALING_KEY] = params
    if SCALING_KEY in config:
        config[SCALING_KEY] = normalize_rope_scaling(config[SCALING_KEY], path)
    for key in NESTED_CONFIGS:
        if isinstance(config.get(key), dict):
            try:
                config[key] = normalize_config(config[key], path)
            except ConfigError as error:
                raise error.with_key_prefix(key) from None
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


def internal_field(**kwargs: Any) -> Any:
    """A field of a config dataclass that is *not* a config.json key:
    :meth:`BaseModelArgs.from_dict` does not read it by name, and :meth:`BaseModelArgs.to_dict`
    does not write it as one. For
    what a dataclass keeps about the file's layout (``extra``, ``quantization``; Llama 4's keys
    around its nested ``text_config``). Keyword-only, so it may follow fields without defaults;
    ``kwargs`` go to :func:`dataclasses.field` (give a ``default`` or ``default_factory``)."""
    metadata = {**kwargs.pop("metadata", {}), INTERNAL: True}
    return dataclasses.field(kw_only=True, metadata=metadata, **kwargs)


def is_internal(field: dataclasses.Field) -> bool:
    """Whether ``field`` was declared with :func:`internal_field`."""
    return bool(field.metadata.get(INTERNAL))


@dataclasses.dataclass
class BaseModelArgs:
    """Base of every plugin's config dataclass.

    :meth:`from_dict` reads the fields the dataclass declares, checks that required ones are
    present and that every value has the declared type and lies in its declared range, checks
    the :class:`Divides` declarations, and runs :meth:`validate` for the other checks across
    fields. What config.json holds besides lands in two declared fields of every config:

    * ``extra`` -- the keys the dataclass does not declare (``architectures``, ``torch_dtype``,
      ...), written back unchanged by :meth:`to_dict`;
    * ``quantization`` -- mlx-lm's ``quantization`` entry (``None`` for a dense model), changed
      only through :meth:`set_quantization` / :meth:`clear_quantization`.

    :meth:`to_dict` is a function of the object alone. Float fields that config.json spells as
    integers (``"rope_theta": 10000``) are read as floats and written back as integers (some
    readers type-check integers); they are listed in ``integer_floats``.

    Plugins *declare* their constraints on the field types (:mod:`mlx_zoo.checks`):

    * every ``float`` field must be finite (no NaN or Infinity, within float32) -- automatic;
    * a range with :class:`Range` in ``Annotated``, usually through :data:`PositiveInt`,
      :data:`NonNegativeInt`, :data:`PositiveFloat` or :data:`NonNegativeFloat`; ``list[...]``
      fields check every entry, :class:`RopeScaling` fields every key it declares;
    * divisibility between fields with :class:`Divides`;
    * a ``rope_scaling`` field is checked against the RoPE variant it selects
      (:func:`mlx_zoo.validate_rope_scaling`), with the dataclass's ``head_dim``,
      ``rope_theta``, ``max_position_embeddings`` and ``rope_type`` attributes where it has them;
      a plugin whose models build RoPE variants of its own lists them in :attr:`rope_variants`.

    Anything else a plugin overrides :meth:`validate` for (calling ``super().validate(path)``).
    """

    extra: dict[str, Any] = internal_field(default_factory=dict, repr=False)
    """config.json's keys that the dataclass does not declare, as read."""
    quantization: dict[str, Any] | None = internal_field(default=None)
    """mlx-lm's ``quantization`` entry (checked by the loader,
    :func:`mlx_zoo.weights.validate_quantization`), or ``None`` for a dense model."""
    integer_floats: frozenset[str] = internal_field(default=frozenset(), repr=False)
    """Float fields that config.json gave as integers: written back as integers."""
    derived: frozenset[str] = internal_field(default=frozenset(), repr=False)
    """Fields config.json did not give whose value ``__post_init__`` derived from others
    (``head_dim = hidden_size // num_attention_heads``): not written back, so that a saved
    config.json holds the keys the original did (transformers' configs derive them too)."""

    rope_variants: ClassVar[dict[str, type]] = {}
    """RoPE variants (``{rope_type: class}``) this plugin's models pass to
    :func:`mlx_zoo.get_rope` themselves: :meth:`validate` checks ``rope_scaling`` against them
    too, so a config validates whether or not the plugin is registered."""

    @classmethod
    def from_dict(cls, config: dict[str, Any], path: Path | str | None = None):
        """Read and check ``config`` (a normalised config.json dictionary, see
        :func:`normalize_config`); raise :class:`~mlx_zoo.ConfigError` naming ``path`` and the
        key of the first problem."""
        hints = typing.get_type_hints(cls, include_extras=True)
        values: dict[str, Any] = {}
        keys = set()
        for field in dataclasses.fields(cls):
            if is_internal(field):
                continue
            keys.add(field.name)
            if not field.init:
                continue
            if field.name not in config:
                no_default = (field.default is dataclasses.MISSING
                              and field.default_factory is dataclasses.MISSING)
                if no_default:
                    raise ConfigError(path, f"missing; {cls.__name__} requires it "
                                      f"({type_name(hints[field.name])})", key=field.name)
                continue
            values[field.name] = check_value(config[field.name], hints[field.name],
                                             field.name, path)
        quantization = config.get(QUANTIZATION_KEY)
        managed = {QUANTIZATION_KEY}
        if quantization is not None:
            managed.add(QUANTIZATION_CONFIG_KEY)  # mlx-lm's copy of it, written back from it
        integer_floats = frozenset(
            name for name, value in values.items()
            if isinstance(value, float) and _is_int(config[name]))
        args = cls(**values,
                   extra={k: copy.deepcopy(v) for k, v in config.items()
                          if k not in keys and k not in managed},
                   quantization=copy.deepcopy(quantization), integer_floats=integer_floats)
        args.derived = frozenset(
            field.name for field in dataclasses.fields(cls)
            if not is_internal(field) and field.init and field.name not in config
            and field.default is not dataclasses.MISSING
            and getattr(args, field.name) != field.default)
        args.check_divides(given=config, path=path)
        args.validate(path)
        return args

    def check_divides(self, given: dict[str, Any], path: Path | str | None = None) -> None:
        """The :class:`Divides` declarations, run by :meth:`from_dict` once the dataclass is
        built (after ``__post_init__`` fills derived defaults). ``given`` is config.json as read:
        a declaration is skipped when it gives one of its ``unless_given`` keys (non-null)."""
        hints = typing.get_type_hints(type(self), include_extras=True)
        for field in dataclasses.fields(self):
            if is_internal(field):
                continue
            for rule in markers(hints[field.name], Divides):
                if any(given.get(key) is not None for key in rule.unless_given):
                    continue
                divisor, total = getattr(self, field.name), getattr(self, rule.other)
                if divisor is not None and total is not None and total % divisor:
                    raise ConfigError(path, f"{divisor} does not divide {rule.other} = {total}; "
                                      f"expected a divisor of it", key=field.name)

    def validate(self, path: Path | str | None = None) -> None:
        """Checks across fields, run by :meth:`from_dict` once every field has its type and range
        and the :class:`Divides` declarations hold (so no check here divides by zero): the RoPE
        scaling. Plugins extend it and raise :class:`ConfigError` naming the file and key."""
        if any(field.name == "rope_scaling" for field in dataclasses.fields(self)):
            validate_rope_scaling(self.rope_scaling, getattr(self, "head_dim", None), path,
                                  base=getattr(self, "rope_theta", None),
                                  max_position_embeddings=getattr(self, "max_position_embeddings",
                                                                  None),
                                  rope_type=getattr(self, "rope_type", None),
                                  variants=self.rope_variants)

    def set_quantization(self, quantization: dict[str, Any]) -> None:
        """Record that the model is quantized as ``quantization`` says (mlx-lm's entry:
        ``group_size``, ``bits``, ``mode`` and per-layer overrides); :meth:`to_dict` then
        writes it as ``quantization`` and ``quantization_config``."""
        self.quantization = copy.deepcopy(quantization)

    def clear_quantization(self) -> None:
        """Record that the model is dense (dequantized): :meth:`to_dict` writes no quantization
        entry."""
        self.quantization = None

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a config.json dictionary: ``extra``, every declared field, and
        the quantization entry when there is one (a new dictionary: editing it leaves the
        config as it is)."""
        data = dict(self.extra)
        for field in dataclasses.fields(self):
            if is_internal(field) or field.name in self.derived:
                continue
            value = getattr(self, field.name)
            if dataclasses.is_dataclass(value):
                value = (value.to_dict() if isinstance(value, BaseModelArgs)
                         else dataclasses.asdict(value))
            elif (field.name in self.integer_floats and isinstance(value, float)
                  and value.is_integer()):
                value = int(value)  # keep 10000 as 10000, not 10000.0
            data[field.name] = value
        if self.quantization is not None:
            data[QUANTIZATION_KEY] = self.quantization
            data[QUANTIZATION_CONFIG_KEY] = self.quantization
        return copy.deepcopy(data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
