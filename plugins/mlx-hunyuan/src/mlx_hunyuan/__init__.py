"""mlx-hunyuan: Tencent's HunYuan family for mlx-zoo, in the three config.json formats it is
published in.

==================  =================================  ==========================================
model_type          module                             checkpoints
==================  =================================  ==========================================
hunyuan_v1_dense    :mod:`mlx_hunyuan.hunyuan_v1_dense`  Hunyuan-0.5B ... 7B (transformers' format)
hunyuan_v1_moe      :mod:`mlx_hunyuan.hunyuan_v1_moe`    Hunyuan-A13B (transformers' format)
hunyuan             :mod:`mlx_hunyuan.hunyuan`           Hunyuan-Large, Hunyuan-A13B (Tencent's)
==================  =================================  ==========================================

The three share their modules (:mod:`mlx_hunyuan.blocks`) and differ in configuration policy.
The plugin also adds HunYuan's NTK-alpha RoPE to the core's RoPE registry
(:mod:`mlx_hunyuan.rope`).
"""

from pathlib import Path

from mlx_zoo import Architecture, hookimpl

from . import hunyuan, hunyuan_v1_dense, hunyuan_v1_moe
from .rope import NTK_ALPHA, NTKAlphaRoPE

__all__ = ["NTKAlphaRoPE", "hunyuan", "hunyuan_v1_dense", "hunyuan_v1_moe"]


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_models() -> list[Architecture]:
    return [
        Architecture("hunyuan_v1_dense", hunyuan_v1_dense.ModelArgs, hunyuan_v1_dense.Model),
        Architecture("hunyuan_v1_moe", hunyuan_v1_moe.ModelArgs, hunyuan_v1_moe.Model),
        Architecture("hunyuan", hunyuan.ModelArgs, hunyuan.Model),
    ]


@hookimpl
def register_rope_variants() -> dict[str, type]:
    return {NTK_ALPHA: NTKAlphaRoPE}


@hookimpl
def register_demos() -> dict[str, Path]:
    """The demo checkpoint shipped in this package (``demo:hunyuan``)."""
    return {"hunyuan": Path(__file__).resolve().parent / "demo"}


def gguf_dense_config(gguf, model_type: str) -> dict:
    """config.json of a llama.cpp ``hunyuan-dense`` file: the core's decoder keys, the head
    width, attention biases and query/key norms as the tensors show them. llama.cpp's converter
    folds HunYuan's NTK-alpha RoPE into the base it writes (``theta * alpha ** (d / (d - 2))``,
    scaling type none), so ``rope.freq_base`` is already the stretched base: plain RoPE."""
    from mlx_zoo.gguf import Metadata, decoder_config

    config = decoder_config(gguf, model_type)
    head_dim = Metadata(gguf).int("attention.key_length")
    if head_dim is not None:
        config["head_dim"] = head_dim
    config["attention_bias"] = "blk.0.attn_q.bias" in gguf.tensors
    config["use_qk_norm"] = "blk.0.attn_q_norm.weight" in gguf.tensors
    return config


def gguf_moe_config(gguf, model_type: str) -> dict:
    """config.json of a llama.cpp ``hunyuan-moe`` file (Hunyuan-A13B) as ``hunyuan_v1_moe``:
    the dense keys plus the routing (``expert_count``, ``expert_used_count``). llama.cpp routes
    like transformers' format (softmax, top-k renormalised, one shared expert); that format gives
    the experts and the shared MLP the one width ``intermediate_size``, so a file whose
    ``expert_feed_forward_length``, ``expert_shared_feed_forward_length`` or
    ``expert_shared_count`` says otherwise is refused, naming the key."""
    from mlx_zoo import GGUFError
    from mlx_zoo.gguf import Metadata

    meta, config = Metadata(gguf), gguf_dense_config(gguf, model_type)
    width = config["intermediate_size"]
    for key, expected in (("expert_feed_forward_length", width),
                          ("expert_shared_feed_forward_length", width),
                          ("expert_shared_count", 1)):
        value = meta.int(key, expected)
        if value != expected:
            raise GGUFError(gguf.path, f"expected {expected} (hunyuan_v1_moe: experts and one "
                            f"shared MLP of width feed_forward_length), got {value}",
                            meta.key(key))
    config["num_experts"] = meta.int("expert_count", required=True)
    config["moe_topk"] = meta.int("expert_used_count", required=True)
    return config


@hookimpl
def register_gguf_architectures() -> dict:
    """llama.cpp's ``hunyuan-dense`` (as ``hunyuan_v1_dense``) and ``hunyuan-moe`` (as
    ``hunyuan_v1_moe``) files: the query/key norms under their HunYuan names, the MoE router
    (``mlp.gate.wg``), shared MLP and the stacked experts (``ffn_*_exps``, which go to the
    stacked ``mlp.switch_mlp`` names :func:`~mlx_hunyuan.blocks.sanitize_weights` passes
    through). No q/k permutation: llama.cpp converts HunYuan with its rotate-half RoPE."""
    from mlx_zoo.gguf import DECODER_TENSORS, GGUFArchitecture

    layer = "model.layers.{i}"
    dense = {**DECODER_TENSORS,
             "blk.{i}.attn_q_norm": f"{layer}.self_attn.query_layernorm",
             "blk.{i}.attn_k_norm": f"{layer}.self_attn.key_layernorm"}
    moe = {k: v for k, v in dense.items() if not k.startswith("blk.{i}.ffn_")
           or k == "blk.{i}.ffn_norm"}
    moe["blk.{i}.ffn_gate_inp"] = f"{layer}.mlp.gate.wg"
    for proj in ("gate", "up", "down"):
        moe[f"blk.{{i}}.ffn_{proj}_exps"] = f"{layer}.mlp.switch_mlp.{proj}_proj"
        moe[f"blk.{{i}}.ffn_{proj}_shexp"] = f"{layer}.mlp.shared_mlp.{proj}_proj"
    return {"hunyuan-dense": GGUFArchitecture("hunyuan-dense", "hunyuan_v1_dense",
                                              config=gguf_dense_config, tensors=dense),
            "hunyuan-moe": GGUFArchitecture("hunyuan-moe", "hunyuan_v1_moe",
                                            config=gguf_moe_config, tensors=moe)}
