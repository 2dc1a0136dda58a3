"""Llama 4 text model (plugin mlx-llama4) against transformers' Llama4ForCausalLM.

Tiny random checkpoints with sharp attention (the kit's sharpen_torch_model), a chunk of 16
positions so that prompts of 50 tokens cross three chunk boundaries, a temperature-tuning step
of 4 positions so that the NoPE layers' query scaling matters, and two layer patterns:

* "scout": top-1 routing, every layer MoE, every 4th layer NoPE, q/k norm, llama3 RoPE scaling;
* "maverick": top-2 routing, MoE on every 2nd layer, every 3rd layer NoPE, no q/k norm.

The kit's generic checks (parity over config switches, caches, save/quantize round trips, the
two-process shard, the CLI) are in test_mlx_llama4_conformance.py.
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

import mlx_zoo
from mlx_zoo.testing import (
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

VOCAB = 128
CHUNK = 16  # attention_chunk_size: small, so that 50 tokens cross several chunk boundaries
PROMPT = 50
BATCH = 2
WRONG = 100 * TOLERANCE  # a deliberate error must be at least this large
# Reloads of the same weights (saved, or stored per expert): equal up to float rounding. Was 1e-6,
# which these tests already failed (1.33e-6 for "scout" on a Linux CPU, float32): the same
# products summed in another order; 1e-5 is the rounding bound of the core's fusion tests.
ROUNDING = 1e-5

TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=32, intermediate_size_mlp=48,
            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            attention_chunk_size=CHUNK, floor_scale=4, attn_scale=0.5, max_position_embeddings=256)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}
VARIANTS = {
    "scout": dict(num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1,
                  no_rope_layer_interval=4, use_qk_norm=True, rope_parameters=LLAMA3_ROPE),
    "maverick": dict(num_local_experts=6, num_experts_per_tok=2, interleave_moe_layer_step=2,
                     no_rope_layer_interval=3, use_qk_norm=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}
VISION = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
              vision_output_dim=64, image_size=28, patch_size=14, projector_input_dim=64,
              projector_output_dim=64)


def text_config(variant: str):
    cfg = transformers.Llama4TextConfig(**TEXT, **VARIANTS[variant])
    cfg._attn_implementation = "eager"  # the plain reference (sdpa agrees to ~3e-6)
    return cfg


def prompt(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (BATCH, PROMPT))


def edited_copy(src: Path, dst: Path, edit) -> Path:
    """A copy of checkpoint ``src`` whose config.json is changed by ``edit(config_dict)``."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module", params=list(VARIANTS))
def reference(request):
    """The transformers Llama4ForCausalLM, sharpened."""
    torch.manual_seed(0)
    model = transformers.Llama4ForCausalLM(text_config(request.param)).eval()
    sharpen(model)
    return model


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory):
    """(directory, reference logits) of a Llama4ForCausalLM checkpoint (``llama4_text``)."""
    path = tmp_path_factory.mktemp("llama4")
    reference.save_pretrained(path)
    return path, torch_logits(reference, prompt())


@pytest.fixture(scope="module")
def loaded(checkpoint):
    model, config = mlx_zoo.load(checkpoint[0])
    return model, config, mlx_logits(model, prompt())


def test_logits_match_transformers(checkpoint, loaded):
    _, ref = checkpoint
    model, config, ours = loaded
    assert config.model_type == "llama4_text"
    assert rel_err(ours, ref) < TOLERANCE


def test_layer_pattern(loaded):
    model, config, _ = loaded
    expected_moe = [(i + 1) % config.interleave_moe_layer_step == 0 for i in range(4)]
    expected_rope = [(i + 1) % config.no_rope_layer_interval != 0 for i in range(4)]
    assert [layer.is_moe for layer in model.layers] == expected_moe
    assert [layer.self_attn.use_rope for layer in model.layers] == expected_rope
    caches = mlx_zoo.make_prompt_cache(model)
    assert [isinstance(c, mlx_zoo.ChunkedKVCache) for c in caches] == expected_rope
    assert all(isinstance(c, mlx_zoo.KVCache) for c, rope in zip(caches, expected_rope, strict=True)
               if not rope)


BREAKAGES = {
    "rope_base": lambda c: c["rope_parameters"].update(rope_theta=100.0),
    "chunk_size": lambda c: c.update(attention_chunk_size=2 * CHUNK),
    "no_chunks": lambda c: c.update(layer_types=["full_attention"] * 4),
    "no_temperature_tuning": lambda c: c.update(attn_temperature_tuning=False),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_deliberate_error_breaks_parity(checkpoint, tmp_path, breakage):
    """Each mechanism is checked by the parity test: getting it wrong fails it by far."""
    path, ref = checkpoint
    model, _ = mlx_zoo.load(edited_copy(path, tmp_path / "broken", BREAKAGES[breakage]))
    assert rel_err(mlx_logits(model, prompt()), ref) > WRONG


def test_rope_layout_matters(checkpoint):
    """Meta's complex-number RoPE rotates interleaved pairs; the half-split layout fails."""
    path, ref = checkpoint
    model, _ = mlx_zoo.load(path)
    for layer in model.layers:
        if layer.self_attn.use_rope:
            layer.self_attn.rope.traditional = False
    assert rel_err(mlx_logits(model, prompt()), ref) > WRONG


@pytest.mark.parametrize("steps", [
    decode_steps(PROMPT, prefill=13, chunk=5),  # prefill off a boundary; the piece crosses 16
    [7, 30] + [1] * (PROMPT - 37),  # a piece spanning two boundaries (16, 32)
    [CHUNK, CHUNK] + [1] * (PROMPT - 2 * CHUNK),  # pieces ending exactly on boundaries
], ids=["13+5+1s", "7+30+1s", "16+16+1s"])
def test_incremental_decoding_matches_full_forward(loaded, steps):
    model, _, full = loaded
    assert rel_err(incremental_logits(model, prompt(), steps), full) < TOLERANCE


def test_greedy_generation_matches_transformers_generate(reference, loaded):
    """mlx_zoo.generate_step (prefill in pieces of 7, then one token at a time through the
    chunked caches) picks the same 30 tokens as transformers' own cached greedy generate, across
    the chunk boundaries at 32 and 48."""
    if not hasattr(mlx_zoo, "generate_step"):
        pytest.skip("mlx_zoo.generate_step (the core's generation module) is not available yet")
    model, _, _ = loaded
    ids, new_tokens = prompt()[:1, :21], 30
    with torch.no_grad():
        ref = reference.generate(torch.from_numpy(ids), max_new_tokens=new_tokens,
                                 do_sample=False, eos_token_id=None)[0, ids.shape[1]:].tolist()
    ours = [token for token, _ in mlx_zoo.generate_step(ids[0].tolist(), model,
                                                         max_tokens=new_tokens,
                                                         prefill_step_size=7)]
    assert ours == ref


def test_incremental_decoding_needs_the_cache(loaded):
    """The decoding check can fail: pieces fed without their history are far off."""
    model, _, full = loaded
    ids = prompt()
    pieces = np.concatenate([mlx_logits(model, ids[:, :13]), mlx_logits(model, ids[:, 13:])], 1)
    assert rel_err(pieces, full) > WRONG


def test_prompt_cache_round_trip_mid_chunk(loaded, tmp_path):
    """Chunked and full caches saved mid-chunk (after 21 tokens) and reloaded decode on."""
    model, _, full = loaded
    ids, split = prompt(), CHUNK + 5
    cache = mlx_zoo.make_prompt_cache(model)
    head = mlx_logits(model, ids[:, :split], cache)
    mlx_zoo.save_prompt_cache(tmp_path / "prompt.safetensors", cache)
    restored = mlx_zoo.load_prompt_cache(tmp_path / "prompt.safetensors")
    assert [type(c) for c in restored] == [type(c) for c in cache]
    tail = incremental_logits_from(model, ids[:, split:], restored)
    assert rel_err(np.concatenate([head, tail], axis=1), full) < TOLERANCE


def incremental_logits_from(model, ids: np.ndarray, cache: list) -> np.ndarray:
    """Logits of ``ids`` fed one token at a time through an existing ``cache``."""
    return np.concatenate([mlx_logits(model, ids[:, i:i + 1], cache)
                           for i in range(ids.shape[1])], axis=1)


def test_layer_lists_derived_from_steps(checkpoint, tmp_path):
    """Without moe_layers / no_rope_layers / layer_types (or with Scout's empty
    ``no_rope_layers``), the pattern comes from interleave_moe_layer_step and
    no_rope_layer_interval as in transformers."""
    path, ref = checkpoint

    def strip(config):
        for key in ("moe_layers", "layer_types"):
            config.pop(key)
        config["no_rope_layers"] = []

    model, _ = mlx_zoo.load(edited_copy(path, tmp_path / "derived", strip))
    assert rel_err(mlx_logits(model, prompt()), ref) < TOLERANCE


def test_save_and_reload(loaded, tmp_path):
    """A checkpoint saved by mlx_zoo.save (experts already split) loads again: sanitize is
    idempotent."""
    model, config, ours = loaded
    saved = mlx_zoo.save(model, config, tmp_path / "saved")
    again, _ = mlx_zoo.load(saved)
    assert rel_err(mlx_logits(again, prompt()), ours) < ROUNDING
    # transformers reads the written config back (it type-checks floor_scale as an integer)
    written = transformers.AutoConfig.from_pretrained(saved)
    assert written.floor_scale == 4 and type(written.floor_scale) is int


def test_per_expert_tensors_load(checkpoint, loaded, tmp_path):
    """Unfused exports (one ``experts.<e>.<proj>.weight`` per expert) are stacked by sanitize."""
    path, _ = checkpoint
    _, _, ours = loaded
    out = tmp_path / "per_expert"
    shutil.copytree(path, out)
    weights = mx.load(str(path / "model.safetensors"))
    unfused = {}
    for name, value in weights.items():
        if name.endswith("experts.gate_up_proj"):
            prefix, inter = name.removesuffix(".gate_up_proj"), value.shape[-1] // 2
            for e in range(value.shape[0]):
                unfused[f"{prefix}.{e}.gate_proj.weight"] = value[e, :, :inter].T
                unfused[f"{prefix}.{e}.up_proj.weight"] = value[e, :, inter:].T
        elif name.endswith("experts.down_proj"):
            for e in range(value.shape[0]):
                unfused[f"{name.removesuffix('.down_proj')}.{e}.down_proj.weight"] = value[e].T
        else:
            unfused[name] = value
    mx.save_safetensors(str(out / "model.safetensors"), unfused, metadata={"format": "pt"})
    model, _ = mlx_zoo.load(out)
    assert rel_err(mlx_logits(model, prompt()), ours) < ROUNDING


def test_quantized_4bit(loaded, tmp_path):
    model, config, ours = loaded
    # as stored: load's auto-dense default would dequantize the 4-bit reload on a Linux CPU
    quantized, qconfig = mlx_zoo.load(mlx_zoo.save(model, config, tmp_path / "float"),
                                       dequantize=False, fuse=False)
    entry = mlx_zoo.quantize(quantized, qconfig, bits=4, group_size=32)
    assert all(entry[f"model.layers.{i}.feed_forward.router"] is False
               for i, layer in enumerate(quantized.layers) if layer.is_moe)
    in_memory = mlx_logits(quantized, prompt())
    reloaded, _ = mlx_zoo.load(mlx_zoo.save(quantized, qconfig, tmp_path / "q4"),
                               dequantize=False, fuse=False)
    logits = mlx_logits(reloaded, prompt())
    assert np.isfinite(logits).all()
    assert rel_err(logits, in_memory) < 1e-6
    assert isinstance(reloaded.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    moe = next(layer.feed_forward for layer in reloaded.layers if layer.is_moe)
    assert isinstance(moe.router, nn.Linear) and not isinstance(moe.router, nn.QuantizedLinear)
    assert "scales" in moe.experts.gate_proj
    assert rel_err(logits, ours) > 0  # rounded (sharp random weights amplify 4-bit noise)
    steps = decode_steps(PROMPT, prefill=13, chunk=5)
    assert rel_err(incremental_logits(reloaded, prompt(), steps), logits) < TOLERANCE


# -- the published (llama4) layout ---------------------------------------------------------------


@pytest.fixture(scope="module")
def multimodal_checkpoint(tmp_path_factory):
    """A Llama4ForConditionalGeneration checkpoint with a tiny vision tower: nested
    ``text_config``, ``language_model.``-prefixed text weights next to vision/projector ones."""
    config = transformers.Llama4Config(
        text_config={**TEXT, **VARIANTS["maverick"]}, vision_config=VISION,
        image_token_index=VOCAB - 3, boi_token_index=VOCAB - 2, eoi_token_index=VOCAB - 1)
    config.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.Llama4ForConditionalGeneration(config).eval()
    sharpen(model)
    path = tmp_path_factory.mktemp("llama4_multimodal")
    model.save_pretrained(path)
    return path, torch_logits(model, prompt(1))


def test_multimodal_checkpoint_loads_text_model(multimodal_checkpoint):
    path, ref = multimodal_checkpoint
    names = mx.load(str(path / "model.safetensors")).keys()
    assert any(n.startswith("vision_model.") for n in names)
    assert any(n.startswith("multi_modal_projector.") for n in names)
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama4"
    model, config = mlx_zoo.load(path)
    assert config.model_type == "llama4" and config.num_experts_per_tok == 2
    assert rel_err(mlx_logits(model, prompt(1)), ref) < TOLERANCE


def test_multimodal_checkpoint_save_keeps_nested_config(multimodal_checkpoint, tmp_path):
    path, ref = multimodal_checkpoint
    model, config = mlx_zoo.load(path)
    saved = mlx_zoo.save(model, config, tmp_path / "saved")
    written = json.loads((saved / "config.json").read_text())
    assert written["model_type"] == "llama4"
    assert written["text_config"]["num_local_experts"] == VARIANTS["maverick"]["num_local_experts"]
    again, _ = mlx_zoo.load(saved)
    assert rel_err(mlx_logits(again, prompt(1)), ref) < TOLERANCE


# -- config errors, installation, the shared expert layer ----------------------------------------


@pytest.mark.parametrize("key,value", [
    ("hidden_act", "gelu"),
    ("no_rope_layers", [1, 0]),
    ("num_experts_per_tok", 9),
    ("layer_types", ["sliding_attention"] * 4),
])
def test_bad_config_is_named(checkpoint, tmp_path, key, value):
    path, _ = checkpoint
    bad = edited_copy(path, tmp_path / "bad", lambda c: c.update({key: value}))
    with pytest.raises(mlx_zoo.ConfigError, match=rf"config\.json, key '{key}'"):
        mlx_zoo.load(bad)


def test_plugin_registers_both_model_types():
    cli = Path(sys.executable).parent / "mlx-zoo"
    listing = subprocess.run([str(cli), "list"], capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:] if line.strip()}
    for model_type in ("llama4", "llama4_text"):
        assert rows[model_type][1] == "mlx-llama4" and rows[model_type][-1] == "ok"


@pytest.mark.parametrize("tokens", [5, 40], ids=["gathered", "sorted"])
def test_switch_glu_input_scale(tokens):
    """SwitchGLU's ``input_scale`` (used by Llama 4's routing) equals a loop over experts, on
    both the plain and the sorted (many tokens) path of the gathered matmul."""
    mx.random.seed(0)
    experts, top_k, dim, hidden = 5, 2, 8, 12
    layer = mlx_zoo.SwitchGLU(dim, hidden, experts)
    x = mx.random.normal((1, tokens, dim))
    indices = mx.argsort(mx.random.normal((1, tokens, experts)), axis=-1)[..., :top_k]
    scale = mx.random.uniform(shape=(1, tokens, top_k))
    out = layer(x, indices, input_scale=scale)
    assert out.shape == (1, tokens, top_k, dim)

    def expert(e, v):
        gate, up = v @ layer.gate_proj.weight[e].T, v @ layer.up_proj.weight[e].T
        return (mx.sigmoid(gate) * gate * up) @ layer.down_proj.weight[e].T

    expected = mx.stack([mx.stack([expert(int(indices[0, t, k]), x[0, t] * scale[0, t, k])
                                   for k in range(top_k)]) for t in range(tokens)])[None]
    assert rel_err(out, expected) < 1e-5


def test_chunk_mask_uses_causal_kernel_within_one_chunk():
    """Inside one chunk the chunked mask is plain causal (the fast kernel); across, an array."""
    cache = mlx_zoo.ChunkedKVCache(CHUNK)
    assert cache.make_mask(CHUNK) == "causal"
    assert isinstance(cache.make_mask(CHUNK + 1), mx.array)
    cache.update_and_fetch(*(2 * [mx.zeros((1, 1, CHUNK + 3, 4))]))
    assert cache.make_mask(CHUNK - 3) == "causal"
    assert isinstance(cache.make_mask(CHUNK - 2), mx.array)


def test_bad_nested_config_names_text_config_key(multimodal_checkpoint, tmp_path):
    path, _ = multimodal_checkpoint
    bad = edited_copy(path, tmp_path / "bad", lambda c: c["text_config"].update(hidden_act="gelu"))
    with pytest.raises(mlx_zoo.ConfigError, match=r"config\.json, key 'text_config\.hidden_act': "
                       r"unsupported activation 'gelu'"):
        mlx_zoo.load(bad)
    bad = edited_copy(path, tmp_path / "bad2", lambda c: c["text_config"].update(hidden_size="x"))
    with pytest.raises(mlx_zoo.ConfigError, match=r"key 'text_config\.hidden_size': expected int"):
        mlx_zoo.load(bad)


def test_no_chunked_layers_without_a_chunk_size(tmp_path):
    """``attention_chunk_size: null`` means global attention on every layer (ModelArgs): the
    model runs with and without caches and decodes incrementally as it runs whole (it used to
    build a ChunkedKVCache(None) for the mask and fail with a TypeError)."""
    from mlx_zoo.demos import demo_dir

    model_dir = edited_copy(demo_dir("llama4"), tmp_path / "global",
                            lambda c: c.update(attention_chunk_size=None))
    model, _ = mlx_zoo.load(model_dir, fuse=False)
    ids = [[3, 17, 42, 7, 9]]
    full = model(mx.array(ids))
    cache = mlx_zoo.make_prompt_cache(model)
    assert all(type(c) is mlx_zoo.KVCache for c in cache)
    model(mx.array([ids[0][:-1]]), cache=cache)
    last = model(mx.array([ids[0][-1:]]), cache=cache)
    assert bool(mx.all(mx.isfinite(full)).item())
    assert mx.abs(full[:, -1] - last[:, -1]).max().item() < 1e-5
