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


GGUF_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
"""Block counts llama.cpp takes for the 27B models (``LLM_TYPE_27B``), whose query scale is
``(hidden_size / heads) ** -0.5`` rather than ``head_dim ** -0.5`` (``query_pre_attn_scalar``
168, not 128); the file has no key for it."""
GGUF_GLOBAL_EVERY = {"gemma2": 2, "gemma3": 6}
"""llama.cpp's fixed window pattern (``set_swa_pattern``): every n-th layer global."""


def gguf_config(gguf, model_type: str) -> dict:
    """config.json of a llama.cpp ``gemma2`` / ``gemma3`` file: the core's decoder keys plus
    Gemma's -- ``head_dim`` (``attention.key_length``), the window and its pattern, the
    soft-caps (absent: none, not transformers' defaults), Gemma 3's local RoPE base
    (``rope.freq_base_swa``, else llama.cpp's fixed 10000) -- and the 27B query scale."""
    from mlx_zoo.gguf import Metadata, decoder_config

    arch, meta = gguf.architecture, Metadata(gguf)
    config = decoder_config(gguf, model_type)
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    head_dim = meta.int("attention.key_length", hidden // heads)
    config["head_dim"] = head_dim
    big = config["num_hidden_layers"] == GGUF_27B_LAYERS[arch]
    config["query_pre_attn_scalar"] = hidden // heads if big else head_dim
    config["sliding_window"] = meta.int("attention.sliding_window")
    config["final_logit_softcapping"] = meta.float("final_logit_softcapping")
    if arch == "gemma2":
        config["attn_logit_softcapping"] = meta.float("attn_logit_softcapping")
    else:
        config["sliding_window_pattern"] = GGUF_GLOBAL_EVERY[arch]
        config["rope_local_base_freq"] = meta.float("rope.freq_base_swa", 10_000.0)
    if config["sliding_window"] is not None:
        every = GGUF_GLOBAL_EVERY[arch]
        config["layer_types"] = ["full_attention" if (i + 1) % every == 0 else
                                 "sliding_attention" for i in range(config["num_hidden_layers"])]
    return config


@hookimpl
def register_gguf_architectures() -> dict:
    """llama.cpp's ``gemma2`` and ``gemma3`` files (the text model; Gemma 3's vision tower is a
    separate mmproj file): Gemma's sandwich norms under llama.cpp's names (``post_attention_norm``,
    ``ffn_norm`` = the pre-feed-forward norm, ``post_ffw_norm``), the ``1 +`` its converter adds
    to every RMSNorm weight taken off again (the model scales by ``1 + weight`` itself), no
    q/k permutation (Gemma is not converted as a Llama), the head tied to the embedding."""
    from mlx_zoo.gguf import DECODER_TENSORS, GEMMA_SHIFTED, GGUFArchitecture

    tensors = {**DECODER_TENSORS,
               "blk.{i}.post_attention_norm": "model.layers.{i}.post_attention_layernorm",
               "blk.{i}.ffn_norm": "model.layers.{i}.pre_feedforward_layernorm",
               "blk.{i}.post_ffw_norm": "model.layers.{i}.post_feedforward_layernorm"}
    return {arch: GGUFArchitecture(arch, model_type, config=gguf_config, tensors=tensors,
                                   shifted=GEMMA_SHIFTED)
            for arch, model_type in (("gemma2", "gemma2"), ("gemma3", "gemma3_text"))}
