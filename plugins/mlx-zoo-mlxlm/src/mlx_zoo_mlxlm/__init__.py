"""mlx-zoo-mlxlm: every model type mlx-lm supports, through mlx-zoo -- a bridge below the native
plugins.

The model types are learned from the installed mlx-lm at run time (:mod:`mlx_zoo_mlxlm.discovery`:
its ``mlx_lm.models`` package and its remapping tables), and each is served by mlx-lm's own
``Model``, ``ModelArgs`` and ``sanitize`` inside mlx-zoo's loader, checks, caches, generation,
convert and server (:mod:`mlx_zoo_mlxlm.bridge`). A native plugin always wins: the registry asks
the bridge only for a model_type no enabled native plugin serves, or when ``--plugin
mlx-zoo-mlxlm`` / ``MLX_ZOO_PREFER=TYPE=mlx-zoo-mlxlm`` picks it. Importing this module imports
neither mlx-lm nor a model.
"""

from __future__ import annotations

from mlx_zoo import ModelBridge, hookimpl

from .bridge import BridgedArgs, architecture, build_model
from .discovery import BridgedTypeError, MlxLmUnavailableError, mlx_lm_version, model_types

__all__ = ["BridgedArgs", "BridgedTypeError", "MlxLmUnavailableError", "architecture",
           "build_model", "model_types"]

CACHE_PREFIX = "mlx_zoo_mlxlm."
"""Prefix of the names under which mlx-lm's cache classes are registered (prompt-cache files)."""


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_model_bridge() -> ModelBridge:
    """The bridge to the installed mlx-lm; raises :class:`MlxLmUnavailableError` (shown by
    ``mlx-zoo list``, and by a load that only the bridge could serve) when mlx-lm is missing or
    too old."""
    return ModelBridge(source=f"mlx-lm {mlx_lm_version()}", model_types=model_types,
                       architecture=architecture)


@hookimpl
def register_cache_classes() -> dict[str, type]:
    """mlx-lm's cache classes (those its models' ``make_cache`` returns), so that prompt-cache
    files of bridged models save and load; nothing when mlx-lm cannot be imported (other
    plugins' caches must keep working)."""
    try:
        from mlx_lm.models import cache
    except ImportError:
        return {}
    return {CACHE_PREFIX + name: value for name, value in vars(cache).items()
            if isinstance(value, type) and value.__module__ == cache.__name__
            and hasattr(value, "state") and not name.startswith("_")}
