"""mlx-granite: IBM Granite's dense decoder for mlx-zoo (model_type ``granite``), on the core's
shared decoder (:mod:`mlx_zoo.decoder`); see :mod:`mlx_granite.granite`."""

from mlx_zoo import Architecture, hookimpl

from .granite import Model, ModelArgs

__all__ = ["Model", "ModelArgs"]


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_models() -> list[Architecture]:
    return [Architecture("granite", ModelArgs, Model)]
