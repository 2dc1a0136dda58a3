"""Demo checkpoints that ship with mlx-zoo: tiny models (a few MB) trained by
``scripts/train_demo.py`` on docstrings of Python's standard library, one per architecture.

They run offline, so ``mlx-zoo generate`` works right after installation; load one with the
model reference ``demo:NAME`` (``mlx_zoo.load("demo:qwen2")``). See README.md beside this file.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError

DEMO_PREFIX = "demo:"
DEFAULT_DEMO = "qwen2"
DEMO_ROOT = Path(__file__).resolve().parent


def available_demos() -> list[str]:
    """Names of the demos present in this installation."""
    return sorted(p.name for p in DEMO_ROOT.iterdir() if (p / "config.json").is_file())


def is_demo_reference(reference: object) -> bool:
    return isinstance(reference, str) and reference.startswith(DEMO_PREFIX)


def demo_dir(name: str) -> Path:
    """The directory of demo ``name``; raises ``ModelNotFoundError`` listing the others."""
    path = DEMO_ROOT / name
    if not name or "/" in name or not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{DEMO_PREFIX}{name}: no such demo checkpoint (available: "
                                 + ", ".join(DEMO_PREFIX + d for d in available_demos()) + ")")
    return path
