"""mlx-gemma: Gemma 2 and Gemma 3's text model for mlx-zoo (model_types ``gemma2``,
``gemma3_text``, and ``gemma3``: the text part of Gemma 3's multimodal checkpoints), on the core's
shared decoder (:mod:`mlx_zoo.decoder`); see :mod:`mlx_gemma.gemma2` and :mod:`mlx_gemma.gemma3`."""

from pathlib import Path

from mlx_zoo import Architecture, hookimpl

from .gemma2 import Gemma2Args, Gemma2Model
from .gemma3 import Gemma3Args, Gemma3Model, Gemma3TextArgs, Gemma3TextModel

__all__ = ["Gemma2Args", "Gemma2Model", "Gemma3Args", "Gemma3Model", "Gemma3TextArgs",
           "Gemma3TextModel"]


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_models() -> list[Architecture]:
    return [Architecture("gemma2", Gemma2Args, Gemma2Model),
            Architecture("gemma3_text", Gemma3TextArgs, Gemma3TextModel),
            Architecture("gemma3", Gemma3Args, Gemma3Model)]


@hookimpl
def register_demos() -> dict[str, Path]:
    """The demo checkpoint shipped in this package (``demo:gemma3``, a ``gemma3_text`` model),
    where the package holds it (a wheel built without it offers none)."""
    demo = Path(__file__).resolve().parent / "demo"
    return {"gemma3": demo} if (demo / "config.json").is_file() else {}
