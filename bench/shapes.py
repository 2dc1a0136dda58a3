"""Model shapes for the benchmark: config.json contents and the checkpoint's tensor layout.

Each shape is written as the original Hugging Face checkpoint layout (key names and shapes as
the Hub's safetensors have them), so that mlx-zoo and mlx-lm both read it through their own
sanitize step. Weights are random: speed does not depend on their values.

``FULL`` are the real shapes (for the GPU); ``CPU`` keeps every width of the real shape but
fewer layers (and, for Llama 4, a narrower expert) so that a run on a small CPU box takes
minutes. ``--layers`` on the command line overrides the layer count of any shape.
"""

from __future__ import annotations

from copy import deepcopy

# -- configs (config.json, the classic dialect mlx-lm and mlx-zoo both read) ---------------------

QWEN2_05B = {
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}  # https://huggingface.co/Qwen/Qwen2-0.5B/blob/main/config.json

QWEN2_7B = {
    **QWEN2_05B, "hidden_size": 3584, "num_hidden_layers": 28, "intermediate_size": 18944,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "tie_word_embeddings": False,
}  # https://huggingface.co/Qwen/Qwen2-7B/blob/main/config.json

HUNYUAN_7B = {
    "model_type": "hunyuan_v1_dense", "architectures": ["HunYuanDenseV1ForCausalLM"],
    "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 128167, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "max_position_embeddings": 32768, "attention_bias": False, "mlp_bias": False,
    "use_qk_norm": True, "tie_word_embeddings": True,
    "rope_scaling": {"type": "dynamic", "alpha": 1000.0, "factor": 1.0, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
}  # https://huggingface.co/tencent/Hunyuan-7B-Instruct/blob/main/config.json

LLAMA4_SCOUT_TEXT = {
    "model_type": "llama4_text", "hidden_size": 5120, "num_hidden_layers": 48,
    "intermediate_size": 8192, "intermediate_size_mlp": 16384, "num_attention_heads": 40,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 202048, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "max_position_embeddings": 10485760, "num_local_experts": 16,
    "num_experts_per_tok": 1, "interleave_moe_layer_step": 1, "attention_chunk_size": 8192,
    "use_qk_norm": True, "attn_temperature_tuning": True, "floor_scale": 8192,
    "attn_scale": 0.1, "no_rope_layers": [], "attention_bias": False,
    "tie_word_embeddings": False,
    "rope_scaling": {"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 1.0, "original_max_position_embeddings": 8192},
}  # https://huggingface.co/meta-llama/Llama-4-Scout-17B-16E-Instruct/blob/main/config.json

QWEN3_06B = {
    "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
    "hidden_size": 1024, "num_hidden_layers": 28, "intermediate_size": 3072,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
    "tie_word_embeddings": True,
}  # https://huggingface.co/Qwen/Qwen3-0.6B/blob/main/config.json

GEMMA3_270M = {
    "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"],
    "hidden_size": 640, "num_hidden_layers": 18, "intermediate_size": 2048,
    "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
    "max_position_embeddings": 32768, "query_pre_attn_scalar": 256, "sliding_window": 512,
    "sliding_window_pattern": 6, "hidden_activation": "gelu_pytorch_tanh",
    "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                    for i in range(18)],
    "tie_word_embeddings": True,
}  # https://huggingface.co/google/gemma-3-270m/blob/main/config.json

NOPE_LAYER_INTERVAL = 4
"""Llama 4: every 4th layer uses no RoPE (and global attention); the others chunked RoPE."""


def llama4(text: dict) -> dict:
    """The multimodal ``llama4`` config wrapping ``text`` (the layout of the Hub's Scout)."""
    text = deepcopy(text)
    layers = text["num_hidden_layers"]
    text["no_rope_layers"] = [int((i + 1) % NOPE_LAYER_INTERVAL != 0) for i in range(layers)]
    text["moe_layers"] = list(range(text["interleave_moe_layer_step"] - 1, layers,
                                    text["interleave_moe_layer_step"]))
    return {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
            "text_config": text, "tie_word_embeddings": False}


LLAMA4_SCOUT_4L = {**LLAMA4_SCOUT_TEXT, "num_hidden_layers": 4}
"""Scout's layers at full width (16 experts of 8192, a shared expert), 4 of its 48: 10.9 B
parameters, 21.8 GB in bf16 -- "a Llama-4-shaped MoE scaled to fit 24 GB"."""

FULL = {
    "qwen2-0.5b": QWEN2_05B,
    "qwen2-7b": QWEN2_7B,
    "hunyuan-7b": HUNYUAN_7B,
    "llama4-scout-4l": llama4(LLAMA4_SCOUT_4L),
    "qwen3-0.6b": QWEN3_06B,
    "gemma3-270m": GEMMA3_270M,
}

CPU = {
    "qwen2-0.5b": QWEN2_05B,
    "qwen2-7b": {**QWEN2_7B, "num_hidden_layers": 4},
    "hunyuan-7b": {**HUNYUAN_7B, "num_hidden_layers": 4},
    "llama4-scout-4l": llama4({**LLAMA4_SCOUT_4L, "hidden_size": 2048, "intermediate_size": 2048,
                               "intermediate_size_mlp": 4096, "num_attention_heads": 16,
                               "num_key_value_heads": 4}),
    "qwen3-0.6b": QWEN3_06B,
    "gemma3-270m": GEMMA3_270M,
}
"""Real widths with fewer layers: a CPU run in minutes. Names keep the real shape's name; the
table prints the layer count."""


def with_layers(config: dict, layers: int) -> dict:
    config = deepcopy(config)
    target = config.get("text_config", config)
    target["num_hidden_layers"] = layers
    if "text_config" in config:
        return llama4({k: v for k, v in target.items() if k not in ("no_rope_layers",
                                                                     "moe_layers")})
    return config


def text_config(config: dict) -> dict:
    return config.get("text_config", config)


# -- tensor layouts (Hugging Face names and shapes) ----------------------------------------------


def _llama_like_layer(prefix: str, c: dict, head_dim: int, qkv_bias: bool,
                      qk_norm_names: tuple[str, str] | None) -> dict[str, tuple]:
    hidden, heads, kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    inter = c["intermediate_size"]
    t = {
        f"{prefix}.self_attn.q_proj.weight": (heads * head_dim, hidden),
        f"{prefix}.self_attn.k_proj.weight": (kv * head_dim, hidden),
        f"{prefix}.self_attn.v_proj.weight": (kv * head_dim, hidden),
        f"{prefix}.self_attn.o_proj.weight": (hidden, heads * head_dim),
        f"{prefix}.mlp.gate_proj.weight": (inter, hidden),
        f"{prefix}.mlp.up_proj.weight": (inter, hidden),
        f"{prefix}.mlp.down_proj.weight": (hidden, inter),
        f"{prefix}.input_layernorm.weight": (hidden,),
        f"{prefix}.post_attention_layernorm.weight": (hidden,),
    }
    if qkv_bias:
        t[f"{prefix}.self_attn.q_proj.bias"] = (heads * head_dim,)
        t[f"{prefix}.self_attn.k_proj.bias"] = (kv * head_dim,)
        t[f"{prefix}.self_attn.v_proj.bias"] = (kv * head_dim,)
    if qk_norm_names:
        for name in qk_norm_names:
            t[f"{prefix}.self_attn.{name}.weight"] = (head_dim,)
    return t


def _decoder_only(c: dict, qkv_bias: bool, qk_norm_names=None) -> dict[str, tuple]:
    hidden = c["hidden_size"]
    head_dim = c.get("head_dim") or hidden // c["num_attention_heads"]
    t = {"model.embed_tokens.weight": (c["vocab_size"], hidden), "model.norm.weight": (hidden,)}
    for i in range(c["num_hidden_layers"]):
        t.update(_llama_like_layer(f"model.layers.{i}", c, head_dim, qkv_bias, qk_norm_names))
    if not c.get("tie_word_embeddings", False):
        t["lm_head.weight"] = (c["vocab_size"], hidden)
    return t


def _llama4(config: dict) -> dict[str, tuple]:
    c = text_config(config)
    hidden, heads, kv, head_dim = (c["hidden_size"], c["num_attention_heads"],
                                   c["num_key_value_heads"], c["head_dim"])
    experts, inter, inter_mlp = (c["num_local_experts"], c["intermediate_size"],
                                 c["intermediate_size_mlp"])
    root = "language_model.model"
    t = {f"{root}.embed_tokens.weight": (c["vocab_size"], hidden), f"{root}.norm.weight": (hidden,),
         "language_model.lm_head.weight": (c["vocab_size"], hidden)}
    for i in range(c["num_hidden_layers"]):
        p = f"{root}.layers.{i}"
        t.update({
            f"{p}.self_attn.q_proj.weight": (heads * head_dim, hidden),
            f"{p}.self_attn.k_proj.weight": (kv * head_dim, hidden),
            f"{p}.self_attn.v_proj.weight": (kv * head_dim, hidden),
            f"{p}.self_attn.o_proj.weight": (hidden, heads * head_dim),
            f"{p}.input_layernorm.weight": (hidden,),
            f"{p}.post_attention_layernorm.weight": (hidden,),
        })
        if i in c["moe_layers"]:
            f = f"{p}.feed_forward"
            t.update({
                f"{f}.router.weight": (experts, hidden),
                f"{f}.experts.gate_up_proj": (experts, hidden, 2 * inter),
                f"{f}.experts.down_proj": (experts, inter, hidden),
                f"{f}.shared_expert.gate_proj.weight": (inter, hidden),
                f"{f}.shared_expert.up_proj.weight": (inter, hidden),
                f"{f}.shared_expert.down_proj.weight": (hidden, inter),
            })
        else:
            f = f"{p}.feed_forward"
            t.update({f"{f}.gate_proj.weight": (inter_mlp, hidden),
                      f"{f}.up_proj.weight": (inter_mlp, hidden),
                      f"{f}.down_proj.weight": (hidden, inter_mlp)})
    return t


def tensor_layout(config: dict) -> dict[str, tuple]:
    """``{name: shape}`` of the checkpoint the Hub would hold for ``config``."""
    model_type = config["model_type"]
    if model_type == "qwen2":
        return _decoder_only(config, qkv_bias=True)
    if model_type == "hunyuan_v1_dense":
        return _decoder_only(config, qkv_bias=False,
                             qk_norm_names=("query_layernorm", "key_layernorm"))
    if model_type == "llama4":
        return _llama4(config)
    if model_type == "qwen3":
        return _decoder_only(config, qkv_bias=False, qk_norm_names=("q_norm", "k_norm"))
    if model_type == "gemma3_text":  # QK-norm and Gemma's norms around attention and MLP
        t = _decoder_only(config, qkv_bias=False, qk_norm_names=("q_norm", "k_norm"))
        for i in range(config["num_hidden_layers"]):
            for name in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
                t[f"model.layers.{i}.{name}.weight"] = (config["hidden_size"],)
        return t
    raise ValueError(f"no tensor layout for model_type {model_type!r}")


def parameter_count(config: dict) -> int:
    total = 0
    for shape in tensor_layout(config).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
