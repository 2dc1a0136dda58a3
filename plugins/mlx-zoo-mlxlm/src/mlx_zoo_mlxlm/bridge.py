"""A bridged model type: mlx-zoo's config checks around mlx-lm's ``ModelArgs`` and ``Model``.

:class:`BridgedArgs` is the config dataclass of every bridged type. It keeps config.json whole
(``extra``, written back by :func:`mlx_zoo.save` as read; RoPE settings in the published form
mlx-zoo normalises both dialects to), checks the fields whose meaning is known across families
(:data:`CHECKED`: strict types, ranges), and builds mlx-lm's own ``ModelArgs`` from it -- a config
mlx-lm refuses is a :class:`~mlx_zoo.ConfigError` naming the file. :func:`build_model` then builds
mlx-lm's ``Model`` as it is: mlx-zoo's loader does the rest (safetensors validation, mlx-lm's
``sanitize``, quantized layers, the strict key/shape/dtype check), and mlx-zoo's generate, caches,
prompt-cache files, convert and serve run the model through the contract mlx-lm's models already
follow (``model(ids, cache=)``, ``layers``, optional ``make_cache``/``sanitize``/``shard``).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from mlx_zoo import (
    Architecture,
    BaseModelArgs,
    ConfigError,
    PositiveFloat,
    PositiveInt,
    check_value,
    internal_field,
)

from .discovery import import_model_module, module_for

__all__ = ["CHECKED", "BridgedArgs", "architecture", "build_model", "mlx_lm_config"]

CHECKED: dict[str, Any] = {
    "vocab_size": PositiveInt, "hidden_size": PositiveInt, "num_hidden_layers": PositiveInt,
    "num_attention_heads": PositiveInt | list[PositiveInt],
    "num_key_value_heads": PositiveInt | list[PositiveInt],
    "head_dim": PositiveInt, "intermediate_size": PositiveInt | list[PositiveInt],
    "max_position_embeddings": PositiveInt, "rope_theta": PositiveFloat,
    "rms_norm_eps": PositiveFloat, "layer_norm_eps": PositiveFloat,
    "tie_word_embeddings": bool, "n_embd": PositiveInt, "n_layer": PositiveInt,
    "n_head": PositiveInt, "n_positions": PositiveInt,
}
"""config.json keys whose meaning every family shares (Hugging Face's names, and GPT-2's):
checked for type and range where present and not null. The rest is mlx-lm's to read."""

NESTED = ("text_config",)
"""Sections checked, and given to mlx-lm, like the top level."""


def mlx_lm_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json as mlx-lm's ``ModelArgs.from_dict`` reads it, from mlx-zoo's normalised form:
    a copy whose ``rope_scaling`` carries its kind under both ``rope_type`` and ``type`` (mlx-lm's
    families read either), at the top level and in nested sections. A transformers-5 file's
    ``rope_parameters`` thus reaches mlx-lm's model too (mlx-lm's own loader ignores them)."""
    plain = copy.deepcopy(dict(config))
    scaling = plain.get("rope_scaling")
    if isinstance(scaling, dict) and "rope_type" in scaling:
        plain["rope_scaling"] = {"type": scaling["rope_type"], **scaling}
    for key in NESTED:
        if isinstance(plain.get(key), dict):
            plain[key] = mlx_lm_config(plain[key])
    return plain


def check_known(config: dict[str, Any], path: Path | str | None, prefix: str = "") -> None:
    """:data:`CHECKED`'s keys of ``config`` (and its nested sections), strictly; a
    :class:`~mlx_zoo.ConfigError` names the file and the (dotted) key."""
    for key, kind in CHECKED.items():
        if config.get(key) is not None:
            check_value(config[key], kind, prefix + key, path)
    for key in NESTED:
        if isinstance(config.get(key), dict):
            check_known(config[key], path, f"{prefix}{key}.")


@dataclasses.dataclass
class BridgedArgs(BaseModelArgs):
    """The configuration of a bridged model type: config.json kept whole in ``extra``, the
    shared fields checked (:data:`CHECKED`), and mlx-lm's ``ModelArgs`` and ``Model`` class of
    the model type's module (``mlx_lm_args``, ``mlx_lm_model``; not config.json keys)."""

    mlx_lm_args: Any = internal_field(default=None, repr=False, compare=False)
    mlx_lm_model: Any = internal_field(default=None, repr=False, compare=False)
    source: Path | None = internal_field(default=None, repr=False, compare=False)

    @classmethod
    def from_dict(cls, config: dict[str, Any], path: Path | str | None = None):
        """Check ``config`` and build mlx-lm's ``ModelArgs`` from it (see the class)."""
        check_known(config, path)
        args = super().from_dict(config, path)
        name = module_for(config["model_type"], config.get("architectures") or [])
        module = import_model_module(name)
        try:
            args.mlx_lm_args = module.ModelArgs.from_dict(mlx_lm_config(args.to_dict()))
        except Exception as e:  # mlx-lm's dataclass: a missing field, a __post_init__ check
            raise ConfigError(path, f"mlx-lm's {name}.ModelArgs refuses it: "
                              f"{type(e).__name__}: {e}") from e
        args.mlx_lm_model = module.Model
        args.source = Path(path) if path is not None else None
        return args


def build_model(config: BridgedArgs) -> Any:
    """mlx-lm's ``Model`` of ``config``'s module, built from mlx-lm's ``ModelArgs``; a model
    mlx-lm cannot build from this config is a :class:`~mlx_zoo.ConfigError` naming the file."""
    try:
        return config.mlx_lm_model(config.mlx_lm_args)
    except Exception as e:
        raise ConfigError(config.source, f"mlx-lm's {config.mlx_lm_model.__module__}.Model "
                          f"cannot be built from it: {type(e).__name__}: {e}") from e


def architecture(model_type: str) -> Architecture:
    """The :class:`~mlx_zoo.Architecture` of a model type mlx-lm supports; its module is
    imported now, so a type whose module is broken fails here, alone
    (:class:`~mlx_zoo_mlxlm.discovery.BridgedTypeError`)."""
    import_model_module(module_for(model_type))
    return Architecture(model_type, BridgedArgs, build_model)
