"""mlx-qwen3: Qwen3 and Qwen3-MoE for mlx-zoo (model_types ``qwen3`` and ``qwen3_moe``), both
on the core's shared decoder (:mod:`mlx_zoo.decoder`); see :mod:`mlx_qwen3.qwen3`."""

from pathlib import Path

from mlx_zoo import Architecture, hookimpl

from .qwen3 import Model, ModelArgs, MoEArgs, MoEModel

__all__ = ["Model", "ModelArgs", "MoEArgs", "MoEModel"]


@hookimpl
def spec_version() -> int:
    """The mlx-zoo plugin spec this plugin implements (``mlx_zoo.SPEC_VERSION``)."""
    return 1


@hookimpl
def register_models() -> list[Architecture]:
    return [Architecture("qwen3", ModelArgs, Model), Architecture("qwen3_moe", MoEArgs, MoEModel)]


@hookimpl
def register_demos() -> dict[str, Path]:
    """The demo checkpoint shipped in this package (``demo:qwen3``), where the package holds it
    (a wheel built without it offers none)."""
    demo = Path(__file__).resolve().parent / "demo"
    return {"qwen3": demo} if (demo / "config.json").is_file() else {}


def gguf_moe_config(gguf, model_type: str) -> dict:
    """config.json of a llama.cpp ``qwen3moe`` file: the decoder's keys, plus the experts
    (``expert_count``, ``expert_used_count``, ``expert_feed_forward_length``); llama.cpp always
    renormalises Qwen3-MoE's top-k routing weights (``expert_weights_norm``, where written)."""
    from mlx_zoo.gguf import Metadata, decoder_config

    config, meta = decoder_config(gguf, model_type), Metadata(gguf)
    norm = gguf.metadata.get(meta.key("expert_weights_norm"), True)
    config.update(num_experts=meta.int("expert_count", required=True),
                  num_experts_per_tok=meta.int("expert_used_count", required=True),
                  moe_intermediate_size=meta.int("expert_feed_forward_length", required=True),
                  norm_topk_prob=bool(norm))
    return config


@hookimpl
def register_gguf_architectures() -> dict:
    """llama.cpp's ``qwen3`` and ``qwen3moe`` files: the core's decoder defaults (q/k norms are
    ``blk.N.attn_{q,k}_norm``; no row permutation), the MoE layers' router (``ffn_gate_inp``)
    and stacked experts (``ffn_{gate,up,down}_exps``) under the names the model holds."""
    from mlx_zoo.gguf import DECODER_TENSORS, GGUFArchitecture

    moe = dict(DECODER_TENSORS)
    moe["blk.{i}.ffn_gate_inp"] = "model.layers.{i}.mlp.gate"
    for proj in ("gate", "up", "down"):
        moe[f"blk.{{i}}.ffn_{proj}_exps"] = f"model.layers.{{i}}.mlp.switch_mlp.{proj}_proj"
    return {"qwen3": GGUFArchitecture("qwen3", "qwen3"),
            "qwen3moe": GGUFArchitecture("qwen3moe", "qwen3_moe", config=gguf_moe_config,
                                         tensors=moe)}
