"""mlx-qwen2: the Qwen2 / Qwen2.5 architecture for mlx-zoo (model_type ``qwen2``).

The reference plugin: a module with one hook implementation, found by the core through the
``mlx_zoo.models`` entry point declared in this distribution's pyproject.toml.
"""

from pathlib import Path

from mlx_zoo import Architecture, hookimpl

from .qwen2 import Model, ModelArgs

__all__ = ["Model", "ModelArgs"]


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_models() -> list[Architecture]:
    return [Architecture("qwen2", ModelArgs, Model)]


@hookimpl
def register_demos() -> dict[str, Path]:
    """The demo checkpoint shipped in this package (``demo:qwen2``)."""
    return {"qwen2": Path(__file__).resolve().parent / "demo"}


@hookimpl
def register_gguf_architectures() -> dict:
    """llama.cpp's ``qwen2`` files: the core's decoder defaults (:mod:`mlx_zoo.gguf`); the q/k/v
    biases are ``blk.N.attn_{q,k,v}.bias``, and llama.cpp does not permute Qwen2's rows."""
    from mlx_zoo.gguf import GGUFArchitecture

    return {"qwen2": GGUFArchitecture("qwen2", "qwen2")}
