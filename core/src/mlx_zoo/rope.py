"""Rotary position embeddings (RoPE) and the registry of their scaling variants.

RoPE (Su et al., 2021, https://arxiv.org/abs/2104.09864) rotates each pair of query/key features
``(x_2i, x_2i+1)`` -- or, in the non-"traditional" layout used by Hugging Face checkpoints, the
pair ``(x_i, x_i+d/2)`` -- by the angle ``pos * inv_freq_i``, with

    inv_freq_i = 1 / theta ** (2i / d),   i = 0 .. d/2 - 1

so that attention scores depend on relative positions only. The scaling variants below change
``inv_freq`` (and sometimes multiply cos/sin by an *attention factor*) to stretch a model's
context. They are keyed by Hugging Face's ``rope_scaling["rope_type"]``:

=========  ==========================================  ==============================
key        class                                       source
=========  ==========================================  ==============================
default    :class:`RoPE`                               RoFormer
linear     :class:`LinearRoPE`                         Chen et al. 2023 (PI)
dynamic    :class:`DynamicNTKRoPE`                     bloc97 / transformers
yarn       :class:`YarnRoPE`                           Peng et al. 2023 (YaRN)
longrope   :class:`LongRoPE` (alias ``su``)            Ding et al. 2024 (LongRoPE)
llama3     :class:`Llama3RoPE`                         Meta, Llama 3.1
=========  ==========================================  ==============================

Plugins add variants through the ``register_rope_variants`` hook; models get RoPE only through
:func:`get_rope`. Every variant computes its frequencies once, at construction (the two
length-dependent ones keep one table per regime), and applies them with ``mx.fast.rope``.

**Validation.** Each variant declares the ``rope_scaling`` keys it needs (``required``) and the
ranges of those it reads (``parameter_types``, with the markers of :mod:`mlx_zoo.config`), and
adds cross-key checks in :meth:`RoPE.check_params`. :func:`validate_rope_scaling` runs them when
config.json is read (:meth:`mlx_zoo.BaseModelArgs.validate`), so a bad scaling is refused with
the file and key (``rope_scaling.factor``) before the model is built; construction runs them
again (naming the key, without a file) for RoPE built outside a config.

``mx.fast.rope(..., freqs=f)`` takes *periods* ``f_i = 1 / inv_freq_i``; the code below keeps that
convention and calls them ``periods``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import mlx.core as mx
import mlx.nn as nn

from .checks import NonNegativeFloat, PositiveFloat, PositiveInt, check_value
from .errors import ConfigError
from .registry import call_hook, find_contribution

SCALING_KEY = "rope_scaling"
"""The config.json key of the scaling parameters; errors name ``rope_scaling.<parameter>``."""

ORIGINAL_CONTEXT = "original_max_position_embeddings"


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


def default_periods(dims: int, base: float) -> mx.array:
    """``theta ** (2i / d)`` for i = 0 .. d/2 - 1: the reciprocal of RoPE's inverse frequencies."""
    return base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)


class RoPE(nn.Module):
    """Plain RoPE: ``inv_freq_i = theta ** (-2i/d)`` (https://arxiv.org/abs/2104.09864).

    Subclasses override :meth:`periods` (computed once here) and may set ``attention_factor``,
    the factor by which cos and sin -- equivalently, the rotated features -- are multiplied.
    They declare what they read from ``rope_scaling`` in :attr:`required` and
    :attr:`parameter_types`, and check what spans several keys in :meth:`check_params`.
    """

    required: ClassVar[tuple[str, ...]] = ()
    """``rope_scaling`` keys the variant cannot do without."""
    parameter_types: ClassVar[dict[str, Any]] = {}
    """``rope_scaling`` key -> declared type with its range (:mod:`mlx_zoo.config` markers); every
    key's plain type is checked anyway, as :class:`~mlx_zoo.RopeScaling` declares it."""
    min_dims: ClassVar[int] = 2
    """Smallest rotary dimension (RoPE rotates pairs of features)."""

    def __init__(self, dims: int, *, base: float, traditional: bool = False,
                 scaling: RopeScaling | None = None, max_position_embeddings: int | None = None):
        super().__init__()
        self.dims = dims
        self.base = base
        self.traditional = traditional
        self._scaling: RopeScaling = dict(scaling or {})  # type: ignore[assignment]
        self.max_position_embeddings = max_position_embeddings
        self.attention_factor = 1.0
        self.check_params(self._scaling, dims=dims, base=base,
                          max_position_embeddings=max_position_embeddings)
        self._periods = self.periods()

    @classmethod
    def check_params(cls, scaling: RopeScaling, *, dims: int | None = None,
                     base: float | None = None, max_position_embeddings: int | None = None,
                     path: Path | str | None = None) -> None:
        """Raise :class:`~mlx_zoo.ConfigError` -- naming ``path`` and the key, e.g.
        ``rope_scaling.factor`` -- unless ``scaling`` (and the rotary dimension ``dims``, the base
        ``base``, the model's context ``max_position_embeddings``, where known) suit this variant.
        Subclasses extend it with checks across keys, calling ``super().check_params``."""
        check_value(dict(scaling), RopeScaling, SCALING_KEY, path)  # plain types of every key
        for key in cls.required:
            if scaling.get(key) is None:
                raise ConfigError(path, f"missing; rope_type {scaling.get('rope_type')!r} "
                                  f"requires it", key=f"{SCALING_KEY}.{key}")
        for key, declared in cls.parameter_types.items():
            if scaling.get(key) is not None:
                check_value(scaling[key], declared, f"{SCALING_KEY}.{key}", path)
        if base is not None:
            check_value(base, PositiveFloat, "rope_theta", path)
        if dims is not None and (dims < cls.min_dims or dims % 2):
            raise ConfigError(path, f"the rotary dimension must be even and >= {cls.min_dims} "
                              f"for rope_type {scaling.get('rope_type', 'default')!r}, got {dims}",
                              key="head_dim")

    @classmethod
    def _check_original_context(cls, scaling: RopeScaling, max_position_embeddings: int | None,
                                path: Path | str | None, minimum: int = 1) -> None:
        """The pre-training context (:meth:`_original_max_positions`) must be known and at least
        ``minimum``."""
        context = scaling.get(ORIGINAL_CONTEXT) or max_position_embeddings
        if context is None or context < minimum:
            raise ConfigError(path, f"expected the pre-training context length (an integer >= "
                              f"{minimum}; or max_position_embeddings in config.json), got "
                              f"{context!r}", key=f"{SCALING_KEY}.{ORIGINAL_CONTEXT}")

    def periods(self) -> mx.array:
        return default_periods(self.dims, self.base)

    def periods_for_length(self, length: int) -> mx.array:
        """The periods to use when the sequence so far spans ``length`` positions."""
        return self._periods

    @property
    def length_dependent(self) -> bool:
        """Whether :meth:`periods_for_length` is overridden, i.e. the frequencies change with the
        sequence length (dynamic NTK): then an array ``offset`` is read back as a number."""
        return type(self).periods_for_length is not RoPE.periods_for_length

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        if self.attention_factor != 1.0:
            x = x * self.attention_factor
        if isinstance(offset, mx.array) and not self.length_dependent:
            periods = self._periods  # no need to read an array offset (compiled decoding)
        else:
            periods = self.periods_for_length(int(offset) + x.shape[-2])
        return mx.fast.rope(x, self.dims, traditional=self.traditional, base=None, scale=1.0,
                            offset=offset, freqs=periods)

    def require(self, key: str) -> Any:
        """``rope_scaling[key]``, or a :class:`~mlx_zoo.ConfigError` naming
        ``rope_scaling.<key>`` when it is absent (for variants that read a key they do not list
        in :attr:`required`)."""
        if self._scaling.get(key) is None:
            raise ConfigError(None, f"missing; rope_type {self._scaling.get('rope_type')!r} "
                              f"requires it", key=f"{SCALING_KEY}.{key}")
        return self._scaling[key]  # type: ignore[literal-required]

    def _original_max_positions(self) -> int:
        """Pre-training context: ``original_max_position_embeddings``, else the model's maximum."""
        self._check_original_context(self._scaling, self.max_position_embeddings, None)
        return self._scaling.get(ORIGINAL_CONTEXT) or self.max_position_embeddings


class LinearRoPE(RoPE):
    """Position interpolation (Chen et al. 2023, https://arxiv.org/abs/2306.15595).

    Positions are divided by ``factor``: ``inv_freq_i = theta ** (-2i/d) / factor``.
    """

    required = ("factor",)
    parameter_types = {"factor": PositiveFloat}

    def periods(self) -> mx.array:
        return default_periods(self.dims, self.base) * float(self.require("factor"))


class DynamicNTKRoPE(RoPE):
    """Dynamic NTK-aware scaling (bloc97, https://www.reddit.com/r/LocalLLaMA/comments/14mrgpr/;
    as implemented in transformers' ``_compute_dynamic_ntk_parameters``).

    Up to ``max_position_embeddings`` (L) positions it is plain RoPE. Beyond, for a sequence of
    ``n`` positions the base grows so that the lowest frequency stretches over the longer context:

        theta' = theta * (factor * n / L - (factor - 1)) ** (d / (d - 2))
    """

    required = ("factor",)
    parameter_types = {"factor": PositiveFloat}
    min_dims = 4  # the exponent d / (d - 2)

    def periods_for_length(self, length: int) -> mx.array:
        limit = self.max_position_embeddings
        if limit is None or length <= limit:
            return self._periods
        factor = float(self.require("factor"))
        growth = (factor * length / limit - (factor - 1)) ** (self.dims / (self.dims - 2))
        return default_periods(self.dims, self.base * growth)


class YarnRoPE(RoPE):
    """YaRN (Peng et al. 2023, https://arxiv.org/abs/2309.00071).

    Dimensions that rotate many times within the pre-training context (more than ``beta_fast``
    rotations) are kept (extrapolated), those rotating fewer than ``beta_slow`` times are
    interpolated like :class:`LinearRoPE`, with a linear ramp in between. For rotation count ``r``
    the dimension index is ``d * ln(L / (2 pi r)) / (2 ln theta)`` (L = original context). Cos and
    sin are multiplied by the attention factor ``0.1 * ln(factor) + 1`` (or, DeepSeek's form,
    ``mscale(factor, mscale) / mscale(factor, mscale_all_dim)``; or ``attention_factor`` if given).
    """

    DEFAULT_BETA_FAST = 32.0  # the paper's alpha/beta: rotations bounding the ramp
    DEFAULT_BETA_SLOW = 1.0
    MSCALE_COEFFICIENT = 0.1  # the paper's sqrt(1/t) = 0.1 ln(s) + 1

    parameter_types = {
        "factor": PositiveFloat,  # absent: max_position_embeddings / original context
        ORIGINAL_CONTEXT: PositiveInt,
        "beta_fast": NonNegativeFloat,  # 0 or absent: DEFAULT_BETA_FAST (as transformers)
        "beta_slow": NonNegativeFloat,  # 0 or absent: DEFAULT_BETA_SLOW
        "mscale": NonNegativeFloat,  # 0 or absent: the paper's attention factor
        "mscale_all_dim": NonNegativeFloat,
        "attention_factor": PositiveFloat,
    }

    @classmethod
    def check_params(cls, scaling: RopeScaling, *, dims: int | None = None,
                     base: float | None = None, max_position_embeddings: int | None = None,
                     path: Path | str | None = None) -> None:
        """Also: the original context must be known (the correction range reads it), ``factor``
        or ``max_position_embeddings`` given, and ``rope_theta != 1`` (the dimension of a
        rotation count divides by ``ln theta``)."""
        super().check_params(scaling, dims=dims, base=base,
                             max_position_embeddings=max_position_embeddings, path=path)
        cls._check_original_context(scaling, max_position_embeddings, path)
        if not scaling.get("factor") and max_position_embeddings is None:
            raise ConfigError(path, "missing; yarn requires it (or max_position_embeddings in "
                              "config.json)", key=f"{SCALING_KEY}.factor")
        if base == 1:
            raise ConfigError(path, "expected a value other than 1 with yarn scaling (its "
                              "correction range divides by ln(rope_theta))", key="rope_theta")

    def periods(self) -> mx.array:
        factor = float(self._scaling.get("factor") or
                       self.max_position_embeddings / self._original_max_positions())
        self.attention_factor = self._attention_factor(factor)
        low, high = self._correction_range()
        half = self.dims // 2
        ramp = mx.clip((mx.arange(half, dtype=mx.float32) - low) / max(high - low, 1e-3), 0, 1)
        extrapolate = 1 - ramp  # 1 where the dimension keeps its original frequency
        base_periods = default_periods(self.dims, self.base)
        inv_freq = (extrapolate / base_periods) + (1 - extrapolate) / (factor * base_periods)
        return 1.0 / inv_freq

    def _attention_factor(self, factor: float) -> float:
        if self._scaling.get("attention_factor") is not None:
            return float(self._scaling["attention_factor"])

        def mscale(scale: float, coefficient: float = 1.0) -> float:
            if scale <= 1:
                return 1.0
            return self.MSCALE_COEFFICIENT * coefficient * math.log(scale) + 1

        m, m_all = self._scaling.get("mscale"), self._scaling.get("mscale_all_dim")
        if m and m_all:
            return mscale(factor, m) / mscale(factor, m_all)
        return mscale(factor)

    def _correction_range(self) -> tuple[float, float]:
        context = self._original_max_positions()

        def dim_for_rotations(rotations: float) -> float:
            wavelengths = context / (rotations * 2 * math.pi)
            return (self.dims * math.log(wavelengths)) / (2 * math.log(self.base))

        low = dim_for_rotations(float(self._scaling.get("beta_fast") or self.DEFAULT_BETA_FAST))
        high = dim_for_rotations(float(self._scaling.get("beta_slow") or self.DEFAULT_BETA_SLOW))
        if self._scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        return max(low, 0), min(high, self.dims - 1)


class LongRoPE(RoPE):
    """LongRoPE / "su" scaling (Ding et al. 2024, https://arxiv.org/abs/2402.13753), as in Phi-3.

    Each dimension has its own rescale: ``inv_freq_i = theta ** (-2i/d) / f_i`` with ``f =
    short_factor`` while the sequence fits the original context L, ``long_factor`` beyond it. Cos
    and sin are multiplied by ``sqrt(1 + ln(s) / ln(L))``, s = max_position_embeddings / L (or
    ``factor``, or ``attention_factor`` if given).
    """

    required = ("short_factor", "long_factor")
    parameter_types = {
        "short_factor": list[PositiveFloat],  # one rescale per rotated pair: d / 2 entries
        "long_factor": list[PositiveFloat],
        "factor": PositiveFloat,
        ORIGINAL_CONTEXT: PositiveInt,
        "attention_factor": PositiveFloat,
    }

    @classmethod
    def check_params(cls, scaling: RopeScaling, *, dims: int | None = None,
                     base: float | None = None, max_position_embeddings: int | None = None,
                     path: Path | str | None = None) -> None:
        """Also: one factor per rotated pair (``d / 2``), and an original context of at least 2
        where the attention factor is derived (it divides by ``ln L``)."""
        super().check_params(scaling, dims=dims, base=base,
                             max_position_embeddings=max_position_embeddings, path=path)
        if dims is not None:
            for key in cls.required:
                if len(scaling[key]) != dims // 2:  # type: ignore[literal-required]
                    raise ConfigError(path, f"expected one factor per rotated pair of features, "
                                      f"head_dim / 2 = {dims // 2} entries, got "
                                      f"{len(scaling[key])}",  # type: ignore[literal-required]
                                      key=f"{SCALING_KEY}.{key}")
        derives_attention = scaling.get("attention_factor") is None
        cls._check_original_context(scaling, max_position_embeddings, path,
                                    minimum=2 if derives_attention else 1)

    def periods(self) -> mx.array:
        base_periods = default_periods(self.dims, self.base)
        self._original = self._original_max_positions()
        self._long_periods = base_periods * mx.array(self.require("long_factor"), dtype=mx.float32)
        factor = self._scaling.get("factor")
        if factor is None and self.max_position_embeddings:
            factor = self.max_position_embeddings / self._original
        if self._scaling.get("attention_factor") is not None:
            self.attention_factor = float(self._scaling["attention_factor"])
        elif factor is not None and factor > 1.0:
            self.attention_factor = math.sqrt(1 + math.log(factor) / math.log(self._original))
        return base_periods * mx.array(self.require("short_factor"), dtype=mx.float32)

    def periods_for_length(self, length: int) -> mx.array:
        return self._long_periods if length > self._original else self._periods


class Llama3RoPE(RoPE):
    """Llama 3.1's frequency-dependent scaling (Meta, https://arxiv.org/abs/2407.21783, and
    https://huggingface.co/meta-llama/Llama-3.1-8B).

    With L the original context, wavelengths ``2 pi / inv_freq`` longer than
    ``L / low_freq_factor`` are divided by ``factor``, those shorter than ``L / high_freq_factor``
    are kept, and in between the two are blended by ``s = (L / wavelen - low) / (high - low)``:

        inv_freq' = (1 - s) * inv_freq / factor + s * inv_freq
    """

    required = ("factor", "low_freq_factor", "high_freq_factor")
    parameter_types = {"factor": PositiveFloat, "low_freq_factor": PositiveFloat,
                       "high_freq_factor": PositiveFloat, ORIGINAL_CONTEXT: PositiveInt}

    @classmethod
    def check_params(cls, scaling: RopeScaling, *, dims: int | None = None,
                     base: float | None = None, max_position_embeddings: int | None = None,
                     path: Path | str | None = None) -> None:
        """Also: ``high_freq_factor >= low_freq_factor`` and a known original context. Equal
        factors leave no band to blend (Llama 4 Scout and Maverick ship ``1.0`` and ``1.0``:
        every wavelength is either divided or kept)."""
        super().check_params(scaling, dims=dims, base=base,
                             max_position_embeddings=max_position_embeddings, path=path)
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        if high < low:
            raise ConfigError(path, f"expected a value of at least low_freq_factor = {low}, got "
                              f"{high}", key=f"{SCALING_KEY}.high_freq_factor")
        cls._check_original_context(scaling, max_position_embeddings, path)

    def periods(self) -> mx.array:
        factor = float(self.require("factor"))
        low = float(self.require("low_freq_factor"))
        high = float(self.require("high_freq_factor"))
        context = float(self._original_max_positions())
        periods = default_periods(self.dims, self.base)
        wavelengths = 2 * math.pi * periods
        scaled = mx.where(wavelengths > context / low, periods * factor, periods)
        if high == low:  # no band in between (Llama 4): nothing to blend, no 0 / 0
            return scaled
        smooth = (context / wavelengths - low) / (high - low)
        blended = 1.0 / ((1 - smooth) / (factor * periods) + smooth / periods)
        medium = (wavelengths >= context / high) & (wavelengths <= context / low)
        return mx.where(medium, blended, scaled)


BUILTIN_VARIANTS: dict[str, type[RoPE]] = {
    "default": RoPE,
    "linear": LinearRoPE,
    "dynamic": DynamicNTKRoPE,
    "yarn": YarnRoPE,
    "longrope": LongRoPE,
    "su": LongRoPE,  # the name Phi-3's first configs used for LongRoPE
    "llama3": Llama3RoPE,
}


def rope_variants() -> dict[str, type[RoPE]]:
    """The variants known now: the built-in ones, then those of the plugins registered so far
    (which may override). :func:`variant_for` also finds those of installed plugins not yet
    imported."""
    variants = dict(BUILTIN_VARIANTS)
    for contributed in call_hook(HOOK):
        variants.update(contributed or {})
    return variants


HOOK = "register_rope_variants"
"""The hook through which plugins add variants (:mod:`mlx_zoo.hookspecs`)."""


def variant_for(kind: str, path: Path | str | None = None,
                variants: dict[str, type[RoPE]] | None = None) -> type[RoPE]:
    """The variant ``kind``: from ``variants`` (a plugin's own, passed explicitly), the built-in
    and registered ones (:func:`rope_variants`), else the first installed plugin that provides
    it (imported for the purpose, :func:`mlx_zoo.registry.find_contribution`); a
    :class:`~mlx_zoo.ConfigError` listing the known ones if none does."""
    if variants and kind in variants:
        return variants[kind]
    known = rope_variants()
    if kind in known:
        return known[kind]
    found = find_contribution(HOOK, kind)
    if found is not None:
        return found
    names = sorted({*rope_variants(), *(variants or {})})  # the plugins searched included
    raise ConfigError(path, f"unknown rope_type {kind!r}; known: {', '.join(names)}",
                      key=f"{SCALING_KEY}.rope_type")


def validate_rope_scaling(scaling: RopeScaling | None, head_dim: int | None,
                          path: Path | str | None = None, *, base: float | None = None,
                          max_position_embeddings: int | None = None,
                          rope_type: str | None = None,
                          variants: dict[str, type[RoPE]] | None = None) -> None:
    """Check a config's normalised ``rope_scaling`` (see :mod:`mlx_zoo.config`) for the variant
    it selects -- ``rope_type`` if given, as in :func:`get_rope` -- without building anything;
    raise :class:`~mlx_zoo.ConfigError` naming ``path`` and the key. ``variants`` are a plugin's
    own (as passed to :func:`get_rope`)."""
    scaling = scaling or RopeScaling()
    kind = rope_type or scaling.get("rope_type", "default")
    variant_for(kind, path, variants).check_params(
        scaling, dims=head_dim, base=base, max_position_embeddings=max_position_embeddings,
        path=path)


def get_rope(dims: int, *, base: float, traditional: bool = False,
             scaling: RopeScaling | None = None, max_position_embeddings: int | None = None,
             rope_type: str | None = None,
             variants: dict[str, type[RoPE]] | None = None) -> RoPE:
    """Build the RoPE module for a model.

    ``scaling`` is config.json's normalised ``rope_scaling`` (see :mod:`mlx_zoo.config`); its
    ``rope_type`` picks the variant unless ``rope_type`` is given explicitly. A plugin that
    brings variants of its own passes them as ``variants`` (``{rope_type: class}``), so that
    its models build whether or not the plugin was registered (imported directly, in any
    order); other names are looked up as :func:`variant_for` says.
    """
    kind = rope_type or (scaling or {}).get("rope_type", "default")
    return variant_for(kind, variants=variants)(
        dims, base=base, traditional=traditional, scaling=scaling,
        max_position_embeddings=max_position_embeddings)


RopeFactory = Callable[..., RoPE]
