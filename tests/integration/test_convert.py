"""``mlx-zoo convert`` (mlx_zoo.convert): interop with mlx-lm both ways for every demo plugin and
every quantization mode MLX runs on this machine, mixed-bit recipes, dequantization, the files
written beside the weights, and the refusals -- each before anything is written.

Interop is measured as everywhere in the suite: ``max |a - b| / max |b|`` of float32 logits
below 1e-4 (mlx_zoo.testing.TOLERANCE)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlx_zoo
from mlx_zoo import MlxZooError
from mlx_zoo.convert import (
    QUANT_MODE_LIMITS,
    QUANT_RECIPES,
    ConvertError,
    add_arguments,
    convert,
    mixed_recipe,
    run,
)
from mlx_zoo.testing import TOLERANCE
from mlx_zoo.testing import logits as mlx_logits
from mlx_zoo.testing import relative_error as rel_err

IDS = np.array([[1, 5, 7, 9, 200, 3, 17, 42, 99, 7, 5, 300] * 4])  # 48 tokens: past llama4's chunk

MODES = {  # name -> convert() keyword arguments
    "affine4": dict(quantize=True),
    "affine8": dict(quantize=True, q_bits=8, q_group_size=32),
    "mxfp4": dict(quantize=True, q_mode="mxfp4"),
    "nvfp4": dict(quantize=True, q_mode="nvfp4"),
    "mxfp8": dict(quantize=True, q_mode="mxfp8"),
    "mixed_3_6": dict(quantize=True, quant_predicate="mixed_3_6"),
    "float16": dict(dtype="float16"),
}
MLX_LM_MODES = {  # the same conversions through mlx-lm's convert()
    "affine4": dict(quantize=True),
    "affine8": dict(quantize=True, q_bits=8, q_group_size=32),
    "mxfp4": dict(quantize=True, q_mode="mxfp4"),
    "nvfp4": dict(quantize=True, q_mode="nvfp4"),
    "mxfp8": dict(quantize=True, q_mode="mxfp8"),
    "mixed_3_6": dict(quantize=True, quant_predicate="mixed_3_6", q_group_size=64),
    "float16": dict(dtype="float16"),
}
LLAMA4_MLX_LM = ("mlx-lm 0.32.2's llama4_text is a dense architecture (no experts), and its "
                 "llama4 reads only the published layout's 'language_model.' names, which "
                 "mlx-zoo's checkpoints (mlx_zoo.save and convert alike) do not carry")


def _runs_on_this_machine(mode: str) -> str | None:
    """Why ``mode`` cannot run here (quantize and quantized_matmul), or None."""
    bits, groups, default_bits, default_group = QUANT_MODE_LIMITS[mode]
    try:
        w = mx.random.normal((32, 64))
        q = mx.quantize(w, group_size=default_group, bits=default_bits, mode=mode)
        biases = q[2] if len(q) > 2 else None
        mx.eval(mx.quantized_matmul(mx.ones((2, 64)), q[0], q[1], biases, transpose=True,
                                    group_size=default_group, bits=default_bits, mode=mode))
    except Exception as e:  # noqa: BLE001 -- whatever MLX raises means: not here
        return f"MLX cannot run {mode} on this device: {e}"
    return None


def _skip_unsupported(kwargs: dict) -> None:
    reason = _runs_on_this_machine(kwargs.get("q_mode", "affine"))
    if reason:
        pytest.skip(reason)


def as_stored(path, **kwargs):
    """mlx-zoo's model on ``path`` as the checkpoint stores it (no load-time policy)."""
    options = dict(dtype=None, dequantize=False, fuse=False)
    return mlx_zoo.load(path, **{**options, **kwargs})


def zoo_logits(path) -> np.ndarray:
    """Logits of mlx-zoo's model on ``path``, computed in float32 (half-precision weights and
    scales cast up, so that the comparison measures the checkpoint, not rounding)."""
    model, _ = as_stored(path, dtype="float32")
    return mlx_logits(model, IDS)


def mlx_lm_logits(path) -> np.ndarray:
    """Logits of mlx-lm's model on ``path``, in float32 likewise."""
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(path))
    model.set_dtype(mx.float32)
    return mlx_logits(model, IDS)


@pytest.fixture(scope="module")
def llama4_published(tmp_path_factory) -> Path:
    """The llama4 demo in the published (``llama4``) layout that mlx-lm's llama4 reads:
    nested text_config, ``language_model.`` names, an untied head; NoPE every 4th layer, the
    one interval mlx-lm implements."""
    src = mlx_zoo.resolve_model_dir("demo:llama4")
    path = tmp_path_factory.mktemp("llama4_published")
    text = json.loads((src / "config.json").read_text())
    text.pop("architectures")
    text.update(model_type="llama4_text", tie_word_embeddings=False, no_rope_layer_interval=4)
    config = {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
              "text_config": text}
    (path / "config.json").write_text(json.dumps(config))
    weights = mx.load(str(src / "model.safetensors"))
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    mx.save_safetensors(str(path / "model.safetensors"),
                        {f"language_model.{k}": v for k, v in weights.items()})
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(src / name, path / name)
    return path


def source(name: str, request) -> str:
    return str(request.getfixturevalue("llama4_published")) if name == "llama4" else f"demo:{name}"


# -- MLX's modes -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(QUANT_MODE_LIMITS))
def test_mode_table_is_what_mx_quantize_accepts(mode):
    bits, groups, *_ = QUANT_MODE_LIMITS[mode]
    w = mx.random.normal((8, 128))
    for b in bits:
        for g in groups:
            mx.eval(mx.quantize(w, group_size=g, bits=b, mode=mode))
    for b, g in [(max(bits) + 1, groups[0]), (bits[0], 16 if 16 not in groups else 48)]:
        if b == 7 and mode == "affine":
            b = 9
        with pytest.raises((ValueError, RuntimeError)):
            mx.eval(mx.quantize(w, group_size=g, bits=b, mode=mode))


# -- interop with mlx-lm -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("demo", ["qwen2", "hunyuan", "llama4"])
def test_zoo_convert_loads_in_mlx_lm(demo, mode, tmp_path, request):
    kwargs = MODES[mode]
    _skip_unsupported(kwargs)
    out = convert(source(demo, request), tmp_path / "out", **kwargs)
    config = json.loads((out / "config.json").read_text())
    if kwargs.get("quantize"):
        assert config["quantization"]["mode"] == kwargs.get("q_mode", "affine")
        assert config["quantization_config"] == config["quantization"]
    ours = zoo_logits(out)
    if demo == "llama4":
        pytest.xfail(LLAMA4_MLX_LM)
    assert rel_err(mlx_lm_logits(out), ours) < TOLERANCE


@pytest.mark.parametrize("mode", list(MLX_LM_MODES))
@pytest.mark.parametrize("demo", ["qwen2", "hunyuan", "llama4"])
def test_mlx_lm_convert_loads_in_zoo(demo, mode, tmp_path, request):
    from mlx_lm import convert as mlx_lm_convert

    kwargs = MLX_LM_MODES[mode]
    _skip_unsupported(kwargs)
    # llama4 mixed recipes: mlx-lm keys per-layer entries by its own module paths
    # ('language_model.model.layers.1...'); the loader matches them by suffix to ours
    src = source(demo, request)
    mlx_lm_convert(hf_path=str(mlx_zoo.resolve_model_dir(src)), mlx_path=str(tmp_path / "lm"),
                   **kwargs)
    assert rel_err(zoo_logits(tmp_path / "lm"), mlx_lm_logits(tmp_path / "lm")) < TOLERANCE


def test_quantized_output_is_quantized_and_close_to_dense(tmp_path):
    out = convert("demo:qwen2", tmp_path / "q8", quantize=True, q_bits=8)
    model, _ = as_stored(out)
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.QuantizedLinear)
    assert model.model.layers[0].mlp.down_proj.bits == 8
    assert rel_err(zoo_logits(out), zoo_logits("demo:qwen2")) < 0.05


# -- mixed-bit recipes -------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", list(QUANT_RECIPES))
@pytest.mark.parametrize("demo", ["qwen2", "hunyuan"])
def test_recipe_decides_like_mlx_lm(demo, recipe):
    """Our recipe gives every layer the parameters mlx-lm's gives the same layer."""
    from mlx_lm.convert import mixed_quant_predicate_builder
    from mlx_lm.utils import load_model

    path = mlx_zoo.resolve_model_dir(f"demo:{demo}")
    theirs, _ = load_model(path, lazy=True)
    ours, _ = as_stored(path, lazy=True)
    decide_theirs = mixed_quant_predicate_builder(recipe, theirs, 64)
    decide_ours = mixed_recipe(recipe, ours, 64)
    expected = {p: decide_theirs(p, m) for p, m in theirs.named_modules()
                if hasattr(m, "to_quantized")}
    got = {p: decide_ours(p, m) for p, m in ours.named_modules() if hasattr(m, "to_quantized")}
    assert got == expected
    assert any(d["bits"] == QUANT_RECIPES[recipe][1] for d in got.values())


def test_recipe_on_24_layers_picks_mlx_lm_layers():
    """The layer rule on a deeper stack: first and last eighth, every third between."""
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [{"down_proj": nn.Linear(64, 64), "v_proj": nn.Linear(64, 64),
                            "up_proj": nn.Linear(64, 64)} for _ in range(24)]
            self.lm_head = nn.Linear(64, 64)

    decide = mixed_recipe("mixed_2_6", Stack(), 64)
    high = [i for i in range(24) if decide(f"layers.{i}.down_proj", None)["bits"] == 6]
    assert high == [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]
    assert high == [i for i in range(24) if decide(f"layers.{i}.v_proj", None)["bits"] == 6]
    assert all(decide(f"layers.{i}.up_proj", None)["bits"] == 2 for i in range(24))
    assert decide("lm_head", None)["bits"] == 6


def test_plugin_predicate_is_honoured_with_a_recipe(tmp_path, llama4_published):
    """llama4 keeps its routers dense, recipe or not."""
    out = convert(llama4_published, tmp_path / "mixed", quantize=True,
                  quant_predicate="mixed_2_6")
    quantization = json.loads((out / "config.json").read_text())["quantization"]
    routers = [k for k in quantization if k.endswith("feed_forward.router")]
    assert routers and all(quantization[k] is False for k in routers)
    model, _ = as_stored(out)
    assert type(model.model.layers[1].feed_forward.router) is nn.Linear
    assert model.model.layers[3].self_attn.v_proj.bits == 6
    assert model.model.layers[0].self_attn.v_proj.bits == 2


# -- dequantize, dtype, shards, files ----------------------------------------------------------


@pytest.mark.parametrize("demo", ["qwen2", "hunyuan", "llama4"])
def test_dequantize_round_trip(demo, tmp_path, request):
    quantized = convert(source(demo, request), tmp_path / "q", quantize=True)
    dense = convert(quantized, tmp_path / "d", dequantize=True)
    config = json.loads((dense / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    names = mx.load(str(dense / "model.safetensors"))
    assert not any(k.endswith((".scales", ".biases")) for k in names)
    assert rel_err(zoo_logits(dense), zoo_logits(quantized)) < TOLERANCE
    if demo != "llama4":
        assert rel_err(mlx_lm_logits(dense), zoo_logits(quantized)) < TOLERANCE


def test_dtype_casts_every_float_tensor(tmp_path):
    out = convert("demo:hunyuan", tmp_path / "bf16", dtype="bfloat16")
    assert {v.dtype for v in mx.load(str(out / "model.safetensors")).values()} == {mx.bfloat16}


def test_small_shards_write_an_index_both_load(tmp_path):
    out = convert("demo:qwen2", tmp_path / "sharded", quantize=True, max_shard_size=0.0002)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(p.name for p in out.glob("*.safetensors")) == files
    stored = {k: v for f in files for k, v in mx.load(str(out / f)).items()}
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in stored.values())
    assert set(index["weight_map"]) == set(stored)
    assert rel_err(mlx_lm_logits(out), zoo_logits(out)) < TOLERANCE


def test_support_files_copied_code_not(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(mlx_zoo.resolve_model_dir("demo:qwen2"), src)
    (src / "modeling_evil.py").write_text("raise SystemExit('ran')\n")
    (src / "chat_template.jinja").write_text("{{ messages }}")
    (src / "pytorch_model.bin").write_bytes(b"\0" * 8)
    (src / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- chat\n---\n# Source\n")
    out = convert(src, tmp_path / "out", quantize=True)
    names = {p.name for p in out.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "chat_template.jinja", "README.md", "config.json", "model.safetensors"} == names
    tokenizer = mlx_zoo.load_tokenizer(out)
    assert tokenizer.encode("hello") == mlx_zoo.load_tokenizer("demo:qwen2").encode("hello")
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: mlx" in front and "license: apache-2.0" in front
    assert "- chat" in front and "- mlx" in front
    assert "mlx_zoo.load(" in card and "mlx-zoo convert --hf-path" in card


def test_card_names_a_hub_repo_as_base_model(tmp_path, monkeypatch):
    import mlx_zoo.loading
    import mlx_zoo.sources

    demo = mlx_zoo.resolve_model_dir("demo:qwen2")
    monkeypatch.setattr(mlx_zoo.sources, "resolve_model_dir", lambda p, r=None: demo)
    monkeypatch.setattr(mlx_zoo.loading, "resolve_model_dir", lambda p, r=None: demo)
    monkeypatch.setattr(mlx_zoo, "resolve_model_dir", lambda p, r=None: demo)
    out = convert("Qwen/Qwen2.5-0.5B", tmp_path / "out", dtype="float16")
    card = (out / "README.md").read_text()
    assert "base_model: Qwen/Qwen2.5-0.5B" in card
    assert "https://huggingface.co/Qwen/Qwen2.5-0.5B" in card


# -- refusals: nothing written -----------------------------------------------------------------


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_existing_folder_refused_and_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ConvertError, match="--force") as e:
        convert("demo:qwen2", target, quantize=True)
    assert "--mlx-path" in str(e.value) and str(target) in str(e.value)
    assert leftovers(tmp_path) == ["out"] and leftovers(target) == ["keep.txt"]


def test_force_replaces_whole_folder(tmp_path):
    target = tmp_path / "out"
    convert("demo:qwen2", target, quantize=True, max_shard_size=0.0002)
    (target / "stale.txt").write_text("old")
    convert("demo:qwen2", target, quantize=True, q_bits=8, force=True)
    assert leftovers(tmp_path) == ["out"]
    assert "stale.txt" not in leftovers(target)
    assert not (target / "model.safetensors.index.json").exists()
    assert json.loads((target / "config.json").read_text())["quantization"]["bits"] == 8


@pytest.mark.parametrize("kwargs,flag", [
    (dict(quantize=True, q_mode="int4"), "--q-mode"),
    (dict(quantize=True, q_bits=7), "--q-bits"),
    (dict(quantize=True, q_mode="mxfp4", q_bits=8), "--q-bits"),
    (dict(quantize=True, q_mode="nvfp4", q_group_size=32), "--q-group-size"),
    (dict(quantize=True, q_group_size=48), "--q-group-size"),
    (dict(quantize=True, quant_predicate="mixed_5_8"), "--quant-predicate"),
    (dict(quantize=True, q_mode="mxfp4", quant_predicate="mixed_3_6"), "--quant-predicate"),
    (dict(quantize=True, dequantize=True), "-d/--dequantize"),
    (dict(dtype="int8"), "--dtype"),
    (dict(dtype="float64"), "--dtype"),
    (dict(q_bits=4), "--q-bits"),
    (dict(quantize=True, max_shard_size=0), "--max-shard-size"),
])
def test_bad_options_refused_before_writing(tmp_path, kwargs, flag):
    with pytest.raises(ConvertError) as e:
        convert("demo:qwen2", tmp_path / "out", **kwargs)
    assert flag in str(e.value)
    assert isinstance(e.value, MlxZooError)
    assert leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def odd_width(tmp_path_factory) -> Path:
    """A qwen2 of hidden size 96: group size 64 divides none of its layers' inputs."""
    from mlx_zoo import registry

    arch = registry.resolve("qwen2")
    raw = {"model_type": "qwen2", "hidden_size": 96, "intermediate_size": 192,
           "num_attention_heads": 3, "num_key_value_heads": 1, "num_hidden_layers": 2,
           "vocab_size": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "tie_word_embeddings": True, "max_position_embeddings": 128}
    config = arch.config_class.from_dict(raw, "config.json")
    model = arch.model_class(config)
    return mlx_zoo.save(model, config, tmp_path_factory.mktemp("odd") / "ckpt")


def test_group_size_not_dividing_refused(tmp_path, odd_width):
    with pytest.raises(ConvertError, match="--q-group-size") as e:
        convert(odd_width, tmp_path / "out", quantize=True, q_group_size=64)
    assert "input size 96" in str(e.value)
    assert leftovers(tmp_path) == []
    convert(odd_width, tmp_path / "ok", quantize=True, q_group_size=32)  # 32 divides 96, 192


def test_nothing_quantizable_refused(tmp_path, monkeypatch):
    from mlx_zoo import registry

    cls = registry.resolve("qwen2").model_class
    monkeypatch.setattr(cls, "quantize_predicate", lambda self, path, module: False,
                        raising=False)
    with pytest.raises(ConvertError, match="no layer .* can be quantized"):
        convert("demo:qwen2", tmp_path / "out", quantize=True)
    assert leftovers(tmp_path) == []


def test_quantizing_a_quantized_checkpoint_refused(tmp_path):
    quantized = convert("demo:qwen2", tmp_path / "q", quantize=True)
    with pytest.raises(ConvertError, match="already quantized"):
        convert(quantized, tmp_path / "qq", quantize=True)
    assert leftovers(tmp_path) == ["q"]


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import mlx_zoo.convert as module

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "copy_support_files", broken)
    with pytest.raises(ConvertError, match="No space left"):
        convert("demo:qwen2", tmp_path / "out", quantize=True)
    assert leftovers(tmp_path) == []


# -- the command -------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mlx-zoo convert")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_run_converts(tmp_path, capsys):
    out = tmp_path / "cli"
    args = parse("--hf-path", "demo:hunyuan", "--mlx-path", str(out), "-q", "--q-bits", "8",
                 "--q-group-size", "32", "--dtype", "float16")
    assert run(args) == 0
    assert str(out) in capsys.readouterr().out
    quantization = json.loads((out / "config.json").read_text())["quantization"]
    assert (quantization["bits"], quantization["group_size"]) == (8, 32)
    assert rel_err(mlx_lm_logits(out), zoo_logits(out)) < TOLERANCE


def test_cli_mlx_lm_flag_names():
    args = parse("--model", "x", "-q", "--q-mode", "mxfp4", "--quant-predicate", "mixed_4_6",
                 "-d", "--force", "--max-shard-size", "2")
    assert (args.hf_path, args.quantize, args.q_mode, args.quant_predicate, args.dequantize,
            args.force, args.max_shard_size) == ("x", True, "mxfp4", "mixed_4_6", True, True, 2.0)


def test_cli_errors_are_mlx_zoo_errors(tmp_path):
    """cli.main maps MlxZooError to exit code 2: run() raises one for bad input."""
    args = parse("--hf-path", "demo:qwen2", "--mlx-path", str(tmp_path / "o"), "-q",
                 "--q-mode", "nvfp4", "--q-bits", "8")
    with pytest.raises(MlxZooError, match="--q-bits"):
        run(args)
    assert leftovers(tmp_path) == []
