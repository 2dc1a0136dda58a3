"""Fixtures shared by the core's tests: the throwaway plugin distribution, tiny checkpoints of
its model, and fake installed distributions for conflict / broken-plugin cases."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# The parity tests compare float32 results within 1e-4: on GPUs with TensorFloat-32, MLX's CUDA
# backend would run float32 matmuls with 10-bit mantissas (~1e-3 relative error) unless told not
# to. Read by MLX when it initialises the device; no effect on the CPU or Metal backends.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

REPO = Path(__file__).resolve().parent.parent
TESTPLUGIN_DIR = REPO / "tests" / "fixtures" / "mlx-zoo-testplugin"
TESTPLUGIN_DIST = "mlx-zoo-testplugin"
TINY_VOCAB, TINY_HIDDEN = 32, 16


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, check=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def testplugin():
    """The fixture plugin, pip-installed (a real distribution with real entry points) for the
    session and uninstalled afterwards."""
    pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(TESTPLUGIN_DIR))
    importlib.invalidate_caches()
    yield TESTPLUGIN_DIST
    pip("uninstall", "--quiet", "--yes", TESTPLUGIN_DIST)
    importlib.invalidate_caches()


def write_tiny_checkpoint(path: Path, model_type: str = "zoo_tiny", seed: int = 0, **config):
    """A zoo_tiny checkpoint: config.json and model.safetensors with random weights."""
    import mlx.core as mx

    path.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": model_type, "vocab_size": TINY_VOCAB, "hidden_size": TINY_HIDDEN,
           "num_attention_heads": 2, **config}
    (path / "config.json").write_text(json.dumps(cfg))
    mx.random.seed(seed)
    weights = {
        "embed.weight": mx.random.normal((TINY_VOCAB, TINY_HIDDEN)),
        "qkv.weight": mx.random.normal((3 * TINY_HIDDEN, TINY_HIDDEN)) * 0.5,
        "out.weight": mx.random.normal((TINY_VOCAB, TINY_HIDDEN)) * 0.5,
    }
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path, testplugin) -> Path:
    return write_tiny_checkpoint(tmp_path / "tiny")


def fake_distribution(root: Path, name: str, entry_points: dict[str, str],
                      modules: dict[str, str] | None = None, version: str = "1.0") -> Path:
    """Write an installed distribution (dist-info with entry_points.txt, plus module sources)
    into ``root``, a directory the caller puts on sys.path."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[mlx_zoo.models]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(source)
    return root


# ``isolated_registry`` (a fresh plugin registry per test) comes from the plugin-author kit's
# pytest plugin, mlx_zoo.testing.pytest_plugin, registered by the core's distribution.
