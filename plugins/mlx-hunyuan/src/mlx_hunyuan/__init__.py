"""mlx-hunyuan: Tencent's HunYuan family for mlx-zoo, in the three config.json formats it is
published in.

==================  =================================  ==========================================
model_type          module                             checkpoints
==================  =================================  ==========================================
hunyuan_v1_dense    :mod:`mlx_hunyuan.hunyuan_v1_dense`  Hunyuan-0.5B ... 7B (transformers' format)
hunyuan_v1_moe      :mod:`mlx_hunyuan.hunyuan_v1_moe`    Hunyuan-A13B (transformers' format)
hunyuan             :mod:`mlx_hunyuan.hunyuan`           Hunyuan-Large, Hunyuan-A13B (Tencent's)
==================  =================================  ==========================================

The three share their modules (:mod:`mlx_hunyuan.blocks`) and differ in configuration policy.
The plugin also adds HunYuan's NTK-alpha RoPE to the core's RoPE registry
(:mod:`mlx_hunyuan.rope`).
"""

from pathlib import Path

from mlx_zoo import Architecture, hookimpl

from . import hunyuan, hunyuan_v1_dense, hunyuan_v1_moe
from .rope import NTK_ALPHA, NTKAlphaRoPE

__all__ = ["NTKAlphaRoPE", "hunyuan", "hunyuan_v1_dense", "hunyuan_v1_moe"]


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_models() -> list[Architecture]:
    return [
        Architecture("hunyuan_v1_dense", hunyuan_v1_dense.ModelArgs, hunyuan_v1_dense.Model),
        Architecture("hunyuan_v1_moe", hunyuan_v1_moe.ModelArgs, hunyuan_v1_moe.Model),
        Architecture("hunyuan", hunyuan.ModelArgs, hunyuan.Model),
    ]


@hookimpl
def register_rope_variants() -> dict[str, type]:
    return {NTK_ALPHA: NTKAlphaRoPE}


@hookimpl
def register_demos() -> dict[str, Path]:
    """The demo checkpoint shipped in this package (``demo:hunyuan``)."""
    return {"hunyuan": Path(__file__).resolve().parent / "demo"}
