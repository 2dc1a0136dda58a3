"""mlx-hunyuan: the three HunYuan formats against independent implementations.

* ``hunyuan_v1_dense`` / ``hunyuan_v1_moe``: transformers' HunYuanDenseV1ForCausalLM and
  HunYuanMoEV1ForCausalLM, on tiny random checkpoints written by ``save_pretrained``.
* ``hunyuan`` (Tencent's format; transformers has none): the torch reference in
  hunyuan_reference.py (a helper module next to this file), written from Tencent's modeling
  code, cross-checked with mlx-lm's ``hunyuan`` model.

The kit's generic checks for the two transformers formats are in test_mlx_hunyuan_conformance.py.

All weights are "sharp" (the kit's ``sharpen_torch_model``), so a wrong RoPE base, routing rule or
key/value sharing shows as an error of order 1, not 1e-5.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hunyuan_reference import HunYuanReference
from mlx.utils import tree_flatten

import mlx_zoo
from mlx_zoo.testing import (
    BROKEN,
    TOLERANCE,
    decode_steps,
    incremental_logits,
    torch_logits,
)
from mlx_zoo.testing import logits as mlx_logits
from mlx_zoo.testing import relative_error as rel_err
from mlx_zoo.testing import sharpen_torch_model as sharpen

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

VOCAB, LENGTH, PREFILL = 128, 24, 9
ALPHA = 4.0  # NTK-alpha of the tiny models (published checkpoints use 1000 with head_dim 128)

# transformers-5 dialect (rope_parameters), as save_pretrained writes it
V1_ROPE = {"rope_type": "dynamic", "alpha": ALPHA, "factor": 1.0, "rope_theta": 10000.0}
V1_BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
               max_position_embeddings=64, rope_parameters=V1_ROPE)

# Tencent's format, published dialect: CLA in runs of 2, query/key norm, mixed MLP + MoE with
# per-layer lists (top-1 and top-k > 1 layers, different expert and shared widths), GQA.
HUNYUAN = dict(
    model_type="hunyuan", architectures=["HunYuanMoEV1ForCausalLM"], vocab_size=VOCAB,
    hidden_size=64, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=64,
    rope_scaling={"type": "dynamic", "alpha": ALPHA, "factor": 1.0}, attention_bias=False,
    use_qk_norm=True, use_cla=True, cla_share_factor=2, num_experts=4, moe_topk=[2, 1, 3, 2],
    moe_intermediate_size=[32, 64, 32, 64], use_mixed_mlp_moe=True, num_shared_expert=[1, 2, 1, 2],
    tie_word_embeddings=True)


def prompt(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (2, LENGTH))


def write_v1(path: Path, kind: str, seed: int = 0, **overrides):
    """A tiny transformers HunYuan v1 checkpoint with sharp weights; returns the torch model."""
    torch.manual_seed(seed)
    if kind == "dense":
        cfg = transformers.HunYuanDenseV1Config(**{**V1_BASE, **overrides})
        ref = transformers.HunYuanDenseV1ForCausalLM(cfg)
    else:
        moe = dict(num_experts=4, moe_topk=[2, 1, 3])  # top-1 renormalised to weight 1 here
        cfg = transformers.HunYuanMoEV1Config(**{**V1_BASE, **moe, **overrides})
        ref = transformers.HunYuanMoEV1ForCausalLM(cfg)
    ref.eval()
    sharpen(ref, seed=seed)
    ref.save_pretrained(path)
    return ref


def write_hunyuan(path: Path, config: dict | None = None, seed: int = 0, fuse: bool = False):
    """A tiny checkpoint in Tencent's format from the torch reference (optionally with Tencent's
    fused ``qkv_proj`` / ``gate_and_up_proj`` tensors); returns the reference."""
    config = dict(config or HUNYUAN)
    torch.manual_seed(seed)
    ref = HunYuanReference(config).eval()
    sharpen(ref, seed=seed)
    state = {k: v.detach().contiguous() for k, v in ref.state_dict().items()}
    if fuse:
        state = fuse_like_tencent(state, config)
    path.mkdir(parents=True, exist_ok=True)
    safetensors_torch.save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config))
    return ref


def fuse_like_tencent(state: dict, config: dict) -> dict:
    """Tencent's fused layouts: ``qkv_proj`` rows grouped per key/value head as [its query heads,
    its key head, its value head]; ``gate_and_up_proj`` = [up rows; gate rows]."""
    n_kv = config["num_key_value_heads"]
    groups = config["num_attention_heads"] // n_kv
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    out = {}
    for name, value in state.items():
        if name.endswith("self_attn.q_proj.weight") and name.replace("q_proj", "k_proj") in state:
            q = value.reshape(n_kv, groups, head_dim, -1)
            k = state[name.replace("q_proj", "k_proj")].reshape(n_kv, 1, head_dim, -1)
            v = state[name.replace("q_proj", "v_proj")].reshape(n_kv, 1, head_dim, -1)
            out[name.replace("q_proj", "qkv_proj")] = torch.cat([q, k, v], 1).reshape(
                -1, value.shape[-1]).contiguous()
        elif name.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight")):
            continue
        elif name.endswith("gate_proj.weight"):
            up = state[name.replace("gate_proj", "up_proj")]
            out[name.replace("gate_proj", "gate_and_up_proj")] = torch.cat([up, value]).contiguous()
        elif name.endswith("up_proj.weight"):
            continue
        else:
            out[name] = value
    return out


def mlx_lm_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    """mlx-lm's ``hunyuan`` model on the same checkpoint."""
    from mlx_lm.models import hunyuan as mlx_lm_hunyuan

    config = json.loads((path / "config.json").read_text())
    model = mlx_lm_hunyuan.Model(mlx_lm_hunyuan.ModelArgs.from_dict(config))
    weights = model.sanitize(mx.load(str(path / "model.safetensors")))
    model.load_weights(list(weights.items()))
    return mlx_logits(model, ids)


# -- packaging and registry --------------------------------------------------------------------


def test_installed_plugin_registers_all_three_model_types():
    out = subprocess.run([sys.executable, "-m", "mlx_zoo.cli", "list"], capture_output=True,
                         text=True, check=True).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    for model_type in ("hunyuan", "hunyuan_v1_dense", "hunyuan_v1_moe"):
        assert rows[model_type][1] == "mlx-hunyuan" and rows[model_type][-1] == "ok"


def test_ntk_alpha_rope_is_a_registry_variant_matching_transformers(tmp_path):
    from transformers.models.hunyuan_v1_dense.modeling_hunyuan_v1_dense import (
        HunYuanDenseV1RotaryEmbedding,
    )

    ref = write_v1(tmp_path, "dense")
    model, config = mlx_zoo.load(tmp_path)  # imports and registers the plugin
    rope = model.layers[0].self_attn.rope
    assert isinstance(rope, mlx_zoo.RoPE) and type(rope).__module__ == "mlx_hunyuan.rope"
    assert config.rope_scaling["rope_type"] == "dynamic" and config.rope_type == "ntk_alpha"
    registry_rope = mlx_zoo.get_rope(16, base=10000.0, scaling={"rope_type": "ntk_alpha",
                                                                "alpha": ALPHA})
    assert type(registry_rope) is type(rope)
    inv_freq, _ = HunYuanDenseV1RotaryEmbedding.compute_ntk_alpha_rope_parameters(ref.config)
    expected = 10000.0 * ALPHA ** (16 / 14)
    np.testing.assert_allclose(1 / np.array(rope._periods), inv_freq.numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.array(rope._periods)[1], expected ** (2 / 16), rtol=1e-6)


# -- transformers' formats ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_v1_logits_and_decoding_match_transformers(tmp_path, kind):
    ref = write_v1(tmp_path, kind)
    model, config = mlx_zoo.load(tmp_path)
    assert config.model_type == f"hunyuan_v1_{kind}"
    ids = prompt()
    expected = torch_logits(ref, ids)
    assert rel_err(mlx_logits(model, ids), expected) < TOLERANCE
    steps = incremental_logits(model, ids, decode_steps(LENGTH, PREFILL))
    assert rel_err(steps, expected) < TOLERANCE


def to_published_dialect(path: Path) -> None:
    """Rewrite a transformers-5 config.json (``rope_parameters``) the way HunYuan's published
    configs read: top-level ``rope_theta``, ``rope_scaling = {"type": "dynamic", "alpha", ...}``."""
    cfg = json.loads((path / "config.json").read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = {"type": params.pop("rope_type"), **params}
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_v1_published_dialect(tmp_path, kind):
    ref = write_v1(tmp_path, kind, seed=2)
    to_published_dialect(tmp_path)
    model, config = mlx_zoo.load(tmp_path)
    assert config.rope_type == "ntk_alpha"
    ids = prompt(2)
    assert rel_err(mlx_logits(model, ids), torch_logits(ref, ids)) < TOLERANCE


def test_mlx_lm_reads_what_save_writes_for_dense_v1(tmp_path):
    """mlx_zoo.save writes the published dialect (top-level rope_theta, rope_scaling with
    ``type``), which mlx-lm's hunyuan_v1_dense requires; it then computes the same logits."""
    from mlx_lm.utils import load_model

    ref = write_v1(tmp_path / "hf", "dense", tie_word_embeddings=True)
    model, config = mlx_zoo.load(tmp_path / "hf")
    mlx_zoo.save(model, config, tmp_path / "zoo")
    saved = json.loads((tmp_path / "zoo" / "config.json").read_text())
    assert saved["rope_scaling"]["type"] == "dynamic" and saved["rope_scaling"]["alpha"] == ALPHA
    theirs, _ = load_model(tmp_path / "zoo")
    ids = prompt()
    assert rel_err(mlx_logits(theirs, ids), torch_logits(ref, ids)) < TOLERANCE


def test_v1_tied_embeddings_and_bias(tmp_path):
    ref = write_v1(tmp_path, "dense", tie_word_embeddings=True, attention_bias=True, seed=3)
    model, config = mlx_zoo.load(tmp_path)
    assert config.tie_word_embeddings and "lm_head" not in model
    ids = prompt(3)
    assert rel_err(mlx_logits(model, ids), torch_logits(ref, ids)) < TOLERANCE


@pytest.mark.parametrize("break_it", ["plain RoPE", "10x theta"])
def test_wrong_rope_base_breaks_parity(tmp_path, break_it):
    """The parity test can fail: without alpha (plain RoPE) or with a 10x base, the logits are
    off by orders of magnitude more than the tolerance."""
    ref = write_v1(tmp_path, "dense")
    cfg = json.loads((tmp_path / "config.json").read_text())
    if break_it == "plain RoPE":
        del cfg["rope_parameters"]["alpha"]
    else:
        cfg["rope_parameters"]["rope_theta"] *= 10
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model, _ = mlx_zoo.load(tmp_path)
    ids = prompt()
    assert rel_err(mlx_logits(model, ids), torch_logits(ref, ids)) > BROKEN


def test_missing_causal_mask_breaks_parity(tmp_path):
    ref = write_v1(tmp_path, "moe")
    model, _ = mlx_zoo.load(tmp_path)
    no_mask = type("NoMask", (mlx_zoo.KVCache,), {"make_mask": lambda self, n: None})
    cache = [no_mask() for _ in model.make_cache()]
    ids = prompt()
    assert rel_err(mlx_logits(model, ids, cache), torch_logits(ref, ids)) > BROKEN


# -- Tencent's format --------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True], ids=["split", "fused-qkv-gate-up"])
def test_hunyuan_matches_reference_full_and_incremental(tmp_path, fused):
    ref = write_hunyuan(tmp_path, fuse=fused)
    model, config = mlx_zoo.load(tmp_path)
    assert config.model_type == "hunyuan" and config.shares_kv
    ids = prompt(1)
    expected = ref.logits(ids)
    assert rel_err(mlx_logits(model, ids), expected) < TOLERANCE
    steps = incremental_logits(model, ids, decode_steps(LENGTH, PREFILL))
    assert rel_err(steps, expected) < TOLERANCE


def test_cla_cache_holds_kv_for_one_layer_per_run(tmp_path):
    write_hunyuan(tmp_path)
    model, config = mlx_zoo.load(tmp_path, fuse=False)
    layers = config.num_hidden_layers
    # the layers inside a run own no key/value projections ...
    owners = [i for i, layer in enumerate(model.layers) if "k_proj" in layer.self_attn]
    assert owners == list(range(0, layers, config.cla_share_factor))
    # ... and no cache: one cache per run, 1 / cla_share_factor of the layers
    cache = mlx_zoo.make_prompt_cache(model)
    assert len(cache) == layers // config.cla_share_factor
    ids = prompt()
    model(mx.array(ids), cache)
    per_layer_bytes = 2 * ids.size * config.num_key_value_heads * config.head_dim * 4  # k + v
    assert all(c.offset == LENGTH for c in cache)
    assert sum(c.nbytes for c in cache) == per_layer_bytes * layers // config.cla_share_factor


def test_cla_prompt_cache_saves_and_reloads(tmp_path):
    """The per-run cache list round-trips through save/load_prompt_cache and decoding goes on
    from it as from the live cache."""
    ref = write_hunyuan(tmp_path / "ckpt")
    model, _ = mlx_zoo.load(tmp_path / "ckpt")
    ids = prompt(6)
    cache = mlx_zoo.make_prompt_cache(model)
    first = mlx_logits(model, ids[:, :PREFILL], cache)
    mlx_zoo.save_prompt_cache(tmp_path / "prompt.safetensors", cache)
    reloaded = mlx_zoo.load_prompt_cache(tmp_path / "prompt.safetensors")
    assert len(reloaded) == len(cache) and reloaded[0].offset == PREFILL
    rest = [mlx_logits(model, ids[:, i:i + 1], reloaded) for i in range(PREFILL, LENGTH)]
    assert rel_err(np.concatenate([first, *rest], axis=1), ref.logits(ids)) < TOLERANCE


def test_cla_with_quantized_kv_cache_decodes(tmp_path):
    """CLA caches hold keys before each layer's key norm; with a quantized cache the keys are
    dequantized before the norm: decoding equals decoding with a plain cache that stores the
    same 8-bit round-tripped keys/values."""
    write_hunyuan(tmp_path, {**HUNYUAN, "num_attention_heads": 2, "num_key_value_heads": 1})
    model, config = mlx_zoo.load(tmp_path)
    group, bits = config.head_dim, 8

    def round_trip(a):
        return mx.dequantize(*mx.quantize(a, group_size=group, bits=bits), group_size=group,
                             bits=bits)

    class RoundTripKVCache(mlx_zoo.KVCache):
        def update_and_fetch(self, keys, values):
            return super().update_and_fetch(round_trip(keys), round_trip(values))

    def decode(cache):
        outs = [mlx_logits(model, ids[:, :PREFILL], cache)]
        outs += [mlx_logits(model, ids[:, i:i + 1], cache) for i in range(PREFILL, LENGTH)]
        return np.concatenate(outs, axis=1)

    ids = prompt(2)
    slots = len(model.make_cache())
    quantized = decode([mlx_zoo.QuantizedKVCache(group_size=group, bits=bits)
                        for _ in range(slots)])
    assert rel_err(quantized, decode([RoundTripKVCache() for _ in range(slots)])) < TOLERANCE


def test_sharing_keys_after_their_norm_breaks_parity(tmp_path):
    """What CLA shares matters: handing on keys already normalised by the run's first layer
    (instead of each layer applying its own key norm) is off by orders of magnitude."""
    ref = write_hunyuan(tmp_path)
    model, _ = mlx_zoo.load(tmp_path)
    for layer in model.layers:
        layer.self_attn.normalizes_fetched_keys = False  # norm once, before caching
    ids = prompt(1)
    assert rel_err(mlx_logits(model, ids), ref.logits(ids)) > BROKEN


TOP1 = {**HUNYUAN, "moe_topk": 1}


def test_mlx_lm_agrees_with_reference_for_top1_routing(tmp_path):
    """mlx-lm's hunyuan (CLA, qk norm, mixed MLP, NTK alpha) equals the reference where routing
    is top-1, and loads what mlx_zoo.save writes."""
    ref = write_hunyuan(tmp_path / "ckpt", TOP1)
    ids = prompt(4)
    expected = ref.logits(ids)
    assert rel_err(mlx_lm_logits(tmp_path / "ckpt", ids), expected) < TOLERANCE
    model, config = mlx_zoo.load(tmp_path / "ckpt")
    assert rel_err(mlx_logits(model, ids), expected) < TOLERANCE
    mlx_zoo.save(model, config, tmp_path / "zoo")
    assert rel_err(mlx_lm_logits(tmp_path / "zoo", ids), expected) < TOLERANCE


def test_reads_mlx_lm_quantized_hunyuan(tmp_path):
    """A 4-bit checkpoint quantized and saved by mlx-lm (stacked switch_mlp experts, quantized
    router) loads here and computes what mlx-lm computes."""
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    write_hunyuan(tmp_path / "ckpt", TOP1)
    theirs, config = load_model(tmp_path / "ckpt")
    theirs, config = quantize_model(theirs, config, group_size=32, bits=4)
    save_model(tmp_path / "q4", theirs)
    save_config(config, tmp_path / "q4" / "config.json")
    ours, _ = mlx_zoo.load(tmp_path / "q4", dequantize=False)  # as stored (no auto-dense)
    assert type(ours.layers[0].mlp.gate.wg) is nn.QuantizedLinear
    ids = prompt()
    assert rel_err(mlx_logits(ours, ids), mlx_logits(theirs, ids)) < TOLERANCE


def test_mlx_lm_departs_from_tencent_for_top_k_routing(tmp_path):
    """Where mlx-lm and the reference disagree, and who is right.

    mlx-lm 0.32's ``hunyuan`` weights the k > 1 chosen experts by their raw softmax
    probabilities. Tencent's ``topkgating`` divides them by their sum (``gates / gates_s``), as do
    vLLM (``renormalize=top_k > 1``), transformers' hunyuan_v1_moe and the configs themselves
    (Hunyuan-A13B: ``"norm_topk_prob": true``, top-8). So mlx-lm is off for k > 1, and exactly
    equal to the reference with the renormalisation switched off; this model follows Tencent.
    """
    config = {**HUNYUAN, "moe_topk": 2}
    ref = write_hunyuan(tmp_path, config)
    unnormalized = HunYuanReference(config, renormalize_topk=False)
    unnormalized.load_state_dict(ref.state_dict())
    ids = prompt(5)
    theirs = mlx_lm_logits(tmp_path, ids)
    assert rel_err(theirs, ref.logits(ids)) > BROKEN
    assert rel_err(theirs, unnormalized.eval().logits(ids)) < TOLERANCE
    model, _ = mlx_zoo.load(tmp_path)
    assert rel_err(mlx_logits(model, ids), ref.logits(ids)) < TOLERANCE


def test_hunyuan_without_cla_or_moe(tmp_path):
    """Dense Tencent-format layers (num_experts == 1), untied head, no CLA, no qk norm."""
    config = {**HUNYUAN, "use_cla": False, "num_experts": 1, "use_qk_norm": False,
              "tie_word_embeddings": False, "intermediate_size": 96}
    ref = write_hunyuan(tmp_path, config, seed=7)
    model, loaded = mlx_zoo.load(tmp_path)
    assert not loaded.shares_kv and len(model.make_cache()) == config["num_hidden_layers"]
    ids = prompt(7)
    expected = ref.logits(ids)
    assert rel_err(mlx_logits(model, ids), expected) < TOLERANCE
    steps = incremental_logits(model, ids, decode_steps(LENGTH, PREFILL))
    assert rel_err(steps, expected) < TOLERANCE


# -- saving and quantization -------------------------------------------------------------------

FORMATS = ["dense", "moe", "hunyuan"]


def write_any(path: Path, fmt: str):
    return write_hunyuan(path) if fmt == "hunyuan" else write_v1(path, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_save_load_round_trip_is_idempotent(tmp_path, fmt):
    """A checkpoint written by mlx_zoo.save (stacked experts, split projections) passes
    sanitize unchanged and gives the same logits."""
    write_any(tmp_path / "src", fmt)
    model, config = mlx_zoo.load(tmp_path / "src")
    mlx_zoo.save(model, config, tmp_path / "out")
    again, _ = mlx_zoo.load(tmp_path / "out")
    ids = prompt()
    np.testing.assert_array_equal(mlx_logits(again, ids), mlx_logits(model, ids))


def copy_into_torch(torch_model, model) -> None:
    """Copy a dense mlx model's parameters into the torch model of the same checkpoint,
    unstacking ``switch_mlp`` experts: into ``experts.{e}.*`` (reference) or into transformers'
    fused in-memory ``experts.gate_up_proj`` (gate rows first) / ``experts.down_proj``."""
    target = dict(torch_model.named_parameters())
    with torch.no_grad():
        for name, value in tree_flatten(model.parameters()):
            value = torch.from_numpy(np.array(value))
            if ".switch_mlp." not in name:
                target[name].copy_(value)
                continue
            prefix, proj = name.split(".switch_mlp.")[0], name.split(".")[-2]
            fused = target.get(f"{prefix}.experts.gate_up_proj")
            if fused is None:
                for expert in range(value.shape[0]):
                    target[f"{prefix}.experts.{expert}.{proj}.weight"].copy_(value[expert])
            elif proj == "down_proj":
                target[f"{prefix}.experts.down_proj"].copy_(value)
            else:
                half = fused.shape[1] // 2
                rows = slice(0, half) if proj == "gate_proj" else slice(half, None)
                fused[:, rows].copy_(value)


def reference_logits(ref, ids: np.ndarray) -> np.ndarray:
    return ref.logits(ids) if isinstance(ref, HunYuanReference) else torch_logits(ref, ids)


@pytest.mark.parametrize("fmt", FORMATS)
def test_4bit_quantized_copy_saves_loads_and_runs(tmp_path, fmt):
    """quantize + save + load: the reloaded 4-bit model (quantized kernels, experts through
    gather_qmm) computes exactly the reference model whose weights are the dequantized values."""
    ref = write_any(tmp_path / "src", fmt)
    model, config = mlx_zoo.load(tmp_path / "src", fuse=False)
    mlx_zoo.quantize(model, config, bits=4, group_size=32)
    ids = prompt()
    in_memory = mlx_logits(model, ids)
    mlx_zoo.save(model, config, tmp_path / "q4")
    reloaded, _ = mlx_zoo.load(tmp_path / "q4", dequantize=False, fuse=False)  # as stored
    modules = dict(reloaded.named_modules())
    assert isinstance(modules["model.layers.0.self_attn.q_proj"], nn.QuantizedLinear)
    if fmt != "dense":
        switch = modules["model.layers.0.mlp.switch_mlp.up_proj"]
        assert type(switch).__name__ == "QuantizedSwitchLinear"
        assert type(modules["model.layers.0.mlp.gate.wg"]) is nn.Linear  # router kept
    out = mlx_logits(reloaded, ids)
    np.testing.assert_array_equal(out, in_memory)
    steps = incremental_logits(reloaded, ids, decode_steps(LENGTH, PREFILL))
    assert rel_err(steps, out) < TOLERANCE
    dequantized, _ = mlx_zoo.load(tmp_path / "q4", dequantize=True, fuse=False)
    copy_into_torch(ref, dequantized)
    assert rel_err(out, reference_logits(ref, ids)) < TOLERANCE


# -- bad input ---------------------------------------------------------------------------------


def test_per_layer_list_of_wrong_length_is_a_clear_error(tmp_path):
    write_hunyuan(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["moe_topk"] = [2, 2]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(mlx_zoo.ConfigError, match="moe_topk.*4 entries, got 2"):
        mlx_zoo.load(tmp_path)


def test_missing_expert_is_reported_by_name(tmp_path):
    write_hunyuan(tmp_path)
    dst = tmp_path / "broken"
    shutil.copytree(tmp_path, dst, ignore=shutil.ignore_patterns("broken"))
    weights = mx.load(str(dst / "model.safetensors"))
    del weights["model.layers.1.mlp.experts.3.down_proj.weight"]
    mx.save_safetensors(str(dst / "model.safetensors"), weights)
    with pytest.raises(mlx_zoo.WeightMismatchError, match="experts.0.down_proj"):
        mlx_zoo.load(dst)
