"""Demo checkpoints, resolved through the plugins that ship them.

Each plugin may ship tiny demo models (a few MB, trained by ``scripts/train_demo.py`` on
docstrings of Python's standard library; see README.md beside this file) inside its own package,
and names them with the ``register_demos`` hook (:mod:`mlx_zoo.hookspecs`); the core ships none.
They run offline, so ``mlx-zoo generate`` works right after installing a plugin: load one with
the model reference ``demo:NAME`` (``mlx_zoo.load("demo:qwen2")``, with mlx-qwen2 installed).

``demo:NAME`` is resolved by whoever provides it: the registered plugins first, else the
installed ones, importing only what is needed (:func:`mlx_zoo.registry.find_contribution`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError
from ..registry import (
    PLUGINS_ENV,
    all_contributions,
    find_contribution,
    installed_entries,
    is_enabled,
)

__all__ = ["DEMO_HOOK", "DEMO_PREFIX", "PREFERRED_DEMOS", "README", "available_demos",
           "default_demo", "demo_dir", "is_demo_reference"]

DEMO_PREFIX = "demo:"
DEMO_HOOK = "register_demos"
PREFERRED_DEMOS = ("qwen2",)
"""Picked first, in this order, as the default model of ``mlx-zoo generate`` / ``chat``."""
README = Path(__file__).resolve().with_name("README.md")
"""What the project's demos are, how they were trained, and the licence of their training text."""


def _is_checkpoint(path: object) -> bool:
    """A tiny demo checkpoint: a model directory with config.json."""
    return isinstance(path, (str, Path)) and (Path(path) / "config.json").is_file()


def _is_real_model(path: object) -> bool:
    """A real model another package ships, as its GGUF file (``demo:smollm2``)."""
    return isinstance(path, (str, Path)) and Path(path).suffix == ".gguf" \
        and Path(path).is_file()


def available_demos() -> list[str]:
    """Names of the tiny demo checkpoints the enabled plugins provide (every installed plugin is
    imported); the real models some register (``demo:smollm2``, a GGUF file) are not listed."""
    return sorted(name for name, path in all_contributions(DEMO_HOOK).items()
                  if _is_checkpoint(path))


def default_demo() -> str | None:
    """The demo ``mlx-zoo generate`` runs without ``--model``: the first of
    :data:`PREFERRED_DEMOS` some plugin provides, else the first available; None if none is."""
    for name in PREFERRED_DEMOS:
        if _is_checkpoint(find_contribution(DEMO_HOOK, name)):
            return name
    names = available_demos()
    return names[0] if names else None


def is_demo_reference(reference: object) -> bool:
    """Whether ``reference`` is a ``demo:NAME`` model reference."""
    return isinstance(reference, str) and reference.startswith(DEMO_PREFIX)


def demo_dir(name: str) -> Path:
    """The directory of demo ``name`` (for a real model, its GGUF file), from the plugin that
    provides it; raises :class:`~mlx_zoo.ModelNotFoundError` listing the available demos."""
    path = find_contribution(DEMO_HOOK, name) if name and "/" not in name else None
    if not (_is_checkpoint(path) or _is_real_model(path)):
        available = ", ".join(DEMO_PREFIX + d for d in available_demos()) or "none installed"
        raise ModelNotFoundError(f"{DEMO_PREFIX}{name}: no such demo checkpoint (available: "
                                 f"{available}; plugins ship them){_switched_off()}")
    return Path(path)


def _switched_off() -> str:
    """The part of the error naming the installed plugins ``MLX_ZOO_PLUGINS`` switches off
    (their demos are not looked at); empty when it switches none off."""
    import os

    off = sorted({e.distribution for e in installed_entries() if not is_enabled(e.distribution)})
    if not off:
        return ""
    return (f"; {PLUGINS_ENV}={os.environ.get(PLUGINS_ENV, '')!r} switches off the installed "
            f"plugin{'s' if len(off) > 1 else ''} {', '.join(off)}, whose demos are not looked "
            f"at")
