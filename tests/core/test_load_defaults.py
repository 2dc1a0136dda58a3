"""``mlx_zoo.load``'s defaults: the fastest correct settings for the machine (fused projections;
dense float32 only where MLX's Linux CPU backend has a fast BLAS actually serving it, and it
fits), each with an opt-out that loads the checkpoint as stored; and the dense-float32 load path
itself (``dequantize``, the memory policy, the size estimate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

import mlx_zoo
from mlx_zoo import blas, loading
from mlx_zoo.layers import QuantizedSwitchLinear, SwitchLinear
from mlx_zoo.testing import relative_error as rel_err
from mlx_zoo.weights import dequantize_model

LINUX = sys.platform.startswith("linux")

QWEN2 = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2,
         "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
         "vocab_size": 128, "rope_theta": 10000.0, "tie_word_embeddings": False}


def installed(model_type: str) -> bool:
    return any(r.model_type == model_type for r in mlx_zoo.list_plugins())


needs_qwen2 = pytest.mark.skipif(not installed("qwen2"), reason="needs the mlx-qwen2 plugin")


@pytest.fixture
def bf16_qwen2(tmp_path) -> Path:
    """A random Qwen2-shaped checkpoint stored in bfloat16."""
    arch = mlx_zoo.registry.resolve("qwen2")
    mx.random.seed(0)
    model = arch.model_class(arch.config_class.from_dict(dict(QWEN2), tmp_path / "config.json"))
    model.set_dtype(mx.bfloat16)
    return mlx_zoo.save(model, dict(QWEN2), tmp_path / "qwen2-bf16")


def _policy(monkeypatch, fast: bool, fits: bool = True) -> None:
    monkeypatch.setattr(loading, "prefers_dense_float32", lambda: fast)
    monkeypatch.setattr(loading, "fits_in_memory", lambda nbytes: fits)


IDS = mx.array([[3, 1, 4, 1, 5, 9, 2, 6]])


@needs_qwen2
@pytest.mark.parametrize("fast", [True, False])
def test_defaults_fuse_and_follow_the_fast_path(bf16_qwen2, monkeypatch, fast):
    _policy(monkeypatch, fast)
    model, _ = mlx_zoo.load(bf16_qwen2)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert "qkv_proj" in attn and "q_proj" not in attn and "gate_up_proj" in mlp
    assert model.model.embed_tokens.weight.dtype == (mx.float32 if fast else mx.bfloat16)
    # The same numbers as the explicit settings they stand for.
    explicit, _ = mlx_zoo.load(bf16_qwen2, dtype="float32" if fast else None,
                               dequantize=fast, fuse=True)
    assert mx.array_equal(model(IDS), explicit(IDS)).item()


@needs_qwen2
def test_opt_outs_load_the_checkpoint_as_stored(bf16_qwen2, monkeypatch):
    _policy(monkeypatch, True)
    model, _ = mlx_zoo.load(bf16_qwen2, dtype=None, dequantize=False, fuse=False)
    attn = model.model.layers[0].self_attn
    assert "q_proj" in attn and "qkv_proj" not in attn and "gate_proj" in model.model.layers[0].mlp
    assert {a.dtype for _, a in tree_flatten(model.parameters())} == {mx.bfloat16}
    fused, _ = mlx_zoo.load(bf16_qwen2, dtype=None)
    assert rel_err(fused(IDS).astype(mx.float32), model(IDS).astype(mx.float32)) < 2e-2  # bf16


DEFAULT_DTYPE = ("import sys, mlx_zoo; m, _ = mlx_zoo.load(sys.argv[1]); "
                 "print(m.model.embed_tokens.weight.dtype, mlx_zoo.blas.blas_status().fast)")


def default_dtype(path: Path, prelude: str = "", **env: str) -> list[str]:
    """The dtype ``load(path)`` picks, and whether the fast BLAS serves, in a fresh process."""
    environ = {k: v for k, v in os.environ.items() if k not in (blas.BLAS_ENV, blas.SHIM_ENV)}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", prelude + DEFAULT_DTYPE,
                          str(path)], capture_output=True, text=True, timeout=120,
                         env={**environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@needs_qwen2
@pytest.mark.skipif(not LINUX, reason="the fast path is Linux's")
def test_float32_only_where_the_fast_blas_serves(bf16_qwen2):
    status = default_dtype(bf16_qwen2)
    if status[1] == "True":  # imported first, OpenBLAS serving: dense float32
        assert status[0] == "mlx.core.float32"
    else:
        assert status[0] == "mlx.core.bfloat16"
    # Too late (mlx.core first, without the installed core's start-up hook) or opted out: MLX's
    # reference BLAS, so the stored dtype.
    stored = ["mlx.core.bfloat16", "False"]
    assert default_dtype(bf16_qwen2, "import mlx.core; ", MLX_ZOO_BLAS_HOOK="0") == stored
    assert default_dtype(bf16_qwen2, **{blas.BLAS_ENV: "reference"}) == stored


# -- dense float32 loading ------------------------------------------------------------------

HIDDEN, VOCAB, GROUP = 64, 96, 32


@pytest.fixture
def quantized_checkpoint(tmp_path, testplugin) -> Path:
    """A zoo_tiny checkpoint saved 4-bit by mlx_zoo.quantize/save."""
    src = tmp_path / "dense"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "zoo_tiny", "vocab_size": VOCAB,
                                                 "hidden_size": HIDDEN}))
    mx.random.seed(1)
    mx.save_safetensors(str(src / "model.safetensors"), {
        "embed.weight": mx.random.normal((VOCAB, HIDDEN)),
        "qkv.weight": mx.random.normal((3 * HIDDEN, HIDDEN)) * 0.3,
        "out.weight": mx.random.normal((VOCAB, HIDDEN)) * 0.3})
    model, config = mlx_zoo.load(src)
    mlx_zoo.quantize(model, config, bits=4, group_size=GROUP)
    return mlx_zoo.save(model, config, tmp_path / "q4")


def logits(model) -> mx.array:
    return model(mx.array([[3, 1, 4, 1, 5, 9, 2, 6]]))


def quantized_layers(model) -> list[str]:
    return [p for p, m in model.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]


def test_fits_in_memory(monkeypatch):
    monkeypatch.setattr(loading, "available_memory", lambda: 1000)
    assert loading.fits_in_memory(600) and not loading.fits_in_memory(601)
    monkeypatch.setattr(loading, "available_memory", lambda: None)
    assert not loading.fits_in_memory(1)


def test_dense_float32_needs_the_fast_blas(monkeypatch):
    class Status:
        fast = False

    monkeypatch.setattr(blas, "blas_status", lambda: Status)
    assert not loading.prefers_dense_float32()
    Status.fast = True
    assert loading.prefers_dense_float32() is loading.is_linux_cpu()


def test_dequantized_load_is_dense_and_computes_the_same(quantized_checkpoint, tmp_path):
    quantized, _ = mlx_zoo.load(quantized_checkpoint, dequantize=False)
    assert len(quantized_layers(quantized)) == 3
    dense, config = mlx_zoo.load(quantized_checkpoint, dequantize=True, dtype="float32")
    assert quantized_layers(dense) == []
    assert dense.qkv.weight.dtype == mx.float32 and dense.qkv.weight.shape == (3 * HIDDEN, HIDDEN)
    assert rel_err(logits(dense), logits(quantized)) < 1e-5
    # Saved again, it is a dense checkpoint (no stale "quantization" entry).
    mlx_zoo.save(dense, config, tmp_path / "dense-again")
    assert "quantization" not in json.loads((tmp_path / "dense-again/config.json").read_text())
    again, _ = mlx_zoo.load(tmp_path / "dense-again", dtype=None)
    assert quantized_layers(again) == [] and rel_err(logits(again), logits(quantized)) < 1e-5


def test_dense_nbytes_estimates_the_float32_model(quantized_checkpoint):
    dense, _ = mlx_zoo.load(quantized_checkpoint, dequantize=True, dtype="float32")
    actual = sum(a.nbytes for _, a in tree_flatten(dense.parameters()))
    assert loading.dense_nbytes(quantized_checkpoint, bits=4) == actual


@pytest.mark.parametrize("fast, fits, dense", [(True, True, True), (True, False, False),
                                               (False, True, False)])
def test_auto_policy(quantized_checkpoint, monkeypatch, fast, fits, dense):
    _policy(monkeypatch, fast, fits)
    model, _ = mlx_zoo.load(quantized_checkpoint, dequantize="auto", dtype="auto")
    assert quantized_layers(model) == quantized_layers(mlx_zoo.load(quantized_checkpoint)[0])
    assert (quantized_layers(model) == []) is dense
    if dense:
        assert model.out.weight.dtype == mx.float32


def test_bad_dequantize_value(quantized_checkpoint):
    with pytest.raises(ValueError, match="dequantize"):
        mlx_zoo.load(quantized_checkpoint, dequantize="yes")


def test_switch_linear_dequantizes():
    mx.random.seed(2)
    layer = SwitchLinear(64, 32, num_experts=4)
    q = QuantizedSwitchLinear.from_switch_linear(layer, group_size=32, bits=8)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = q

    holder = Holder()
    assert dequantize_model(holder, mx.float32) == 1
    assert isinstance(holder.experts, SwitchLinear)
    x, idx = mx.random.normal((5, 1, 1, 64)), mx.array([[0], [3], [1], [2], [3]])
    assert rel_err(holder.experts(x, idx), q(x, idx)) < 1e-5


def test_biased_layers_dequantize_without_a_dtype():
    """``dtype=None`` (``load(dequantize=True)`` alone): the bias follows the scales' dtype, as
    the weight does (a biased layer -- Qwen2's q/k/v -- used to raise)."""
    mx.random.seed(3)
    linear = nn.Linear(64, 16, bias=True)
    linear.set_dtype(mx.bfloat16)
    switch = SwitchLinear(64, 16, num_experts=2, bias=True)
    switch.set_dtype(mx.bfloat16)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.QuantizedLinear.from_linear(linear, 32, 8)
            self.experts = QuantizedSwitchLinear.from_switch_linear(switch, 32, 8)

    holder = Holder()
    assert dequantize_model(holder) == 2
    for layer in (holder.linear, holder.experts):
        assert layer.weight.dtype == layer.bias.dtype == mx.bfloat16
