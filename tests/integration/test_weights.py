"""Safetensors validation (refused before any tensor is read), the strict key check, sharded
save/load, dtype override, and that nothing in a model directory is executed or modified."""

from __future__ import annotations

import hashlib
import json
import struct

import mlx.core as mx
import numpy as np
import pytest

import mlx_zoo
from mlx_zoo import SafetensorsError, WeightMismatchError


def tree_digest(path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_truncated_file(tiny_checkpoint):
    f = tiny_checkpoint / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(SafetensorsError, match=r"model\.safetensors, tensor '.*': tensor extends "
                                               r"past the end of the file"):
        mlx_zoo.load(tiny_checkpoint)


def test_file_shorter_than_header_length(tiny_checkpoint):
    (tiny_checkpoint / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(SafetensorsError, match="truncated"):
        mlx_zoo.load(tiny_checkpoint)


def test_header_length_beyond_file(tiny_checkpoint):
    (tiny_checkpoint / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(SafetensorsError, match="header length 1000000000 exceeds the file"):
        mlx_zoo.load(tiny_checkpoint)


def test_header_not_json(tiny_checkpoint):
    header = b"this is not json"
    (tiny_checkpoint / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(SafetensorsError, match="header is not valid JSON"):
        mlx_zoo.load(tiny_checkpoint)


def test_tensor_offsets_inconsistent_with_shape(tiny_checkpoint):
    header = json.dumps({"embed.weight": {"dtype": "F32", "shape": [4, 4],
                                          "data_offsets": [0, 8]}}).encode()
    (tiny_checkpoint / "model.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(SafetensorsError, match=r"tensor 'embed.weight': holds 8 bytes, but shape"):
        mlx_zoo.load(tiny_checkpoint)


def _shard(ckpt, names):
    """Split model.safetensors into two shards plus an index naming ``names``."""
    weights = mx.load(str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").unlink()
    keys = sorted(weights)
    mx.save_safetensors(str(ckpt / "a.safetensors"), {k: weights[k] for k in keys[:1]})
    mx.save_safetensors(str(ckpt / "b.safetensors"), {k: weights[k] for k in keys[1:]})
    index = {"weight_map": {k: (names[0] if i == 0 else names[1]) for i, k in enumerate(keys)}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_checkpoint_loads(tiny_checkpoint):
    reference, _ = mlx_zoo.load(tiny_checkpoint)
    _shard(tiny_checkpoint, ["a.safetensors", "b.safetensors"])
    model, _ = mlx_zoo.load(tiny_checkpoint)
    ids = mx.array([[1, 2, 3]])
    np.testing.assert_array_equal(np.array(model(ids)), np.array(reference(ids)))


def test_missing_shard(tiny_checkpoint):
    _shard(tiny_checkpoint, ["a.safetensors", "c.safetensors"])
    with pytest.raises(SafetensorsError, match=r"index\.json, tensor .*shard 'c.safetensors' "
                                               r"is missing"):
        mlx_zoo.load(tiny_checkpoint)


def test_index_pointing_outside_model_dir_is_refused(tiny_checkpoint, tmp_path):
    _shard(tiny_checkpoint, ["a.safetensors", "b.safetensors"])
    (tiny_checkpoint / "b.safetensors").rename(tmp_path / "b.safetensors")
    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: (v if v == "a.safetensors" else "../b.safetensors")
                           for k, v in index["weight_map"].items()}
    (tiny_checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SafetensorsError, match=r"'\.\./b\.safetensors' has an empty, '\.' or "
                                               r"'\.\.' component: outside the model directory"):
        mlx_zoo.load(tiny_checkpoint)


def test_index_not_json(tiny_checkpoint):
    (tiny_checkpoint / "model.safetensors.index.json").write_text("{")
    with pytest.raises(SafetensorsError, match=r"index\.json: index is not valid JSON"):
        mlx_zoo.load(tiny_checkpoint)


def test_no_weights_at_all(tiny_checkpoint):
    (tiny_checkpoint / "model.safetensors").unlink()
    with pytest.raises(SafetensorsError, match="no model.safetensors"):
        mlx_zoo.load(tiny_checkpoint)


def test_strict_check_lists_every_problem(tiny_checkpoint):
    weights = mx.load(str(tiny_checkpoint / "model.safetensors"))
    del weights["qkv.weight"]
    weights["extra.weight"] = mx.zeros((2,))
    weights["out.weight"] = mx.zeros((3, 3))
    mx.save_safetensors(str(tiny_checkpoint / "model.safetensors"), weights)
    with pytest.raises(WeightMismatchError) as e:
        mlx_zoo.load(tiny_checkpoint)
    assert e.value.missing == ["qkv.weight"] and e.value.unexpected == ["extra.weight"]
    assert e.value.shape_mismatches == [("out.weight", (3, 3), (32, 16))]
    assert str(tiny_checkpoint) in str(e.value)


def test_python_files_in_model_dir_are_never_executed(tiny_checkpoint, tmp_path):
    marker = tmp_path / "executed"
    payload = f"open({str(marker)!r}, 'w').write('pwned')\n"
    for name in ("modeling_zoo_tiny.py", "configuration_zoo_tiny.py", "__init__.py",
                 "mlx_zoo_testplugin.py"):
        (tiny_checkpoint / name).write_text(payload)
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_zoo_tiny.Model"}
    (tiny_checkpoint / "config.json").write_text(json.dumps(cfg))
    mlx_zoo.load(tiny_checkpoint)
    mlx_zoo.load(str(tiny_checkpoint))
    assert not marker.exists()


def test_failed_loads_modify_nothing_on_disk(tiny_checkpoint):
    f = tiny_checkpoint / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    before = tree_digest(tiny_checkpoint)
    with pytest.raises(SafetensorsError):
        mlx_zoo.load(tiny_checkpoint)
    assert tree_digest(tiny_checkpoint) == before


def test_save_then_load_round_trips_sharded(tiny_checkpoint, tmp_path):
    model, config = mlx_zoo.load(tiny_checkpoint)
    out = mlx_zoo.save(model, config, tmp_path / "saved", max_shard_bytes=2048)
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    again, config2 = mlx_zoo.load(out)
    ids = mx.array([[3, 1, 4, 1, 5]])
    np.testing.assert_array_equal(np.array(again(ids)), np.array(model(ids)))
    assert config2 == config


def test_dtype_override_and_lazy(tiny_checkpoint):
    model, _ = mlx_zoo.load(tiny_checkpoint, dtype="bfloat16", lazy=True)
    assert model.embed.weight.dtype == mx.bfloat16
    with pytest.raises(ValueError, match="not a floating-point MLX dtype"):
        mlx_zoo.load(tiny_checkpoint, dtype="int8")


def test_not_a_directory_nor_repo(tmp_path):
    with pytest.raises(mlx_zoo.ModelNotFoundError, match="no such model directory"):
        mlx_zoo.load(tmp_path / "nope")


def test_hub_repo_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(mlx_zoo.ModelNotFoundError, match="not-a-real-org/not-a-model"):
        mlx_zoo.load("not-a-real-org/not-a-model")


def test_hub_repo_from_cache_fetches_only_needed_files(monkeypatch, tmp_path, tiny_checkpoint):
    """snapshot_download is asked only for configs, weights and tokenizer files."""
    import huggingface_hub

    seen = {}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        seen.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(tiny_checkpoint)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model, _ = mlx_zoo.load("org/tiny", revision="abc")
    assert seen["repo_id"] == "org/tiny" and seen["revision"] == "abc"
    assert not any(p.endswith(".py") or p == "*" for p in seen["allow_patterns"])


# -- load leaves nothing lazy ------------------------------------------------------------------

THREAD_TOKENS = 6  # a few greedy tokens: enough to run prefill and decode steps


def _in_thread(fn):
    """``fn()`` run in a new thread; its result, or the exception it raised, re-raised here."""
    import threading

    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # handed back to the test
            out["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.parametrize("name", ["qwen2", "hunyuan", "llama4"])
def test_model_loaded_in_one_thread_runs_in_another(name):
    """Arrays the modules hold outside parameters() (RoPE tables in ``_periods``, ...) are
    evaluated by load: a lazy one would be computed in the generating thread, which has no MLX
    stream of the loading thread ("There is no Stream(cpu, 0) in current thread")."""
    model, _ = mlx_zoo.load(f"demo:{name}")
    tokenizer = mlx_zoo.load_tokenizer(f"demo:{name}")
    ids = mx.array([[1, 2, 3, 4]])
    logits = _in_thread(lambda: np.array(model(ids)))
    tokens = _in_thread(lambda: mlx_zoo.generate(model, tokenizer, "def ",
                                                 max_tokens=THREAD_TOKENS).tokens)
    np.testing.assert_array_equal(logits, np.array(model(ids)))
    assert tokens == mlx_zoo.generate(model, tokenizer, "def ", max_tokens=THREAD_TOKENS).tokens
    assert len(tokens) == THREAD_TOKENS
