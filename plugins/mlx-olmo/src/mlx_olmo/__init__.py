"""mlx-olmo: OLMo 2 for mlx-zoo (model_type ``olmo2``), on the core's
shared decoder (:mod:`mlx_zoo.decoder`); see :mod:`mlx_olmo.olmo2`."""

from mlx_zoo import Architecture, hookimpl

from .olmo2 import Model, ModelArgs

__all__ = ["Model", "ModelArgs"]


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_models() -> list[Architecture]:
    return [Architecture("olmo2", ModelArgs, Model)]
