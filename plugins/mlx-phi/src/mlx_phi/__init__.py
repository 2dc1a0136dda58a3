"""mlx-phi: Phi-3 and Phi-4-mini for mlx-zoo (model_type ``phi3``), on the core's
shared decoder (:mod:`mlx_zoo.decoder`); see :mod:`mlx_phi.phi3`."""

from mlx_zoo import Architecture, hookimpl

from .phi3 import Model, ModelArgs

__all__ = ["Model", "ModelArgs"]


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_models() -> list[Architecture]:
    return [Architecture("phi3", ModelArgs, Model)]
