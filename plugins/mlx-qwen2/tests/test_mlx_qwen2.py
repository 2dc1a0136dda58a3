"""mlx-qwen2 against transformers' Qwen2ForCausalLM through the plugin-author kit, plus what only
Qwen2 has to show: interoperability with mlx-lm's checkpoints (quantized, mixed precision, the
transformers-5 config dialect mlx-lm misreads)."""

from __future__ import annotations

import json

import mlx.nn as nn
import numpy as np
import pytest

import mlx_zoo
from mlx_zoo.testing import (
    PLAIN,
    TOLERANCE,
    PluginConformance,
    logits,
    relative_error,
    transformers_model,
    write_tiny_checkpoint,
)

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
IDS = np.arange(40)[None] % 320
BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


class TestQwen2(PluginConformance):
    model_type = "qwen2"
    reference = "Qwen2ForCausalLM"
    base_config = BASE
    switches = {"untied": dict(tie_word_embeddings=False), "yarn": dict(rope_scaling=YARN),
                "linear": dict(rope_scaling={"rope_type": "linear", "factor": 2.0})}


@pytest.fixture
def checkpoint(tmp_path):
    return write_tiny_checkpoint(tmp_path / "zoo", "qwen2", {**BASE, "tie_word_embeddings": False})


def to_mlx_lm_dialect(path) -> None:
    """transformers >= 5 writes ``rope_parameters``; mlx-lm 0.32 reads only a top-level
    ``rope_theta`` (the published dialect)."""
    cfg = json.loads((path / "config.json").read_text())
    params = cfg.pop("rope_parameters", None) or {}
    cfg["rope_theta"] = params.pop("rope_theta", cfg.get("rope_theta"))
    (path / "config.json").write_text(json.dumps(cfg))


def test_mlx_lm_reads_ours_and_we_read_its_quantized_conversion(checkpoint, tmp_path):
    from mlx_lm import convert
    from mlx_lm.utils import load_model

    ours, config = mlx_zoo.load(checkpoint, **PLAIN)
    mlx_zoo.save(ours, config, tmp_path / "saved")
    theirs, _ = load_model(tmp_path / "saved")
    assert relative_error(logits(theirs, IDS), logits(ours, IDS)) < TOLERANCE
    convert(str(tmp_path / "saved"), mlx_path=str(tmp_path / "q4"), quantize=True,
            q_group_size=32, q_bits=4)
    ours, _ = mlx_zoo.load(tmp_path / "q4", **PLAIN)
    assert isinstance(ours.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    theirs, _ = load_model(tmp_path / "q4")
    assert relative_error(logits(ours, IDS), logits(theirs, IDS)) < TOLERANCE


def test_mixed_precision_per_layer_overrides_from_mlx_lm(checkpoint, tmp_path):
    """mlx-lm's mixed recipes write per-layer {"bits", "group_size"} overrides."""
    from mlx_lm import convert
    from mlx_lm.utils import load_model

    convert(str(checkpoint), mlx_path=str(tmp_path / "mixed"), quantize=True, q_group_size=32,
            quant_predicate="mixed_3_6")
    quantization = json.loads((tmp_path / "mixed" / "config.json").read_text())["quantization"]
    overrides = {k: v["bits"] for k, v in quantization.items() if isinstance(v, dict)}
    assert set(overrides.values()) == {3, 6}
    ours, _ = mlx_zoo.load(tmp_path / "mixed", **PLAIN)
    modules = dict(ours.named_modules())
    assert all(modules[path].bits == bits for path, bits in overrides.items())
    theirs, _ = load_model(tmp_path / "mixed")
    assert relative_error(logits(ours, IDS), logits(theirs, IDS)) < TOLERANCE


def test_transformers5_dialect_where_mlx_lm_goes_wrong(checkpoint, tmp_path):
    """transformers >= 5 saves rope_theta inside ``rope_parameters``: we read it; mlx-lm 0.32.2
    silently falls back to theta = 1e6 (its known gap)."""
    from mlx_lm.utils import load_model

    from mlx_zoo.testing import TinyCase, torch_logits

    case = TinyCase("untied", {**BASE, "tie_word_embeddings": False}, checkpoint, IDS)
    hf = transformers_model("Qwen2ForCausalLM", {**case.config, "model_type": "qwen2"},
                            case.weights())
    hf.save_pretrained(tmp_path / "hf")
    assert "rope_parameters" in json.loads((tmp_path / "hf" / "config.json").read_text())
    expected = torch_logits(hf, case.ids)
    ours, _ = mlx_zoo.load(tmp_path / "hf")
    theirs, _ = load_model(tmp_path / "hf")
    assert relative_error(logits(ours, case.ids), expected) < TOLERANCE
    assert relative_error(logits(theirs, case.ids), expected) > 100 * TOLERANCE


def test_sanitize_drops_rotary_buffers_and_tied_head(checkpoint):
    import mlx.core as mx

    model, _ = mlx_zoo.load(checkpoint, **PLAIN)
    model.args.tie_word_embeddings = True
    weights = {"model.layers.0.self_attn.rotary_emb.inv_freq": mx.zeros(4),
               "lm_head.weight": mx.zeros((320, 64)), "model.norm.weight": mx.ones(64)}
    assert list(model.sanitize(weights)) == ["model.norm.weight"]


def test_left_out_keys_read_as_transformers_reads_them(tmp_path):
    """A config.json without ``rope_theta`` / ``tie_word_embeddings`` is read with
    ``Qwen2Config``'s defaults: untied (its ``lm_head.weight`` loads, not dropped), theta 10,000."""
    import transformers

    config = {k: v for k, v in BASE.items() if k not in ("rope_theta", "tie_word_embeddings")}
    path = write_tiny_checkpoint(tmp_path, "qwen2", config)
    reference = transformers.Qwen2Config.from_pretrained(path)
    model, args = mlx_zoo.load(path)
    assert args.tie_word_embeddings is reference.tie_word_embeddings is False
    theta = getattr(reference, "rope_theta", None) or reference.rope_parameters["rope_theta"]
    assert args.rope_theta == theta == 10000.0
    assert "lm_head" in model
