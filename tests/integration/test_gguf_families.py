"""GGUF files of tiny HunYuan (dense and MoE), Llama 4, Gemma 2 and Gemma 3 models, written as
llama.cpp's converter writes each family (its ``gguf.GGUFWriter``, its tensor names from
``gguf.TensorNameMap``, its per-family conventions: HunYuan's NTK-alpha folded into the RoPE
base, experts stacked 3-D, Gemma's norms stored as ``1 + w``, no q/k permutation), load in
mlx-zoo with the logits transformers gives -- from the original model, and from transformers'
own GGUF loader where it reads the family (Gemma 2 and 3)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import gguf
import mlx.core as mx
import numpy as np
import pytest
import torch

import mlx_zoo
from mlx_zoo.testing import sharpen_torch_model

Q = gguf.GGMLQuantizationType
IDS = [[3, 17, 42, 7, 99, 5, 64, 12, 8, 120, 33, 2]]
ARCHS = {"hunyuan-dense": gguf.MODEL_ARCH.HUNYUAN_DENSE, "hunyuan-moe": gguf.MODEL_ARCH.HUNYUAN_MOE,
         "llama4": gguf.MODEL_ARCH.LLAMA4, "gemma2": gguf.MODEL_ARCH.GEMMA2,
         "gemma3": gguf.MODEL_ARCH.GEMMA3, "qwen3": gguf.MODEL_ARCH.QWEN3,
         "qwen3moe": gguf.MODEL_ARCH.QWEN3MOE}
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=256, rms_norm_eps=1e-6)

Tensors = Callable[[str, np.ndarray], Iterator[tuple[str, np.ndarray]]]


def as_is(name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    yield name, array


def base_metadata(config, arch: str, rope_theta: float) -> dict:
    """The keys llama.cpp's ``TextModel.set_gguf_parameters`` writes for every family."""
    keys = {"block_count": config.num_hidden_layers,
            "context_length": config.max_position_embeddings,
            "embedding_length": config.hidden_size,
            "feed_forward_length": config.intermediate_size,
            "attention.head_count": config.num_attention_heads,
            "attention.head_count_kv": config.num_key_value_heads,
            "attention.key_length": config.head_dim, "attention.value_length": config.head_dim,
            "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
            "rope.freq_base": float(rope_theta), "vocab_size": config.vocab_size}
    return {f"{arch}.{k}": v for k, v in keys.items()}


def to_gguf(model, path, arch: str, metadata: dict, gguf_writer, qtype=Q.F32,
            tensors: Tensors = as_is):
    """``model``'s weights under llama.cpp's names (``gguf.TensorNameMap`` of ``arch``), after
    the family's own rewriting ``tensors``; no tied ``lm_head``; 1-D tensors in float32, the
    rest in ``qtype``."""
    from conftest import tiny_tokenizer_metadata

    names = gguf.TensorNameMap(ARCHS[arch], model.config.num_hidden_layers)
    out = {}
    for hf_name, value in model.state_dict().items():
        if hf_name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        for name, array in tensors(hf_name, value.float().numpy()):
            mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
            assert mapped is not None, name
            out[mapped] = (array, qtype if array.ndim > 1 else Q.F32)
    metadata = {**metadata, **tiny_tokenizer_metadata(model.config.vocab_size)}
    return gguf_writer(path, arch, metadata, out)


def hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits[0].float().numpy()


def zoo_logits(path, **kwargs) -> np.ndarray:
    model, _ = mlx_zoo.load(path, **kwargs)
    return np.array(model(mx.array(IDS))[0].astype(mx.float32))


def close(ours: np.ndarray, ref: np.ndarray, tolerance: float = 1e-4) -> bool:
    return bool(np.abs(ours - ref).max() < tolerance * np.abs(ref).max())


# -- HunYuan -----------------------------------------------------------------------------------

ALPHA, BASE = 1000.0, 10000.0


def ntk_alpha_base(head_dim: int) -> float:
    """The base llama.cpp's HunYuan converters write for NTK-alpha RoPE."""
    return BASE * ALPHA ** (head_dim / (head_dim - 2))


def hunyuan_experts(name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """transformers' fused experts (``gate_up_proj`` (E, 2I, H), gate rows first;
    ``down_proj`` (E, H, I)) as llama.cpp's converter stacks the per-expert tensors."""
    if name.endswith("mlp.experts.gate_up_proj"):
        gate, up = np.split(array, 2, axis=1)
        yield name.replace("gate_up_proj", "gate_proj.weight"), gate
        yield name.replace("gate_up_proj", "up_proj.weight"), up
    elif name.endswith("mlp.experts.down_proj"):
        yield name + ".weight", array
    else:
        yield name, array


def test_hunyuan_dense_gguf_matches_transformers(tmp_path, gguf_writer):
    import transformers

    torch.manual_seed(0)
    config = transformers.HunYuanDenseV1Config(
        **TINY, tie_word_embeddings=True,
        rope_parameters={"rope_type": "dynamic", "alpha": ALPHA, "factor": 1.0,
                         "rope_theta": BASE})
    hf = sharpen_torch_model(transformers.HunYuanDenseV1ForCausalLM(config).eval())
    metadata = base_metadata(config, "hunyuan-dense", ntk_alpha_base(config.head_dim))
    metadata["hunyuan-dense.rope.scaling.type"] = "none"
    path = to_gguf(hf, tmp_path / "dense.gguf", "hunyuan-dense", metadata, gguf_writer)
    assert close(zoo_logits(path, dtype="float32"), hf_logits(hf))


def tiny_hunyuan_moe():
    import transformers

    torch.manual_seed(0)
    config = transformers.HunYuanMoEV1Config(
        **TINY, num_experts=4, moe_topk=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "dynamic", "alpha": ALPHA, "factor": 1.0,
                         "rope_theta": BASE})
    return sharpen_torch_model(transformers.HunYuanMoEV1ForCausalLM(config).eval())


def hunyuan_moe_metadata(config) -> dict:
    metadata = base_metadata(config, "hunyuan-moe", ntk_alpha_base(config.head_dim))
    metadata.update({"hunyuan-moe.expert_count": config.num_experts,
                     "hunyuan-moe.expert_used_count": config.moe_topk,
                     "hunyuan-moe.expert_feed_forward_length": config.intermediate_size,
                     "hunyuan-moe.expert_shared_feed_forward_length": config.intermediate_size,
                     "hunyuan-moe.expert_shared_count": 1,
                     "hunyuan-moe.rope.scaling.type": "none"})
    return metadata


def test_hunyuan_moe_gguf_matches_transformers(tmp_path, gguf_writer):
    hf = tiny_hunyuan_moe()
    path = to_gguf(hf, tmp_path / "moe.gguf", "hunyuan-moe", hunyuan_moe_metadata(hf.config),
                   gguf_writer, tensors=hunyuan_experts)
    model, config = mlx_zoo.load(path, dtype="float32")
    assert config.model_type == "hunyuan_v1_moe" and config.num_experts == 4
    assert model.model.layers[0].mlp.switch_mlp.gate_proj.weight.shape == (4, 96, 64)
    ours = np.array(model(mx.array(IDS))[0].astype(mx.float32))
    assert close(ours, hf_logits(hf))


def test_hunyuan_moe_other_expert_width_is_refused(tmp_path, gguf_writer):
    hf = tiny_hunyuan_moe()
    metadata = hunyuan_moe_metadata(hf.config)
    metadata["hunyuan-moe.expert_shared_count"] = 2
    path = to_gguf(hf, tmp_path / "moe.gguf", "hunyuan-moe", metadata, gguf_writer,
                   tensors=hunyuan_experts)
    with pytest.raises(mlx_zoo.MlxZooError, match="expert_shared_count"):
        mlx_zoo.load(path)


# -- Llama 4 -----------------------------------------------------------------------------------


def llama4_experts(name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """llama.cpp's ``Llama4Model.modify_tensors``: transformers' ``gate_up_proj`` (E, H, 2I)
    transposed and split (gate first), ``down_proj`` (E, I, H) transposed."""
    if name.endswith("experts.gate_up_proj"):
        gate, up = np.split(np.swapaxes(array, -1, -2), 2, axis=-2)
        yield name.replace("gate_up_proj", "gate_proj.weight"), gate
        yield name.replace("gate_up_proj", "up_proj.weight"), up
    elif name.endswith("experts.down_proj"):
        yield name + ".weight", np.swapaxes(array, -1, -2)
    else:
        yield name, array


def test_llama4_gguf_matches_transformers(tmp_path, gguf_writer):
    """Four layers (three chunked with RoPE and the L2 q/k norm, one global NoPE), MoE every
    second layer; the chunk and temperature are llama.cpp's fixed values, which the prompt is
    too short to reach, as transformers' defaults are."""
    import transformers

    torch.manual_seed(0)
    tiny = {**TINY, "num_hidden_layers": 4}
    config = transformers.Llama4TextConfig(
        **tiny, intermediate_size_mlp=80, num_local_experts=4, num_experts_per_tok=1,
        interleave_moe_layer_step=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    hf = sharpen_torch_model(transformers.Llama4ForCausalLM(config).eval())
    metadata = base_metadata(config, "llama4", 500000.0)
    metadata.update({"llama4.feed_forward_length": 80,
                     "llama4.expert_feed_forward_length": config.intermediate_size,
                     "llama4.expert_count": 4, "llama4.expert_used_count": 1,
                     "llama4.interleave_moe_layer_step": 2,
                     "llama4.rope.dimension_count": config.head_dim})
    path = to_gguf(hf, tmp_path / "llama4.gguf", "llama4", metadata, gguf_writer,
                   tensors=llama4_experts)
    model, zoo_config = mlx_zoo.load(path, dtype="float32")
    assert zoo_config.model_type == "llama4_text" and zoo_config.use_qk_norm
    assert [zoo_config.is_moe(i) for i in range(4)] == [False, True, False, True]
    ours = np.array(model(mx.array(IDS))[0].astype(mx.float32))
    assert close(ours, hf_logits(hf))


def test_llama4_vision_tensor_is_refused(tmp_path, gguf_writer):
    """A text file carrying a vision-tower tensor (those belong in the mmproj file) is refused,
    naming the tensor."""
    from conftest import tiny_tokenizer_metadata

    metadata = {"llama4.block_count": 1, "llama4.embedding_length": 64,
                "llama4.feed_forward_length": 96, "llama4.attention.head_count": 4,
                "llama4.expert_feed_forward_length": 96, "llama4.expert_count": 2,
                **tiny_tokenizer_metadata(128)}
    tensors = {"token_embd.weight": (np.zeros((128, 64)), Q.F32),
               "v.patch_embd.weight": (np.zeros((64, 48)), Q.F32)}
    path = gguf_writer(tmp_path / "vision.gguf", "llama4", metadata, tensors)
    with pytest.raises(mlx_zoo.MlxZooError, match="v.patch_embd.weight"):
        mlx_zoo.load(path)


# -- Gemma 2 and 3 -----------------------------------------------------------------------------


def gemma_norms(name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """llama.cpp's Gemma converters: every ``*norm.weight`` stored plus one."""
    yield name, array + 1 if name.endswith("norm.weight") else array


def tiny_gemma(kind: str):
    """Heads of 256 features: llama.cpp scales queries by ``head_dim ** -0.5`` (no key for
    ``query_pre_attn_scalar``; 256 in every Gemma but the 27B models), and so do transformers'
    GGUF loader (its default 256) and the original here."""
    import transformers

    torch.manual_seed(0)
    tiny = {**TINY, "head_dim": 256}
    if kind == "gemma2":
        config = transformers.Gemma2Config(
            **tiny, sliding_window=4, query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh")
        return sharpen_torch_model(transformers.Gemma2ForCausalLM(config).eval())
    config = transformers.Gemma3TextConfig(
        **{**tiny, "num_hidden_layers": 6}, sliding_window=4, query_pre_attn_scalar=256,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    return sharpen_torch_model(transformers.Gemma3ForCausalLM(config).eval())


def gemma_metadata(hf, kind: str) -> dict:
    c = hf.config
    metadata = base_metadata(c, kind, 1e6 if kind == "gemma3" else c.rope_theta
                             if hasattr(c, "rope_theta") else c.rope_parameters["rope_theta"])
    metadata[f"{kind}.attention.sliding_window"] = c.sliding_window
    if kind == "gemma2":
        metadata["gemma2.attn_logit_softcapping"] = float(c.attn_logit_softcapping)
        metadata["gemma2.final_logit_softcapping"] = float(c.final_logit_softcapping)
    return metadata


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_gemma_gguf_matches_transformers_and_its_gguf_loader(tmp_path, gguf_writer, kind):
    """Sandwich norms, the window pattern (6 layers, a window of 4 over 12 tokens: Gemma 3's
    layer 5 global) and the ``1 + w`` norms undone -- against the original model and against
    transformers' GGUF loader (which undoes the offset on its own), in float32 and in Q4_1."""
    import transformers

    hf = tiny_gemma(kind)
    path = to_gguf(hf, tmp_path / f"{kind}.gguf", kind, gemma_metadata(hf, kind), gguf_writer,
                   tensors=gemma_norms)
    model, config = mlx_zoo.load(path, dtype="float32")
    norm = hf.model.layers[0].input_layernorm.weight.detach().numpy()
    assert np.allclose(np.array(model.model.layers[0].input_layernorm.weight), norm)
    assert config.layer_types == hf.config.layer_types
    ours, ref = np.array(model(mx.array(IDS))[0].astype(mx.float32)), hf_logits(hf)
    assert close(ours, ref)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    assert close(ours, hf_logits(loaded))
    (tmp_path / "q").mkdir()
    quantized = to_gguf(hf, tmp_path / "q" / "q4.gguf", kind, gemma_metadata(hf, kind),
                        gguf_writer, Q.Q4_1, tensors=gemma_norms)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(quantized.parent), gguf_file=quantized.name, dtype=torch.float32).eval()
    assert close(zoo_logits(quantized, dtype="float32", dequantize=True), hf_logits(loaded))


def test_gemma_norm_offset_is_what_makes_it_right(tmp_path, gguf_writer):
    """Negative control: the same file with the norms stored as they are (no ``+ 1``) is a
    different model once loaded."""
    hf = tiny_gemma("gemma3")
    path = to_gguf(hf, tmp_path / "plain.gguf", "gemma3", gemma_metadata(hf, "gemma3"),
                   gguf_writer)
    assert not close(zoo_logits(path, dtype="float32"), hf_logits(hf), 0.1)


# -- Qwen3 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("moe", [False, True], ids=["qwen3", "qwen3moe"])
def test_qwen3_gguf_matches_transformers(tmp_path, gguf_writer, moe):
    """llama.cpp's qwen3 / qwen3moe files (q/k norms; the MoE's router and stacked experts,
    top-k renormalised) give transformers' logits, float32 and Q8_0."""
    import transformers

    torch.manual_seed(0)
    if moe:
        config = transformers.Qwen3MoeConfig(**TINY, moe_intermediate_size=32, num_experts=4,
                                             num_experts_per_tok=2, norm_topk_prob=True,
                                             tie_word_embeddings=False)
        hf = sharpen_torch_model(transformers.Qwen3MoeForCausalLM(config).eval())
    else:
        config = transformers.Qwen3Config(**TINY, tie_word_embeddings=True)
        hf = sharpen_torch_model(transformers.Qwen3ForCausalLM(config).eval())
    arch = "qwen3moe" if moe else "qwen3"
    metadata = base_metadata(config, arch, config.rope_parameters["rope_theta"])
    if moe:
        metadata.update({"qwen3moe.expert_count": 4, "qwen3moe.expert_used_count": 2,
                         "qwen3moe.expert_feed_forward_length": 32})
    ref = hf_logits(hf)
    for qtype, tolerance in ((Q.F32, 1e-4), (Q.Q8_0, 5e-2)):
        path = to_gguf(hf, tmp_path / f"{arch}-{qtype.name}.gguf", arch, metadata, gguf_writer,
                       qtype, tensors=hunyuan_experts)
        assert close(zoo_logits(path, dtype="float32"), ref, tolerance), qtype.name
    _, loaded = mlx_zoo.load(path)
    assert loaded.model_type == ("qwen3_moe" if moe else "qwen3")
