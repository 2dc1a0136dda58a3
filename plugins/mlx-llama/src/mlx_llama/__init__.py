"""mlx-llama: Llama and Mistral for mlx-zoo (model_types ``llama`` and ``mistral``), both on the
core's shared decoder (:mod:`mlx_zoo.decoder`); see :mod:`mlx_llama.llama`."""

from mlx_zoo import Architecture, hookimpl

from .llama import MistralArgs, MistralModel, Model, ModelArgs

__all__ = ["MistralArgs", "MistralModel", "Model", "ModelArgs"]


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_models() -> list[Architecture]:
    return [Architecture("llama", ModelArgs, Model),
            Architecture("mistral", MistralArgs, MistralModel)]


@hookimpl
def register_gguf_architectures() -> dict:
    """llama.cpp's ``llama`` files (Llama 2/3.x, Mistral 7B, SmolLM, ...: its converter writes
    Mistral's as ``llama`` too, without the sliding window, which Mistral v0.2+ dropped): the
    core's decoder defaults with the query/key rows llama.cpp permuted put back, and Llama 3.1's
    RoPE scaling recovered from ``rope_freqs`` (:mod:`mlx_zoo.gguf.mapping`)."""
    from mlx_zoo.gguf import LLAMA_PERMUTED, GGUFArchitecture

    return {"llama": GGUFArchitecture("llama", "llama", permuted=LLAMA_PERMUTED)}


@hookimpl
def register_tool_parsers() -> dict:
    """Llama 3.1's JSON tool calls (``{"name", "parameters"}``, :mod:`mlx_llama.tools`) for
    ``mlx-zoo serve``; imported only when asked (the server's dependency)."""
    from .tools import LlamaToolCallParser

    return {"llama": LlamaToolCallParser()}
