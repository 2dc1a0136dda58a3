"""Hostile checkpoints: safetensors headers whose tensors overlap or leave gaps, repeated JSON
keys, malformed metadata, dtypes MLX cannot hold or that do not fit the parameter, a
``quantization`` block that would crash MLX, and a config.json describing a far larger model
than its weights. Each is refused with an MlxZooError naming the file and key -- before the
model is built where the headers alone tell."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest

import mlx_zoo
from mlx_zoo import ConfigError, SafetensorsError
from mlx_zoo.demos import demo_dir
from mlx_zoo.errors import QuantizationError
from mlx_zoo.weights import read_safetensors_header

F32 = 4  # bytes per float32 value


def write_raw(path, header: dict | bytes, data: bytes) -> None:
    """A safetensors file with exactly this header (a dict, or raw JSON bytes) and data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def f32(shape, begin):
    count = int(np.prod(shape))
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, begin + count * F32]}


# -- tiling of the data area -------------------------------------------------------------------


def test_aliased_tensors_are_refused(tmp_path):
    """Two tensors on the same bytes: mx.load would hand out both, aliased."""
    f = tmp_path / "m.safetensors"
    write_raw(f, {"a": f32([2], 0), "b": f32([2], 0)}, bytes(8))
    with pytest.raises(SafetensorsError, match=r"m\.safetensors, tensor 'b': data_offsets "
                                               r"\[0, 8\] overlap tensor 'a'"):
        read_safetensors_header(f)


def test_partly_overlapping_tensors_are_refused(tmp_path):
    f = tmp_path / "m.safetensors"
    write_raw(f, {"a": f32([2], 0), "b": f32([2], 4)}, bytes(12))
    with pytest.raises(SafetensorsError, match="tensor 'b'.*overlap tensor 'a'"):
        read_safetensors_header(f)


def test_gap_in_data_area_is_refused(tmp_path):
    f = tmp_path / "m.safetensors"
    write_raw(f, {"a": f32([2], 4)}, bytes(12))
    with pytest.raises(SafetensorsError, match=r"tensor 'a'.*leave bytes 0\.\.4 .* unused"):
        read_safetensors_header(f)


def test_trailing_bytes_are_refused(tmp_path):
    f = tmp_path / "m.safetensors"
    write_raw(f, {"a": f32([2], 0)}, bytes(12))
    with pytest.raises(SafetensorsError, match="cover 8 bytes of data, but the file holds 12"):
        read_safetensors_header(f)


def test_tiling_accepts_what_the_safetensors_library_accepts(tmp_path):
    """Zero-size tensors (sharing an offset) and tensors stored out of name order are valid;
    the reference library reads the same file."""
    from safetensors.numpy import load_file

    f = tmp_path / "m.safetensors"
    header = {"z": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
              "a": f32([2], 8), "b": f32([2], 0),
              "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [16, 16]}}
    write_raw(f, header, np.arange(4, dtype=np.float32).tobytes())
    assert set(read_safetensors_header(f)) == {"z", "a", "b", "e"}
    assert load_file(f)["a"].tolist() == [2.0, 3.0]
    assert mx.load(str(f))["a"].tolist() == [2.0, 3.0]


def test_files_mlx_writes_pass(tmp_path):
    f = tmp_path / "m.safetensors"
    mx.save_safetensors(str(f), {"a": mx.ones((3,), dtype=mx.float16), "b": mx.ones((5,)),
                                 "c": mx.zeros((0,)), "d": mx.ones((2, 2), dtype=mx.uint8)},
                        metadata={"format": "mlx"})
    assert set(read_safetensors_header(f)) == {"a", "b", "c", "d"}


# -- JSON: repeated keys, metadata, odd values ------------------------------------------------


def test_repeated_header_key_is_refused(tmp_path):
    """json (and mx.load) would keep the last of two entries silently."""
    f = tmp_path / "m.safetensors"
    header = (b'{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
              b'"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}')
    write_raw(f, header, bytes(8))
    with pytest.raises(SafetensorsError, match=r"m\.safetensors: header repeats the key 'x'"):
        read_safetensors_header(f)


def test_repeated_key_inside_an_entry_is_refused(tmp_path):
    f = tmp_path / "m.safetensors"
    header = b'{"x": {"dtype": "F32", "dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}'
    write_raw(f, header, bytes(8))
    with pytest.raises(SafetensorsError, match="repeats the key 'dtype'"):
        read_safetensors_header(f)


def test_repeated_key_in_index_is_refused(tiny_checkpoint):
    weights = mx.load(str(tiny_checkpoint / "model.safetensors"))
    (tiny_checkpoint / "model.safetensors").unlink()
    mx.save_safetensors(str(tiny_checkpoint / "a.safetensors"), weights)
    mx.save_safetensors(str(tiny_checkpoint / "b.safetensors"), weights)
    entries = [f'"{k}": "a.safetensors"' for k in weights] + ['"embed.weight": "b.safetensors"']
    (tiny_checkpoint / "model.safetensors.index.json").write_text(
        '{"weight_map": {' + ", ".join(entries) + "}}")
    with pytest.raises(SafetensorsError, match=r"index\.json: index repeats the key "
                                               r"'embed\.weight'"):
        mlx_zoo.load(tiny_checkpoint)


def test_tensor_in_two_shards_is_refused(tiny_checkpoint):
    weights = mx.load(str(tiny_checkpoint / "model.safetensors"))
    (tiny_checkpoint / "model.safetensors").unlink()
    mx.save_safetensors(str(tiny_checkpoint / "a.safetensors"), weights)
    mx.save_safetensors(str(tiny_checkpoint / "b.safetensors"), {"embed.weight": mx.zeros((1,))})
    index = {"weight_map": {**{k: "a.safetensors" for k in weights},
                            "x": "b.safetensors"}}
    (tiny_checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SafetensorsError, match=r"b\.safetensors, tensor 'embed\.weight': tensor "
                                               r"also stored in a\.safetensors"):
        mlx_zoo.load(tiny_checkpoint)


@pytest.mark.parametrize("metadata, message", [
    ([1, 2], r"__metadata__ is list, expected an object of strings"),
    ("mlx", r"__metadata__ is str, expected an object of strings"),
    ({"format": 1}, r"__metadata__\['format'\] is int, expected a string"),
    ({"format": None}, r"__metadata__\['format'\] is NoneType, expected a string"),
])
def test_malformed_metadata_is_refused(tmp_path, metadata, message):
    f = tmp_path / "m.safetensors"
    write_raw(f, {"__metadata__": metadata, "a": f32([2], 0)}, bytes(8))
    with pytest.raises(SafetensorsError, match=r"m\.safetensors: " + message):
        read_safetensors_header(f)


@pytest.mark.parametrize("field, value", [("shape", [True, 2]), ("data_offsets", [False, 8]),
                                          ("shape", [2.0]), ("dtype", ["F32"])])
def test_json_values_of_the_wrong_type_are_refused(tmp_path, field, value):
    f = tmp_path / "m.safetensors"
    entry = {**f32([2], 0), field: value}
    write_raw(f, {"a": entry}, bytes(8))
    with pytest.raises(SafetensorsError, match=f"tensor 'a': .*{field.split('_')[0]}"):
        read_safetensors_header(f)


def test_deeply_nested_header_is_refused(tmp_path):
    f = tmp_path / "m.safetensors"
    depth = 100_000
    write_raw(f, b"[" * depth + b"]" * depth, b"")
    with pytest.raises(SafetensorsError, match="nested too deeply"):
        read_safetensors_header(f)


# -- dtypes ------------------------------------------------------------------------------------


def _replace_tensor(ckpt, name, dtype, values: np.ndarray):
    """Rewrite the checkpoint with tensor ``name`` stored as safetensors ``dtype``."""
    weights = {k: np.array(v) for k, v in mx.load(str(ckpt / "model.safetensors")).items()}
    weights[name] = values
    header, data, offset = {}, b"", 0
    for key, array in weights.items():
        raw = array.tobytes()
        header[key] = {"dtype": dtype if key == name else "F32", "shape": list(array.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    write_raw(ckpt / "model.safetensors", header, data)


@pytest.mark.parametrize("dtype, np_dtype", [("F64", np.float64)])
def test_float64_tensor_is_refused_by_name(tiny_checkpoint, dtype, np_dtype):
    """MLX has no float64 arrays: mx.load fails with a bare RuntimeError."""
    _replace_tensor(tiny_checkpoint, "embed.weight", dtype, np.ones((32, 16), np_dtype))
    with pytest.raises(SafetensorsError, match=r"model\.safetensors, tensor 'embed\.weight': "
                                               r"dtype F64 \(float64\) is not supported by MLX"):
        mlx_zoo.load(tiny_checkpoint)


def test_float8_e5m2_tensor_is_refused_by_name(tiny_checkpoint):
    _replace_tensor(tiny_checkpoint, "embed.weight", "F8_E5M2", np.ones((32, 16), np.uint8))
    with pytest.raises(SafetensorsError, match=r"tensor 'embed\.weight': dtype F8_E5M2"):
        mlx_zoo.load(tiny_checkpoint)


@pytest.mark.parametrize("dtype, np_dtype, loaded", [
    ("I32", np.int32, "int32"), ("BOOL", np.bool_, "bool"), ("U8", np.uint8, "uint8"),
    ("I64", np.int64, "int64"), ("F8_E4M3", np.uint8, "uint8"),
])
def test_integer_tensor_for_a_floating_weight_is_refused(tiny_checkpoint, dtype, np_dtype,
                                                         loaded):
    """Before: an I32 weight loaded, and the model computed with its integers as floats."""
    _replace_tensor(tiny_checkpoint, "out.weight", dtype, np.ones((32, 16), np_dtype))
    with pytest.raises(SafetensorsError) as e:
        mlx_zoo.load(tiny_checkpoint)
    assert str(e.value).startswith(str(tiny_checkpoint / "model.safetensors"))
    assert f"tensor 'out.weight': dtype {loaded} (stored as {dtype}) does not fit the " \
           "model's float32 parameter" in str(e.value)


def test_quantized_checkpoint_passes_and_float_for_packed_weight_is_refused(tmp_path):
    """Quantized layers hold uint32 packed weights legitimately; a float tensor in their place
    is refused (the check runs after the quantized layers exist)."""
    model, config = mlx_zoo.load("demo:qwen2")
    mlx_zoo.quantize(model, config, bits=4, group_size=32)
    out = mlx_zoo.save(model, config, tmp_path / "q")
    again, _ = mlx_zoo.load(out, dequantize=False)  # uint32 packed weights: accepted
    ids = mx.array([[1, 2, 3]])
    np.testing.assert_array_equal(np.array(again(ids)), np.array(model(ids)))
    weights = dict(mx.load(str(out / "model.safetensors")))
    name = next(k for k, v in weights.items() if v.dtype == mx.uint32)
    weights[name] = weights[name].astype(mx.float32)
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    with pytest.raises(SafetensorsError, match=f"tensor '{name}': dtype float32 .*does not fit "
                                               "the model's uint32 parameter"):
        mlx_zoo.load(out)


def test_mx_load_errors_become_safetensors_errors(tiny_checkpoint, monkeypatch):
    def broken(path, *args, **kwargs):
        raise RuntimeError("[load] something MLX did not like")

    monkeypatch.setattr(mx, "load", broken)
    with pytest.raises(SafetensorsError, match=r"model\.safetensors: MLX could not read it "
                                               r"\(RuntimeError: \[load\] something"):
        mlx_zoo.load(tiny_checkpoint)


# -- the quantization block --------------------------------------------------------------------


@pytest.fixture
def qwen2_dir(tmp_path):
    """A copy of the qwen2 demo checkpoint (hidden 128, 4 layers) to edit."""
    return shutil.copytree(demo_dir("qwen2"), tmp_path / "qwen2")


@pytest.fixture
def quantized_qwen2(tmp_path):
    """demo:qwen2 saved 4-bit (group 32), with a per-layer 8-bit override."""
    model, config = mlx_zoo.load("demo:qwen2")
    model.quantize_predicate = lambda path, module: (
        {"group_size": 64, "bits": 8, "mode": "affine"} if path == "model.layers.0.mlp.up_proj"
        else True)
    mlx_zoo.quantize(model, config, bits=4, group_size=32)
    return mlx_zoo.save(model, config, tmp_path / "q4")


def _edit_config(model_dir, **changes):
    cfg = json.loads((model_dir / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (model_dir / "config.json").write_text(json.dumps(cfg))
    return cfg


def _quantization(model_dir):
    return json.loads((model_dir / "config.json").read_text())["quantization"]


def test_quantized_fixture_loads(quantized_qwen2):
    assert _quantization(quantized_qwen2)["model.layers.0.mlp.up_proj"]["bits"] == 8
    model, _ = mlx_zoo.load(quantized_qwen2, dequantize=False, fuse=False)
    assert model.model.layers[0].mlp.up_proj.bits == 8


@pytest.mark.parametrize("change, key, message", [
    ({"group_size": 0}, "quantization.group_size", "0 is not supported by MLX for mode 'affine'"),
    ({"group_size": 7}, "quantization.group_size", "7 is not supported"),
    ({"group_size": 256}, "quantization.group_size", "256 is not supported"),
    ({"group_size": "32"}, "quantization.group_size", "'32' is not supported"),
    ({"bits": 7}, "quantization.bits", r"7 is not supported by MLX for mode 'affine' "
                                       r"\(one of 1, 2, 3, 4, 5, 6, 8\)"),
    ({"bits": True}, "quantization.bits", "True is not supported"),
    ({"mode": "int4"}, "quantization.mode", "'int4' is not a quantization mode"),
    ({"mode": "mxfp4", "bits": 8}, "quantization.bits", "8 is not supported by MLX for mode "
                                                        "'mxfp4' \\(one of 4\\)"),
    ({"mode": "nvfp4", "bits": 4}, "quantization.group_size", "32 is not supported by MLX for "
                                                              "mode 'nvfp4' \\(one of 16\\)"),
])
def test_bad_global_quantization_is_refused(quantized_qwen2, change, key, message):
    quantization = {**_quantization(quantized_qwen2), **change}
    _edit_config(quantized_qwen2, quantization=quantization)
    with pytest.raises(ConfigError, match=message) as e:
        mlx_zoo.load(quantized_qwen2)
    assert f"config.json, key {key!r}" in str(e.value)


@pytest.mark.parametrize("override, key, message", [
    ({"group_size": 0, "bits": 4}, 'quantization["model.layers.0.mlp.up_proj"].group_size',
     "0 is not supported"),
    ({"group_size": 64, "bits": 9}, 'quantization["model.layers.0.mlp.up_proj"].bits',
     "9 is not supported"),
    ({"group_size": 64, "bits": 8, "mode": 3}, 'quantization["model.layers.0.mlp.up_proj"].mode',
     "3 is not a quantization mode"),
    ({"group_size": 64, "bits": 8, "scale": 2}, 'quantization["model.layers.0.mlp.up_proj"]',
     r"unknown keys \['scale'\]"),
    ("yes", 'quantization["model.layers.0.mlp.up_proj"]', "expected false, true or an object"),
    (4, 'quantization["model.layers.0.mlp.up_proj"]', "expected false, true or an object"),
])
def test_bad_layer_override_is_refused(quantized_qwen2, override, key, message):
    quantization = _quantization(quantized_qwen2)
    quantization["model.layers.0.mlp.up_proj"] = override
    _edit_config(quantized_qwen2, quantization=quantization)
    with pytest.raises(ConfigError, match=message) as e:
        mlx_zoo.load(quantized_qwen2)
    assert f"config.json, key {key!r}" in str(e.value)


@pytest.mark.parametrize("value", [[], "4bit", 4])
def test_quantization_block_must_be_an_object(quantized_qwen2, value):
    _edit_config(quantized_qwen2, quantization=value)
    with pytest.raises(ConfigError, match=r"config\.json, key 'quantization': expected an "
                                          "object"):
        mlx_zoo.load(quantized_qwen2)


def test_override_naming_a_layer_that_cannot_be_quantized_is_refused(qwen2_dir):
    _edit_config(qwen2_dir, quantization={"group_size": 32, "bits": 4,
                                          "model.norm": {"group_size": 32, "bits": 4}})
    with pytest.raises(ConfigError, match=r"key 'quantization\[\"model\.norm\"\]': layer "
                                          r"'model\.norm' \(RMSNorm\) cannot be quantized"):
        mlx_zoo.load(qwen2_dir)


def test_layer_input_not_divisible_by_group_size(tiny_checkpoint):
    """zoo_tiny's layers have input size 16: a group of 32 would fail inside MLX."""
    weights = mx.load(str(tiny_checkpoint / "model.safetensors"))
    weights["qkv.scales"] = mx.zeros((48, 1))
    mx.save_safetensors(str(tiny_checkpoint / "model.safetensors"), weights)
    _edit_config(tiny_checkpoint, quantization={"group_size": 32, "bits": 4})
    with pytest.raises(ConfigError, match=r"key 'quantization\[\"qkv\"\]': layer 'qkv' has input "
                                          r"size 16, not divisible by the group size 32"):
        mlx_zoo.load(tiny_checkpoint)


def test_group_size_zero_through_the_cli_is_an_error_not_a_signal(quantized_qwen2):
    """Before: SIGFPE (exit -8) from MLX's division by the group size."""
    quantization = {**_quantization(quantized_qwen2), "group_size": 0}
    _edit_config(quantized_qwen2, quantization=quantization)
    for args in (["info", str(quantized_qwen2)],
                 ["generate", "--model", str(quantized_qwen2), "-m", "2"]):
        result = subprocess.run([sys.executable, "-m", "mlx_zoo.cli", *args],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode > 0, (args, result.returncode, result.stderr)
        assert "key 'quantization.group_size'" in result.stderr + result.stdout


@pytest.mark.parametrize("kwargs, message", [
    ({"group_size": 7}, "group_size 7 is not supported by MLX for mode 'affine'"),
    ({"group_size": 256}, "group_size 256 is not supported"),
    ({"group_size": 0}, "group_size 0 is not supported"),
    ({"bits": 16}, "bits 16 is not supported"),
    ({"mode": "nvfp4", "group_size": 32}, "group_size 32 is not supported by MLX for mode "
                                          "'nvfp4' \\(one of 16\\)"),
    ({"mode": "fp3"}, "mode 'fp3' is not a quantization mode"),
])
def test_quantize_refuses_arguments_mlx_does_not_support(kwargs, message):
    """Before: group_size=7 or 256 quantized nothing, yet recorded quantization in the config."""
    model, config = mlx_zoo.load("demo:qwen2")
    before = config.to_dict()
    with pytest.raises(QuantizationError, match=message):
        mlx_zoo.quantize(model, config, **kwargs)
    assert isinstance(QuantizationError("x"), ValueError)
    assert config.to_dict() == before and "quantization" not in before


def test_quantize_with_nothing_to_quantize_records_nothing(tiny_checkpoint):
    """zoo_tiny's layers (input 16) do not divide by any group size MLX accepts."""
    model, config = mlx_zoo.load(tiny_checkpoint)
    before = config.to_dict()
    with pytest.raises(QuantizationError, match="no layer could be quantized with group_size "
                                                "32"):
        mlx_zoo.quantize(model, config, bits=4, group_size=32)
    assert config.to_dict() == before


def test_quantizing_twice_is_refused(tmp_path):
    model, config = mlx_zoo.load("demo:qwen2")
    mlx_zoo.quantize(model, config, bits=4, group_size=32)
    recorded = dict(config.to_dict()["quantization"])
    with pytest.raises(QuantizationError, match="already quantized"):
        mlx_zoo.quantize(model, config, bits=8, group_size=64)
    assert config.to_dict()["quantization"] == recorded


def test_quantize_other_modes(tmp_path):
    model, config = mlx_zoo.load("demo:qwen2")
    entry = mlx_zoo.quantize(model, config, mode="mxfp4", bits=4, group_size=32)
    assert entry["mode"] == "mxfp4"
    again, _ = mlx_zoo.load(mlx_zoo.save(model, config, tmp_path / "mx"), dequantize=False)
    ids = mx.array([[1, 2, 3]])
    np.testing.assert_array_equal(np.array(again(ids)), np.array(model(ids)))


# -- the config against the headers ------------------------------------------------------------


def test_absurd_layer_count_is_refused_before_building(qwen2_dir, monkeypatch):
    """Before: a million decoder layers were built (12-23 GiB) before the key check failed."""
    import mlx_qwen2

    built = []
    monkeypatch.setattr(mlx_qwen2.Model, "__init__",
                        lambda self, *a, **k: built.append(1) or None, raising=True)
    _edit_config(qwen2_dir, num_hidden_layers=10**6)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"config\.json, key 'num_hidden_layers': 1000000 "
                                          r"layers, but the checkpoint's tensors hold layers "
                                          r"0\.\.3 only"):
        mlx_zoo.load(qwen2_dir)
    assert not built and time.perf_counter() - start < 5


def test_absurd_layer_count_under_text_config(tmp_path):
    llama4 = shutil.copytree(demo_dir("llama4"), tmp_path / "llama4")
    flat = json.loads((llama4 / "config.json").read_text())
    text = {k: v for k, v in flat.items() if k != "model_type"}
    cfg = {"model_type": "llama4", "text_config": {**text, "num_hidden_layers": 10**6}}
    (llama4 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"key 'text_config\.num_hidden_layers': 1000000"):
        mlx_zoo.load(llama4)


def test_absurd_vocabulary_is_refused(qwen2_dir):
    _edit_config(qwen2_dir, vocab_size=10**9)
    with pytest.raises(ConfigError, match=r"key 'vocab_size': vocab_size 1000000000 x "
                                          r"hidden_size 128 needs an embedding"):
        mlx_zoo.load(qwen2_dir)


def test_fewer_layers_than_stored_is_left_to_the_strict_check(qwen2_dir):
    _edit_config(qwen2_dir, num_hidden_layers=2)
    with pytest.raises(mlx_zoo.WeightMismatchError, match="unexpected"):
        mlx_zoo.load(qwen2_dir)

