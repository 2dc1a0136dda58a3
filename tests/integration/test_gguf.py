"""GGUF files of tiny Llama and Qwen2 models, written as llama.cpp's converter writes them (its
own ``gguf.GGUFWriter``, its tensor names, its q/k permutation), load in mlx-zoo with the logits
transformers gives -- from the original model and from transformers' own GGUF loader."""

from __future__ import annotations

import gguf
import mlx.core as mx
import numpy as np
import pytest
import torch

import mlx_zoo
from mlx_zoo.gguf.reader import read_gguf
from mlx_zoo.gguf.tensors import Quantized, read_tensor
from mlx_zoo.testing import sharpen_torch_model

Q = gguf.GGMLQuantizationType
IDS = [[3, 17, 42, 7, 99, 5, 64, 12]]


def tiny_hf(kind: str, **overrides):
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6, tie_word_embeddings=False)
    common.update(overrides)
    if kind == "llama":
        config = transformers.LlamaConfig(**common, rope_theta=10000.0)
        return sharpen_torch_model(transformers.LlamaForCausalLM(config).eval())
    config = transformers.Qwen2Config(**common, rope_theta=1e6)
    return sharpen_torch_model(transformers.Qwen2ForCausalLM(config).eval())


def hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits[0].float().numpy()


def zoo_logits(path, **kwargs) -> np.ndarray:
    model, _ = mlx_zoo.load(path, **kwargs)
    return np.array(model(mx.array(IDS))[0].astype(mx.float32))


@pytest.mark.parametrize("kind,permute", [("llama", True), ("qwen2", False)])
def test_float_gguf_matches_transformers(tmp_path, hf_to_gguf, kind, permute):
    hf = tiny_hf(kind)
    path = hf_to_gguf(hf, tmp_path / f"{kind}.gguf", kind, Q.F32, permute=permute)
    ours = zoo_logits(path, dtype="float32")
    ref = hf_logits(hf)
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()


def test_permutation_is_what_makes_llama_right(tmp_path, hf_to_gguf):
    """Negative control: the same file without llama.cpp's permutation is a different model."""
    hf = tiny_hf("llama")
    path = hf_to_gguf(hf, tmp_path / "unpermuted.gguf", "llama", Q.F32, permute=False)
    ours, ref = zoo_logits(path, dtype="float32"), hf_logits(hf)
    assert np.abs(ours - ref).max() > 0.1 * np.abs(ref).max()


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_1, Q.F16, Q.BF16])
def test_quantized_gguf_matches_transformers_gguf_loader(tmp_path, hf_to_gguf, qtype):
    """Quantized tensors: transformers dequantizes the same file to float32 (an independent
    reader); mlx-zoo keeps Q4_0/Q4_1/Q8_0 quantized, dequantizes the rest."""
    import transformers

    hf = tiny_hf("llama", tie_word_embeddings=True)
    path = hf_to_gguf(hf, tmp_path / "model.gguf", "llama", qtype, permute=True)
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    ref = hf_logits(ref_model)
    ours = zoo_logits(path, dtype="float32", dequantize=True)
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()
    kept = zoo_logits(path, dtype=None, dequantize=False)  # MLX's quantized matmuls
    assert np.abs(kept - ref).max() < 2e-2 * np.abs(ref).max()


def test_repacked_blocks_equal_mlx_own_gguf_reader(tmp_path, hf_to_gguf):
    """Q4_0/Q4_1/Q8_0 repacked by mlx-zoo are bit-identical to what mx.load's GGUF reader
    (MLX's C++ code) makes of the same blocks."""
    for qtype in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
        path = hf_to_gguf(tiny_hf("qwen2"), tmp_path / f"{qtype.name}.gguf", "qwen2", qtype,
                          permute=False)
        reference = mx.load(str(path))
        for name, info in read_gguf(path).tensors.items():
            value = read_tensor(info)
            stem = name.rsplit(".", 1)[0]
            parts = value.parts() if isinstance(value, Quantized) else {name.rsplit(".")[-1]:
                                                                          value}
            for part, array in parts.items():
                assert mx.array_equal(array, reference[f"{stem}.{part}"]).item(), (name, part)


def test_split_gguf_loads_from_any_shard(tmp_path, hf_to_gguf):
    """Split files as llama.cpp's writer splits them (``-0000k-of-0000n.gguf``, split.count),
    loaded from any shard; a missing shard is named."""
    hf = tiny_hf("qwen2")
    (tmp_path / "split").mkdir()
    hf_to_gguf(hf, tmp_path / "split" / "model.gguf", "qwen2", Q.Q8_0, permute=False,
               split_max_tensors=8)
    single = hf_to_gguf(hf, tmp_path / "single.gguf", "qwen2", Q.Q8_0, permute=False)
    shards = sorted((tmp_path / "split").glob("model-*-of-*.gguf"))
    assert len(shards) >= 3
    whole = zoo_logits(shards[0], dtype="float32")
    assert np.array_equal(whole, zoo_logits(single, dtype="float32"))
    assert np.array_equal(whole, zoo_logits(shards[-1], dtype="float32"))
    assert np.array_equal(whole, zoo_logits(tmp_path / "split", dtype="float32"))
    shards[1].unlink()
    with pytest.raises(mlx_zoo.MlxZooError, match=shards[1].name):
        mlx_zoo.load(shards[0])


def test_quantization_block_is_mlx_lm_layout(tmp_path, hf_to_gguf):
    """A Q8_0 embedding beside Q4_1 layers: a global 4-bit block plus a per-layer override,
    as mlx-lm writes mixed quantization."""
    import gguf as g

    hf = tiny_hf("llama", tie_word_embeddings=True)
    path = hf_to_gguf(hf, tmp_path / "mixed.gguf", "llama", Q.Q4_1, permute=True)
    reader = read_gguf(path)
    assert reader.tensors["blk.0.attn_q.weight"].ggml_type == g.GGMLQuantizationType.Q4_1
    _, config = mlx_zoo.load(path, dtype=None, dequantize=False)
    assert config.quantization["bits"] == 4 and config.quantization["group_size"] == 32


def test_convert_requantizes_a_gguf_on_request(tmp_path, hf_to_gguf):
    """convert -q on a GGUF: every block type dequantized, then quantized as asked (8-bit,
    group 32): the model mlx_zoo.quantize makes of the file's values, written and read back."""
    from mlx_zoo.convert import convert

    path = hf_to_gguf(tiny_hf("llama"), tmp_path / "q5.gguf", "llama", Q.Q5_1, permute=True)
    out = convert(path, tmp_path / "q8", quantize=True, q_bits=8, q_group_size=32)
    model, config = mlx_zoo.load(out, dtype=None, dequantize=False)
    assert config.quantization["bits"] == 8 and config.quantization["group_size"] == 32
    expected, expected_config = mlx_zoo.load(path, dtype=None, dequantize=False)
    mlx_zoo.quantize(expected, expected_config, bits=8, group_size=32)
    ours = np.array(model(mx.array(IDS))[0].astype(mx.float32))
    ref = np.array(expected(mx.array(IDS))[0].astype(mx.float32))
    assert np.abs(ours - ref).max() < 1e-5 * np.abs(ref).max()
