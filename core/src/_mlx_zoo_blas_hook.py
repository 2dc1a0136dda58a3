"""Start-up hook: MLX's Linux CPU wheel gets the fast BLAS whatever the program imports first.

``mlx_zoo_blas.pth``, which the core's wheel installs beside this module in site-packages, is
read by ``site`` at every interpreter start-up. On Linux, unless ``MLX_ZOO_BLAS_HOOK=0``, it
imports this module and calls :func:`install`, which puts a :class:`MlxCoreWatcher` first on
``sys.meta_path``. The watcher compares every import's name with ``"mlx.core"`` and does nothing
else -- until ``mlx.core`` is about to be imported (``import mlx.core``, ``import mlx.nn``,
mlx-lm, ``import mlx_zoo``: any route). Then, once, before MLX's extension module is loaded and
its symbols bound, it runs :mod:`mlx_zoo.blas` (that module alone, not the ``mlx_zoo`` package:
see :func:`load_blas_module`), which preloads the fast BLAS where it helps -- Linux, MLX's CPU
wheel, not opted out -- and lets the import go on; it never raises.

**What a program that never imports mlx.core pays:** reading the ``.pth`` line and importing
this module (docs/benchmarks.md, "Import order": within the noise of an environment without
mlx-zoo); no library opened, no compiler run, no file written.

**Opting out.** ``MLX_ZOO_BLAS_HOOK=0``: the ``.pth`` line does not import this module at all,
and the import order matters again (``import mlx_zoo`` first serves the fast path; ``mlx.core``
first keeps MLX's reference BLAS, and ``import mlx_zoo`` warns). ``MLX_ZOO_BLAS=reference``
(``off``, ``none``, ``0``) keeps MLX's BLAS in every case: :func:`install` then installs
nothing. ``python -S`` reads no ``.pth`` file, and editable installs (``pip install -e``) do not
install it: there the import order matters as without the hook.
"""

from __future__ import annotations

import os
import sys

HOOK_ENV = "MLX_ZOO_BLAS_HOOK"
"""Environment variable: ``0`` switches the start-up hook off (read by ``mlx_zoo_blas.pth``)."""

TARGET = "mlx.core"
"""The import the watcher waits for: MLX's extension module, which binds ``cblas_sgemm``."""

KEEP_REFERENCE = ("reference", "off", "none", "0")
"""Values of ``MLX_ZOO_BLAS`` that keep MLX's own BLAS (as :data:`mlx_zoo.blas.KEEP_REFERENCE`;
repeated here because importing that module is what the hook must not do at start-up)."""


class MlxCoreWatcher:
    """A ``sys.meta_path`` finder that finds nothing: it runs :mod:`mlx_zoo.blas` the first time
    ``mlx.core`` is about to be imported, then steps aside (it stays on ``sys.meta_path``,
    inert: removing it while another thread walks the list could make that thread skip a
    finder)."""

    def __init__(self) -> None:
        self.done = False

    def find_spec(self, name, path=None, target=None):
        if name != TARGET or self.done:
            return None
        self.done = True  # first: whatever mlx_zoo.blas imports passes straight through
        try:
            load_blas_module()
        except Exception:  # an import hook must never break the import
            pass
        return None  # the usual finders import mlx.core

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of mlx_zoo: {'done' if self.done else 'waiting'}>"


def load_blas_module():
    """``mlx_zoo.blas``, executed (which preloads the fast BLAS) without importing the
    ``mlx_zoo`` package, whose ``__init__`` imports ``mlx.core``: the module is loaded from its
    file under its own name, so a later ``import mlx_zoo`` finds it in ``sys.modules`` and uses
    this one (one status per process). None where mlx_zoo is not installed."""
    module = sys.modules.get("mlx_zoo.blas")
    if module is not None:  # mlx_zoo is being (or was) imported: it has run already
        return module
    import importlib.util

    package = importlib.util.find_spec("mlx_zoo")  # locates the package; does not import it
    if package is None or not package.submodule_search_locations:
        return None
    for directory in package.submodule_search_locations:
        path = os.path.join(directory, "blas.py")
        if os.path.isfile(path):
            break
    else:
        return None
    spec = importlib.util.spec_from_file_location("mlx_zoo.blas", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def install() -> MlxCoreWatcher | None:
    """Put the watcher first on ``sys.meta_path`` (once); None where it has nothing to do: not
    Linux, ``MLX_ZOO_BLAS_HOOK=0`` or ``MLX_ZOO_BLAS=reference``, ``mlx.core`` imported
    already."""
    if (not sys.platform.startswith("linux") or os.environ.get(HOOK_ENV, "").strip() == "0"
            or os.environ.get("MLX_ZOO_BLAS", "").strip().lower() in KEEP_REFERENCE
            or TARGET in sys.modules):
        return None
    for finder in sys.meta_path:
        if isinstance(finder, MlxCoreWatcher):
            return finder
    watcher = MlxCoreWatcher()
    sys.meta_path.insert(0, watcher)
    return watcher
