"""What mlx-lm serves, learned from its installed package at run time.

mlx-lm's own loader maps a config's ``model_type`` to a module of ``mlx_lm.models`` -- through
its remapping tables, ``MODEL_REMAPPING`` (``mistral`` -> ``llama``) and
``MODEL_ARCHITECTURE_REMAPPING`` (a ``(model_type, architecture)`` pair) -- and takes the module's
``Model`` and ``ModelArgs``. The bridge reads the same two places:

* the model types are the modules of ``mlx_lm.models`` whose source names both ``Model`` and
  ``ModelArgs`` (the package also holds helpers: ``cache``, ``base``, ``rope_utils``, ...), read
  as text -- no model module is imported to list them -- plus the tables' aliases;
* a module is imported only when its type is loaded or checked (:func:`import_model_module`);
  one that fails to import -- an error, a missing optional dependency, a ``sys.exit`` at import
  -- makes only its own type unavailable, with the reason.

So a new mlx-lm release brings its new types without a release of the bridge.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import re
from importlib import metadata
from pathlib import Path
from types import ModuleType

from mlx_zoo import PluginError

__all__ = ["MIN_VERSION", "BridgedTypeError", "MlxLmUnavailableError", "import_model_module",
           "mlx_lm_version", "model_types", "module_for"]

DISTRIBUTION = "mlx-lm"
PACKAGE = "mlx_lm"
MODELS = "mlx_lm.models"

MIN_VERSION = (0, 32)
"""The oldest mlx-lm the bridge runs: 0.32 is the first whose cache protocol (``make_mask``,
``merge``) mlx-zoo's caches follow, and the release the bridge is tested with."""

INSTALL = "pip install 'mlx-lm>=0.32'"

MODEL_NAMES = (re.compile(r"\bModel\b"), re.compile(r"\bModelArgs\b"))
"""A module of ``mlx_lm.models`` is a model type when its source names both (mlx-lm's loader
takes ``module.Model`` and ``module.ModelArgs``)."""

PROPAGATED = (KeyboardInterrupt, GeneratorExit)


class MlxLmUnavailableError(PluginError):
    """mlx-lm is not installed, older than :data:`MIN_VERSION`, or its package cannot be read:
    the bridge serves nothing."""


class BridgedTypeError(PluginError):
    """One model type of mlx-lm cannot be served: its module fails to import (the message says
    why and what it printed), defines no ``Model``/``ModelArgs``, or mlx-lm has no such type."""


def mlx_lm_version() -> str:
    """The installed mlx-lm's version; :class:`MlxLmUnavailableError` if it is missing or too
    old."""
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError as e:
        raise MlxLmUnavailableError(
            f"mlx-lm is not installed; the bridge serves the model types mlx-lm supports: "
            f"{INSTALL}") from e
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < MIN_VERSION:
        wanted = ".".join(str(v) for v in MIN_VERSION)
        raise MlxLmUnavailableError(
            f"mlx-lm {version} is too old for the bridge (it needs mlx-lm >= {wanted}): "
            f"{INSTALL.replace('install', 'install -U')}")
    return version


def models_directory() -> Path:
    """The directory of the ``mlx_lm.models`` package, found without importing mlx-lm."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    directory = Path(locations[0]) / "models" if locations else None
    if directory is None or not directory.is_dir():
        raise MlxLmUnavailableError(f"mlx-lm is installed but its {MODELS} package is not "
                                    f"found (looked in {locations or 'nothing'}): reinstall it, "
                                    f"{INSTALL}")
    return directory


def model_modules(directory: Path) -> list[str]:
    """The modules of ``directory`` that are model types (:data:`MODEL_NAMES`), read as text."""
    names = []
    for path in sorted(directory.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if all(pattern.search(text) for pattern in MODEL_NAMES):
            names.append(path.stem)
    return names


@functools.cache
def remapping_tables() -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """mlx-lm's ``MODEL_REMAPPING`` and ``MODEL_ARCHITECTURE_REMAPPING`` (``mlx_lm.utils``;
    importing it imports mlx-lm, once per process)."""
    try:
        utils = importlib.import_module(f"{PACKAGE}.utils")
    except PROPAGATED:
        raise
    except BaseException as e:
        raise MlxLmUnavailableError(f"mlx-lm cannot be imported ({type(e).__name__}: {e}): "
                                    f"reinstall it, {INSTALL}") from e
    aliases = getattr(utils, "MODEL_REMAPPING", {})
    by_architecture = getattr(utils, "MODEL_ARCHITECTURE_REMAPPING", {})
    return dict(aliases), dict(by_architecture)


@functools.cache
def model_types() -> dict[str, str]:
    """Every model type the installed mlx-lm supports -> its module (``"mlx_lm.models.llama"``
    for ``mistral``): the model modules, then the remapping tables' aliases."""
    mlx_lm_version()
    types = {name: f"{MODELS}.{name}" for name in model_modules(models_directory())}
    aliases, by_architecture = remapping_tables()
    for alias, target in sorted(aliases.items()):
        types.setdefault(alias, f"{MODELS}.{target}")
    for (model_type, _), target in sorted(by_architecture.items()):
        types.setdefault(model_type, f"{MODELS}.{target}")
    return types


def module_for(model_type: str, architectures: object = ()) -> str:
    """The module mlx-lm's loader takes ``model_type`` from, given config.json's
    ``architectures`` (``MODEL_ARCHITECTURE_REMAPPING`` first, as mlx-lm reads it)."""
    if isinstance(architectures, str):
        architectures = [architectures]
    _, by_architecture = remapping_tables()
    for architecture in architectures if isinstance(architectures, list) else ():
        target = by_architecture.get((model_type, architecture))
        if target is not None:
            return f"{MODELS}.{target}"
    types = model_types()
    if model_type not in types:
        raise BridgedTypeError(f"mlx-lm {mlx_lm_version()} has no model type {model_type!r}")
    return types[model_type]


def import_model_module(name: str) -> ModuleType:
    """Import ``name`` (a module of ``mlx_lm.models``), capturing what it prints meanwhile (a
    module missing an optional dependency may print the fix and ``sys.exit``); any failure is a
    :class:`BridgedTypeError` naming the module, the exception and what it printed."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            module = importlib.import_module(name)
    except PROPAGATED:
        raise
    except BaseException as e:
        said = " ".join(printed.getvalue().split())
        raise BridgedTypeError(f"{name} cannot be imported: {type(e).__name__}: {e}"
                               + (f" (it printed: {said!r})" if said else "")) from e
    missing = [attr for attr in ("Model", "ModelArgs") if not hasattr(module, attr)]
    if missing:
        raise BridgedTypeError(f"{name} defines no {' or '.join(missing)}, which mlx-lm's loader "
                               "takes from a model module")
    return module
