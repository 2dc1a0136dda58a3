"""mlx-llama: Llama and Mistral for mlx-zoo (model_types ``llama`` and ``mistral``), both on the
core's shared decoder (:mod:`mlx_zoo.decoder`); see :mod:`mlx_llama.llama`."""

from mlx_zoo import Architecture, hookimpl

from .llama import MistralArgs, MistralModel, Model, ModelArgs

__all__ = ["MistralArgs", "MistralModel", "Model", "ModelArgs"]


@hookimpl
def register_models() -> list[Architecture]:
    return [Architecture("llama", ModelArgs, Model),
            Architecture("mistral", MistralArgs, MistralModel)]
