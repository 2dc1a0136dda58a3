"""mlx-llama4: Meta's Llama 4 text model for mlx-zoo.

Two model_types, one architecture:

* ``llama4`` -- the multimodal checkpoints as published (Llama-4-Scout-17B-16E,
  Llama-4-Maverick-17B-128E): the text settings nested under ``text_config``, the text weights
  prefixed ``language_model.``, next to a vision tower that this plugin drops;
* ``llama4_text`` -- what transformers' ``Llama4ForCausalLM`` saves: a flat text config.
"""

from pathlib import Path

from mlx_zoo import Architecture, hookimpl

from .llama4 import Model, ModelArgs

__all__ = ["Model", "ModelArgs"]

MODEL_TYPES = ("llama4", "llama4_text")


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_models() -> list[Architecture]:
    return [Architecture(model_type, ModelArgs, Model) for model_type in MODEL_TYPES]


@hookimpl
def register_demos() -> dict[str, Path]:
    """The demo checkpoint shipped in this package (``demo:llama4``)."""
    return {"llama4": Path(__file__).resolve().parent / "demo"}
