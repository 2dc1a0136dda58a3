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


GGUF_CHUNK = 8192
"""llama.cpp's fixed chunk of local attention for ``llama4`` (``n_swa``; no key in the file)."""
GGUF_NOPE_EVERY = 4
"""llama.cpp's fixed NoPE layer step (``n_no_rope_layer_step``): every 4th layer global."""
GGUF_NO_QK_NORM_EXPERTS = 128
"""llama.cpp leaves out the query/key L2 norm for its ``17B_128E`` type (Maverick, 128
experts), as Maverick's ``use_qk_norm: false`` does."""


def gguf_config(gguf, model_type: str) -> dict:
    """config.json (``llama4_text``) of a llama.cpp ``llama4`` file: the core's decoder keys
    (Scout's llama3 RoPE scaling recovered from ``rope_freqs``), the widths (``feed_forward_length``
    the dense layers', ``expert_feed_forward_length`` each expert's), the routing, and what
    llama.cpp fixes rather than stores: chunked attention over 8192 positions on three layers
    of four, the fourth global without RoPE, the NoPE layers' attention temperature (scale
    ``attention.temperature_scale``, default 0.1, floor ``attention.temperature_length``,
    default 8192), the query/key norm but on Maverick. ``attention.sliding_window`` 0 (its
    converter's mark of an all-global model, MobileLLM-R1) turns chunking off and, as in
    llama.cpp, leaves RoPE out of the last layer only."""
    from mlx_zoo.gguf import Metadata, decoder_config

    meta, config = Metadata(gguf), decoder_config(gguf, model_type)
    layers = config["num_hidden_layers"]
    head_dim = meta.int("attention.key_length") or meta.int("rope.dimension_count")
    if head_dim is not None:
        config["head_dim"] = head_dim
    experts = meta.int("expert_count", required=True)
    config.update(
        intermediate_size_mlp=config["intermediate_size"],
        intermediate_size=meta.int("expert_feed_forward_length", required=True),
        num_local_experts=experts,
        num_experts_per_tok=meta.int("expert_used_count", 1),
        interleave_moe_layer_step=meta.int("interleave_moe_layer_step", 1),
        use_qk_norm=experts != GGUF_NO_QK_NORM_EXPERTS,
        attn_temperature_tuning=True,
        attn_scale=meta.float("attention.temperature_scale", 0.1),
        floor_scale=meta.int("attention.temperature_length", 8192),
        attention_chunk_size=GGUF_CHUNK, no_rope_layer_interval=GGUF_NOPE_EVERY)
    if gguf.metadata.get(meta.key("attention.sliding_window")) == 0:
        config.update(attention_chunk_size=None, no_rope_layer_interval=layers)
    return config


@hookimpl
def register_gguf_architectures() -> dict:
    """llama.cpp's ``llama4`` files (the text model; the vision tower is a separate mmproj
    file, and a ``v.*``/``mm.*`` tensor here is refused as unmapped): the feed-forward tensors
    under ``feed_forward.*`` -- router, the stacked experts (``ffn_*_exps``, already in
    :class:`~mlx_zoo.SwitchGLU`'s ``(experts, out, in)`` layout, which ``sanitize`` passes
    through), shared expert, dense MLP. No q/k permutation (its converter sets
    ``undo_permute = False``: Llama 4's RoPE already rotates adjacent pairs)."""
    from mlx_zoo.gguf import DECODER_TENSORS, GGUFArchitecture

    layer = "model.layers.{i}.feed_forward"
    tensors = dict(DECODER_TENSORS)
    tensors["blk.{i}.ffn_gate_inp"] = f"{layer}.router"
    for proj in ("gate", "up", "down"):
        tensors[f"blk.{{i}}.ffn_{proj}"] = f"{layer}.{proj}_proj"
        tensors[f"blk.{{i}}.ffn_{proj}_exps"] = f"{layer}.experts.{proj}_proj"
        tensors[f"blk.{{i}}.ffn_{proj}_shexp"] = f"{layer}.shared_expert.{proj}_proj"
    return {"llama4": GGUFArchitecture("llama4", "llama4_text", config=gguf_config,
                                       tensors=tensors)}
