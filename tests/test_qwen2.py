"""mlx-qwen2 against transformers' Qwen2ForCausalLM: logits, incremental decoding, quantized
copies, save/load, and interoperability with mlx-lm's checkpoints."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from parity import (
    TOLERANCE,
    decode_steps,
    incremental_logits,
    mlx_logits,
    rel_err,
    sharpen,
    torch_logits,
)

import mlx_zoo

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, LENGTH = 96, 40
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rope_theta=10000.0, rms_norm_eps=1e-6)
SCALINGS = {
    "none": None,
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "linear": {"rope_type": "linear", "factor": 2.0},
}


def write_reference(path, tied: bool, scaling=None, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(**BASE, tie_word_embeddings=tied, rope_scaling=scaling)
    ref = transformers.Qwen2ForCausalLM(cfg).eval()
    sharpen(ref, seed=seed)
    if tied:
        ref.tie_weights()
    ref.save_pretrained(path)
    return ref


def prompt(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (1, LENGTH))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("scaling", list(SCALINGS))
def test_logits_match_transformers(tmp_path, tied, scaling):
    ref = write_reference(tmp_path, tied, SCALINGS[scaling])
    model, config = mlx_zoo.load(tmp_path)
    assert config.tie_word_embeddings is tied
    ids = prompt()
    expected = torch_logits(ref, ids)
    assert rel_err(mlx_logits(model, ids), expected) < TOLERANCE


def test_wrong_rope_base_breaks_parity(tmp_path):
    """The parity test can fail: a 10x RoPE base is off by orders of magnitude, not by noise."""
    ref = write_reference(tmp_path, tied=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    params = cfg.get("rope_parameters") or cfg
    params["rope_theta"] = 10 * BASE["rope_theta"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model, _ = mlx_zoo.load(tmp_path)
    ids = prompt()
    assert rel_err(mlx_logits(model, ids), torch_logits(ref, ids)) > 100 * TOLERANCE


def test_missing_causal_mask_breaks_parity(tmp_path):
    ref = write_reference(tmp_path, tied=False)
    model, _ = mlx_zoo.load(tmp_path)
    ids = prompt()
    cache = [type("NoMask", (mlx_zoo.KVCache,), {"make_mask": lambda self, n: None})()
             for _ in model.layers]
    assert rel_err(mlx_logits(model, ids, cache), torch_logits(ref, ids)) > 100 * TOLERANCE


@pytest.mark.parametrize("scaling", ["none", "yarn"])
def test_incremental_decoding_matches_full_forward(tmp_path, scaling):
    write_reference(tmp_path, tied=True, scaling=SCALINGS[scaling])
    model, _ = mlx_zoo.load(tmp_path)
    ids = prompt(1)
    full = mlx_logits(model, ids)
    steps = incremental_logits(model, ids, decode_steps(LENGTH, prefill=17))
    assert rel_err(steps, full) < TOLERANCE


def test_quantized_copy_saves_loads_and_runs(tmp_path):
    ref = write_reference(tmp_path / "hf", tied=False)
    model, config = mlx_zoo.load(tmp_path / "hf")
    quantization = mlx_zoo.quantize(model, config, bits=4, group_size=32)
    assert quantization["bits"] == 4
    ids = prompt()
    in_memory = mlx_logits(model, ids)
    mlx_zoo.save(model, config, tmp_path / "q4")
    saved = json.loads((tmp_path / "q4" / "config.json").read_text())
    assert saved["quantization"]["bits"] == 4 and saved["model_type"] == "qwen2"
    reloaded, _ = mlx_zoo.load(tmp_path / "q4")
    assert isinstance(reloaded.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    out = mlx_logits(reloaded, ids)
    np.testing.assert_array_equal(out, in_memory)
    # The quantized kernels compute the model whose weights are the dequantized 4-bit values.
    with torch.no_grad():
        for name, module in reloaded.named_modules():
            if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
                w = mx.dequantize(module.weight, module.scales, module.biases,
                                  group_size=module.group_size, bits=module.bits)
                ref.get_submodule(name).weight.copy_(torch.from_numpy(np.array(w)))
    assert rel_err(out, torch_logits(ref, ids)) < TOLERANCE


def test_save_load_round_trip(tmp_path):
    write_reference(tmp_path / "hf", tied=True, scaling=SCALINGS["yarn"])
    model, config = mlx_zoo.load(tmp_path / "hf")
    mlx_zoo.save(model, config, tmp_path / "out")
    again, config2 = mlx_zoo.load(tmp_path / "out")
    ids = prompt()
    np.testing.assert_array_equal(mlx_logits(again, ids), mlx_logits(model, ids))
    assert config2.rope_scaling == config.rope_scaling


def to_published_dialect(path) -> None:
    """Rewrite a transformers-5 config.json (``rope_parameters``) in the published dialect
    (top-level ``rope_theta``), the only one mlx-lm 0.32 reads."""
    cfg = json.loads((path / "config.json").read_text())
    params = cfg.pop("rope_parameters", None) or {}
    cfg["rope_theta"] = params.pop("rope_theta", cfg.get("rope_theta"))
    if params.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = params
    (path / "config.json").write_text(json.dumps(cfg))


def test_reads_mlx_lm_quantized_conversion_and_mlx_lm_reads_ours(tmp_path):
    """Checkpoints cross both ways: mlx-lm's `convert -q` output loads here, and mlx-lm loads
    what mlx_zoo.save writes, with the same logits."""
    from mlx_lm import convert
    from mlx_lm.utils import load_model

    write_reference(tmp_path / "hf", tied=False)
    to_published_dialect(tmp_path / "hf")
    convert(str(tmp_path / "hf"), mlx_path=str(tmp_path / "mlxlm-q"), quantize=True,
            q_group_size=32, q_bits=4)
    ours, _ = mlx_zoo.load(tmp_path / "mlxlm-q")
    theirs, _ = load_model(tmp_path / "mlxlm-q")
    ids = prompt()
    assert rel_err(mlx_logits(ours, ids), mlx_logits(theirs, ids)) < TOLERANCE

    model, config = mlx_zoo.load(tmp_path / "hf")
    mlx_zoo.save(model, config, tmp_path / "zoo")
    theirs, _ = load_model(tmp_path / "zoo")
    assert rel_err(mlx_logits(theirs, ids), mlx_logits(model, ids)) < TOLERANCE


def test_transformers5_dialect_where_mlx_lm_goes_wrong(tmp_path):
    """transformers >= 5 saves rope_theta inside ``rope_parameters``. We read it (parity with
    transformers above); mlx-lm 0.32.2 does not and silently falls back to theta = 1e6. Our
    ``save`` writes the published dialect, which both read."""
    from mlx_lm.utils import load_model

    ref = write_reference(tmp_path / "hf", tied=False)
    assert "rope_parameters" in json.loads((tmp_path / "hf" / "config.json").read_text())
    ids = prompt()
    expected = torch_logits(ref, ids)
    ours, _ = mlx_zoo.load(tmp_path / "hf")
    theirs, _ = load_model(tmp_path / "hf")
    assert rel_err(mlx_logits(ours, ids), expected) < TOLERANCE
    assert rel_err(mlx_logits(theirs, ids), expected) > 100 * TOLERANCE  # mlx-lm's known gap


def test_sanitize_drops_rotary_buffers_and_tied_head():
    from mlx_qwen2 import Model, ModelArgs

    model = Model(ModelArgs.from_dict({"model_type": "qwen2", **BASE, "tie_word_embeddings": True}))
    weights = {"model.layers.0.self_attn.rotary_emb.inv_freq": mx.zeros(4),
               "lm_head.weight": mx.zeros((VOCAB, 64)), "model.norm.weight": mx.ones(64)}
    assert list(model.sanitize(weights)) == ["model.norm.weight"]


def test_mixed_precision_per_layer_overrides_from_mlx_lm(tmp_path):
    """mlx-lm's mixed recipes write per-layer {"bits", "group_size"} overrides in config.json's
    quantization entry; each layer loads with its own bit width."""
    from mlx_lm import convert
    from mlx_lm.utils import load_model

    write_reference(tmp_path / "hf", tied=False)
    to_published_dialect(tmp_path / "hf")
    convert(str(tmp_path / "hf"), mlx_path=str(tmp_path / "mixed"), quantize=True,
            q_group_size=32, quant_predicate="mixed_3_6")
    quantization = json.loads((tmp_path / "mixed" / "config.json").read_text())["quantization"]
    overrides = {k: v["bits"] for k, v in quantization.items() if isinstance(v, dict)}
    assert set(overrides.values()) == {3, 6}
    ours, _ = mlx_zoo.load(tmp_path / "mixed")
    modules = dict(ours.named_modules())
    assert all(modules[path].bits == bits for path, bits in overrides.items())
    theirs, _ = load_model(tmp_path / "mixed")
    ids = prompt()
    assert rel_err(mlx_logits(ours, ids), mlx_logits(theirs, ids)) < TOLERANCE
