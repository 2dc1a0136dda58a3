"""mlx-qwen3: Qwen3 and Qwen3-MoE for mlx-zoo (model_types ``qwen3`` and ``qwen3_moe``), both
on the core's shared decoder (:mod:`mlx_zoo.decoder`); see :mod:`mlx_qwen3.qwen3`."""

from pathlib import Path

from mlx_zoo import Architecture, hookimpl

from .qwen3 import Model, ModelArgs, MoEArgs, MoEModel

__all__ = ["Model", "ModelArgs", "MoEArgs", "MoEModel"]


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_models() -> list[Architecture]:
    return [Architecture("qwen3", ModelArgs, Model), Architecture("qwen3_moe", MoEArgs, MoEModel)]


@hookimpl
def register_demos() -> dict[str, Path]:
    """The demo checkpoint shipped in this package (``demo:qwen3``), where the package holds it
    (a wheel built without it offers none)."""
    demo = Path(__file__).resolve().parent / "demo"
    return {"qwen3": demo} if (demo / "config.json").is_file() else {}
