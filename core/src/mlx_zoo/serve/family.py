"""What a model family contributes to the server: the value a plugin's hook gives for a
model_type.

The serving hooks (``register_tool_parsers``, ``register_reasoning_parsers``,
:mod:`mlx_zoo.hookspecs`) each return ``{model_type: value}``; :func:`by_model_type` picks the
value for the served model, or the core's default when no plugin names its model_type.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("mlx_zoo.serve")


def by_model_type(hook_name: str, model: Any, default: Any) -> Any:
    """The first plugin's ``hook_name`` value for ``model``'s ``model_type``, else ``default``.
    A plugin's value may be None (its family has none of it). A hook that fails is logged and
    skipped: an optional part of a plugin should not take the server down."""
    model_type = getattr(model, "model_type", None)
    try:
        from ..registry import call_hook

        contributions = call_hook(hook_name)
    except Exception as e:  # a plugin whose hook raises, or a core without the hook
        log.warning("%s: %s", hook_name, e)
        return default
    for contributed in contributions:
        if contributed and model_type in contributed:
            return contributed[model_type]
    return default
