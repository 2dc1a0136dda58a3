"""Fused projections (mlx_zoo.fusion): q/k/v and gate/up as one matmul each.

A fused model must compute what the unfused one computes (same weights, split rows), decode
through its cache as it runs a full forward, quantize, save under the checkpoint's names, shard,
and unfuse back to bit-identical parameters; groups that cannot fuse (parts quantized with
different bits, CLA layers without keys/values of their own) stay as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_zoo
from mlx_zoo.fusion import FusedLinear, checkpoint_parameters, compatible, is_fused
from mlx_zoo.testing import BROKEN, TOLERANCE, decode_steps, incremental_logits
from mlx_zoo.testing import logits as mlx_logits
from mlx_zoo.testing import relative_error as rel_err
from mlx_zoo.weights import read_safetensors_header

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# fused vs unfused: the same products, at most float rounding apart (a fused product may run a
# different kernel, summing in another order: 1.1e-6 and 1.3e-6 measured on an H100)
ROUNDING = 1e-5
QUANT = dict(bits=4, group_size=32)


# -- checkpoints -------------------------------------------------------------------------------


STORED = {"dtype": None, "dequantize": False, "fuse": False}
"""``load()``'s opt-outs: the checkpoint as stored, unfused (fusion is the default)."""
STORED_FUSED = {**STORED, "fuse": True}

def write_qwen2(writers, path: Path) -> Path:
    writers.qwen2(path, tied=False)
    return path


def write_hunyuan_dense_cla(writers, path: Path) -> Path:
    """Tencent's format, dense SwiGLU layers, CLA in runs of 2 (layers 1 and 3 reuse k/v)."""
    return writers.hunyuan(path, {**writers.HUNYUAN, "num_experts": 1, "intermediate_size": 96},
                           seed=3)


def write_hunyuan_moe_cla(writers, path: Path) -> Path:
    """Tencent's format: CLA, mixture of experts plus a shared SwiGLU on every layer."""
    return writers.hunyuan(path)


def write_hunyuan_v1_moe(writers, path: Path) -> Path:
    """transformers' HunYuan MoE v1: biased q/k/v, shared MLP next to the experts."""
    writers.hunyuan_v1(path, "moe", attention_bias=True)
    return path


def write_llama4(writers, path: Path) -> Path:
    """Llama 4 "scout" pattern: chunked RoPE layers, one NoPE layer, MoE with shared expert."""
    writers.llama4(path, "scout")
    return path


CHECKPOINTS = {"qwen2": write_qwen2, "hunyuan-dense-cla": write_hunyuan_dense_cla,
               "hunyuan-moe-cla": write_hunyuan_moe_cla, "hunyuan-v1-moe": write_hunyuan_v1_moe,
               "llama4": write_llama4}


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def checkpoint(request, tmp_path_factory, write_checkpoint) -> Path:
    return CHECKPOINTS[request.param](write_checkpoint, tmp_path_factory.mktemp(request.param))


def ids_for(model, length: int = 24, batch: int = 2, seed: int = 0) -> np.ndarray:
    vocab = model.args.vocab_size
    return np.random.default_rng(seed).integers(0, vocab, (batch, length))


def modules(model) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def fused_paths(model) -> set[str]:
    return {path for path, m in model.named_modules() if isinstance(m, FusedLinear)}


def arrays(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


# -- every architecture ------------------------------------------------------------------------


def test_fused_logits_and_decoding_equal_unfused(checkpoint):
    plain, _ = mlx_zoo.load(checkpoint, **STORED)
    fused, _ = mlx_zoo.load(checkpoint, **STORED_FUSED)
    assert not is_fused(plain) and is_fused(fused)
    ids = ids_for(plain)
    expected = mlx_logits(plain, ids)
    out = mlx_logits(fused, ids)
    assert rel_err(out, expected) < ROUNDING
    steps = incremental_logits(fused, ids, decode_steps(ids.shape[1], prefill=9))
    assert rel_err(steps, out) < TOLERANCE


def test_what_fuses_where(checkpoint):
    """Every attention with its own q/k/v and every SwiGLU (dense, shared expert, HunYuan's
    shared MLP) fuses; CLA layers keep q_proj alone; routed experts are not touched."""
    model, config = mlx_zoo.load(checkpoint, **STORED_FUSED)
    found = modules(model)
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        prefix = f"model.layers.{i}.self_attn"
        own_kv = getattr(attn, "computes_kv", True)
        assert (f"{prefix}.qkv_proj" in found) is own_kv
        assert ("q_proj" in attn) is not own_kv
        assert "k_proj" not in attn and "v_proj" not in attn
        if own_kv:
            assert attn.qkv_proj.parts.names == ("q_proj", "k_proj", "v_proj")
            heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
            head_dim = attn.qkv_proj.parts.sizes[0] // heads
            assert attn.qkv_proj.parts.sizes == (heads * head_dim, kv_heads * head_dim,
                                                 kv_heads * head_dim)
    swiglus = [m for m in found.values() if isinstance(m, mlx_zoo.SwiGLU)]
    assert swiglus and all("gate_up_proj" in m and "gate_proj" not in m for m in swiglus)
    for m in found.values():
        if isinstance(m, mlx_zoo.SwitchGLU):
            assert "gate_proj" in m and "up_proj" in m


def test_unfuse_restores_bit_identical_parameters(checkpoint):
    model, _ = mlx_zoo.load(checkpoint, **STORED)
    before = arrays(model)
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    fused = mlx_zoo.fuse_projections(model)
    assert fused > 0 and set(arrays(model)) != set(before)
    assert mlx_zoo.unfuse_projections(model) == fused
    after = arrays(model)
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert after[name].dtype == value.dtype and np.array_equal(after[name], value), name
    assert {k for k, _ in tree_flatten(model.trainable_parameters())} == trainable
    assert mlx_zoo.unfuse_projections(model) == 0


def test_save_of_fused_model_writes_checkpoint_names(checkpoint, tmp_path):
    plain, config = mlx_zoo.load(checkpoint, **STORED)
    fused, fused_config = mlx_zoo.load(checkpoint, **STORED_FUSED)
    paths = fused_paths(fused)
    mlx_zoo.save(plain, config, tmp_path / "plain")
    mlx_zoo.save(fused, fused_config, tmp_path / "fused")
    assert fused_paths(fused) == paths  # saving did not unfuse the caller's model
    names = set(read_safetensors_header(tmp_path / "fused" / "model.safetensors"))
    assert names == set(read_safetensors_header(tmp_path / "plain" / "model.safetensors"))
    assert not any("qkv_proj" in n or "gate_up_proj" in n for n in names)
    written = mx.load(str(tmp_path / "fused" / "model.safetensors"))
    reference = mx.load(str(tmp_path / "plain" / "model.safetensors"))
    for name in names:
        assert mx.array_equal(written[name], reference[name]).item(), name
    again, _ = mlx_zoo.load(tmp_path / "fused", **STORED)
    ids = ids_for(plain)
    assert rel_err(mlx_logits(again, ids), mlx_logits(plain, ids)) < ROUNDING


# -- quantized models --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen2_checkpoint(tmp_path_factory, write_checkpoint) -> Path:
    return write_qwen2(write_checkpoint, tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="module")
def quantized_checkpoint(qwen2_checkpoint, tmp_path_factory) -> Path:
    model, config = mlx_zoo.load(qwen2_checkpoint, **STORED)
    mlx_zoo.quantize(model, config, **QUANT)
    return mlx_zoo.save(model, config, tmp_path_factory.mktemp("q4"))


def test_4bit_checkpoint_fuses_quantized_layers(quantized_checkpoint):
    plain, _ = mlx_zoo.load(quantized_checkpoint, **STORED)
    fused, _ = mlx_zoo.load(quantized_checkpoint, **STORED_FUSED)
    qkv = fused.layers[0].self_attn.qkv_proj
    gate_up = fused.layers[0].mlp.gate_up_proj
    for layer in (qkv.linear, gate_up.linear):
        assert type(layer) is nn.QuantizedLinear
        assert (layer.bits, layer.group_size) == (QUANT["bits"], QUANT["group_size"])
    assert "bias" in qkv.linear and "bias" not in gate_up.linear  # Qwen2: q/k/v carry a bias
    ids = ids_for(plain)
    out = mlx_logits(fused, ids)
    assert rel_err(out, mlx_logits(plain, ids)) < ROUNDING
    steps = incremental_logits(fused, ids, decode_steps(ids.shape[1], prefill=9))
    assert rel_err(steps, out) < TOLERANCE


def test_dequantized_and_lazy_loads_fuse(quantized_checkpoint):
    plain, _ = mlx_zoo.load(quantized_checkpoint, **STORED)
    dense, _ = mlx_zoo.load(quantized_checkpoint, dequantize=True, fuse=True, lazy=True)
    assert type(dense.layers[0].self_attn.qkv_proj.linear) is nn.Linear
    ids = ids_for(plain)
    assert rel_err(mlx_logits(dense, ids), mlx_logits(plain, ids)) < 1e-5


def _k_proj_in_8_bits(path: str, module: nn.Module):
    if path == "model.layers.0.self_attn.k_proj":
        return {"group_size": QUANT["group_size"], "bits": 8}
    return True


def test_quantize_a_fused_model_with_a_per_layer_override(qwen2_checkpoint, tmp_path):
    """quantize() on a fused model: unfused, quantized with the model's predicate (here: layer
    0's k_proj in 8 bits, its q_proj and v_proj in 4), fused again where the parts agree; the
    saved checkpoint loads, fused the same way, with the same logits as the unfused model."""
    fused, config = mlx_zoo.load(qwen2_checkpoint, **STORED_FUSED)
    fused.quantize_predicate = _k_proj_in_8_bits
    entry = mlx_zoo.quantize(fused, config, **QUANT)
    assert entry["model.layers.0.self_attn.k_proj"] == {"group_size": QUANT["group_size"],
                                                         "bits": 8}
    plain, plain_config = mlx_zoo.load(qwen2_checkpoint, **STORED)
    plain.quantize_predicate = _k_proj_in_8_bits
    mlx_zoo.quantize(plain, plain_config, **QUANT)

    def check(model):
        attn0, attn1 = model.layers[0].self_attn, model.layers[1].self_attn
        assert "qkv_proj" not in attn0 and (attn0.q_proj.bits, attn0.k_proj.bits) == (4, 8)
        assert type(attn1.qkv_proj.linear) is nn.QuantizedLinear
        assert "gate_up_proj" in model.layers[0].mlp

    check(fused)
    ids = ids_for(plain)
    expected = mlx_logits(plain, ids)
    assert rel_err(mlx_logits(fused, ids), expected) < ROUNDING
    reloaded, _ = mlx_zoo.load(mlx_zoo.save(fused, config, tmp_path / "mixed"), **STORED_FUSED)
    check(reloaded)
    assert rel_err(mlx_logits(reloaded, ids), expected) < ROUNDING


# -- the pieces --------------------------------------------------------------------------------


def test_a_misordered_fusion_breaks_parity(qwen2_checkpoint):
    """The equality checks can fail: k and v rows swapped in the fused weight (same sizes, so
    nothing crashes) change the logits by far more than rounding."""
    plain, _ = mlx_zoo.load(qwen2_checkpoint, **STORED)
    broken, _ = mlx_zoo.load(qwen2_checkpoint, **STORED)
    attn = broken.layers[0].self_attn
    attn.qkv_proj = FusedLinear.from_parts({"q_proj": attn.q_proj, "k_proj": attn.v_proj,
                                            "v_proj": attn.k_proj})
    for name in ("q_proj", "k_proj", "v_proj"):
        del attn[name]
    ids = ids_for(plain)
    assert rel_err(mlx_logits(broken, ids), mlx_logits(plain, ids)) > BROKEN


def test_checkpoint_parameters_of_a_fused_model():
    mlp = mlx_zoo.SwiGLU(16, 24, bias=True)
    before = dict(tree_flatten(mlp.parameters()))
    mlx_zoo.fuse_projections(mlp)
    names = dict(checkpoint_parameters(mlp))
    assert names.keys() == before.keys()
    assert all(mx.array_equal(names[k], before[k]).item() for k in before)


def test_incompatible_parts_stay_separate():
    dense = nn.Linear(16, 8)
    assert compatible([nn.Linear(16, 8), nn.Linear(16, 4)])
    assert not compatible([dense, nn.Linear(16, 8, bias=False)])  # bias on one only
    assert not compatible([dense, nn.Linear(32, 8)])  # input sizes differ
    assert not compatible([nn.Linear(64, 8),
                           nn.QuantizedLinear.from_linear(nn.Linear(64, 8), 32, 4)])
    q4, q8 = (nn.QuantizedLinear.from_linear(nn.Linear(64, 8), 32, bits) for bits in (4, 8))
    assert not compatible([q4, q8])
    half = nn.Linear(16, 8)
    half.set_dtype(mx.float16)
    assert not compatible([dense, half])
    frozen = nn.Linear(16, 8).freeze()
    assert not compatible([dense, frozen])
    with pytest.raises(ValueError, match="cannot fuse"):
        FusedLinear.from_parts({"a": dense, "b": nn.Linear(32, 8)})
    mlp = mlx_zoo.SwiGLU(64, 24)
    mlp.up_proj = nn.QuantizedLinear.from_linear(mlp.up_proj, 32, 4)
    assert mlx_zoo.fuse_projections(mlp) == 0 and "gate_proj" in mlp


def test_frozen_and_trainable_state_survives():
    """LoRA-style training freezes the base weights: a fused frozen layer stays frozen, its
    parts too when split; the gradient flows through the fused product."""
    mlp = mlx_zoo.SwiGLU(16, 24)
    mlp.freeze(keys=["weight"])
    mlp.down_proj.unfreeze()
    mlx_zoo.fuse_projections(mlp)
    trainable = {k for k, _ in tree_flatten(mlp.trainable_parameters())}
    assert trainable == {"down_proj.weight"}
    x = mx.random.normal((2, 3, 16))
    grads = nn.value_and_grad(mlp, lambda m, x: m(x).sum())(mlp, x)[1]
    assert set(k for k, _ in tree_flatten(grads)) == {"down_proj.weight"}
    mlx_zoo.unfuse_projections(mlp)
    assert {k for k, _ in tree_flatten(mlp.trainable_parameters())} == trainable


@pytest.mark.parametrize("mode", ["affine", "mxfp4"])
def test_fused_quantized_layers_of_each_mode(mode):
    parts = {name: nn.QuantizedLinear.from_linear(nn.Linear(64, out), 32, 4, mode=mode)
             for name, out in (("a", 32), ("b", 16))}
    x = mx.random.normal((1, 2, 64))
    fused = FusedLinear.from_parts(parts)
    assert type(fused.linear) is nn.QuantizedLinear and fused.linear.mode == mode
    for out, part in zip(fused(x), parts.values(), strict=True):
        assert mx.array_equal(out, part(x)).item()
    for name, part in fused.split().items():
        assert part.mode == mode and ("biases" in part) is ("biases" in parts[name])
        assert all(mx.array_equal(part[k], parts[name][k]).item() for k in ("weight", "scales"))


def test_fusing_leaves_the_random_state_alone():
    """Fusing builds its layers without drawing random initial weights, so a seeded program
    samples the same whether or not it fused its model."""
    mlp = mlx_zoo.SwiGLU(16, 24)
    mx.random.seed(7)
    expected = mx.random.uniform(shape=(4,))
    mx.random.seed(7)
    mlx_zoo.fuse_projections(mlp)
    mlx_zoo.unfuse_projections(mlp)
    assert mx.array_equal(mx.random.uniform(shape=(4,)), expected).item()


def test_only_declaring_modules_are_touched():
    """A module that does not declare ``fusable_projections`` keeps its layers, whatever their
    names (third-party plugins calling ``self.q_proj`` keep working)."""

    class PlainAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(8, 8) for _ in range(3))

    model = PlainAttention()
    assert mlx_zoo.fuse_projections(model) == 0
    assert {"q_proj", "k_proj", "v_proj"} <= set(model)


def test_cli_loads_fused(monkeypatch):
    """``mlx-zoo generate``/``chat`` load with fuse=True (test_cli_generate.py runs them)."""
    from mlx_zoo import cli

    seen = {}
    real_load = mlx_zoo.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(mlx_zoo, "load", spy)
    args = cli.build_parser().parse_args(["generate", "--max-tokens", "2"])
    model, _ = cli._load_for_generation(args)
    assert seen.get("fuse") is True and is_fused(model)


def test_quantized_config_records_no_fused_names(qwen2_checkpoint, tmp_path):
    fused, config = mlx_zoo.load(qwen2_checkpoint, **STORED_FUSED)
    fused.quantize_predicate = lambda path, module: not path.endswith("layers.1.mlp.up_proj")
    entry = mlx_zoo.quantize(fused, config, **QUANT)
    assert entry["model.layers.1.mlp.up_proj"] is False
    assert "gate_up_proj" not in fused.layers[1].mlp and "gate_up_proj" in fused.layers[0].mlp
    saved = json.loads((mlx_zoo.save(fused, config, tmp_path) / "config.json").read_text())
    assert not any("qkv_proj" in k or "gate_up_proj" in k for k in saved["quantization"])


PEAK_SCRIPT = """
import sys
import mlx.core as mx, mlx_zoo
mlx_zoo.load(sys.argv[1], dtype=None, dequantize=False, fuse=sys.argv[2] == "fuse")
print(mx.get_peak_memory())
"""


def test_fusing_at_load_adds_one_fused_layer_to_peak_memory(tmp_path):
    """load(fuse=True) fuses one group at a time from evaluated weights: its peak memory exceeds
    the unfused load's by about one fused layer, not by a copy of every fused weight."""
    import subprocess
    import sys

    from mlx_zoo import registry

    layers, hidden, inter = 6, 256, 1024
    config = dict(model_type="qwen2", hidden_size=hidden, intermediate_size=inter,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=64, tie_word_embeddings=True)
    arch = registry.resolve("qwen2")
    args = arch.config_class.from_dict(config)
    model = arch.model_class(args)
    mlx_zoo.save(model, args, tmp_path)
    peak = {}
    for mode in ("plain", "fuse"):
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path), mode],
                             capture_output=True, text=True, check=True)
        peak[mode] = int(out.stdout.split()[-1])
    itemsize = 4  # float32
    largest = 2 * inter * hidden * itemsize  # one gate_up_proj
    every_copy = layers * (largest + (hidden + 2 * hidden // 2) * hidden * itemsize)
    extra = peak["fuse"] - peak["plain"]
    assert extra <= 1.5 * largest < every_copy / 2, (extra, largest, every_copy)
