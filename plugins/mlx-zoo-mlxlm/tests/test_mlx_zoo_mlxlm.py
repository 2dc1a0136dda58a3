"""The mlx-lm bridge: tiny checkpoints of bridge-only families, written by transformers, give
mlx-lm's own logits and greedy tokens through mlx-zoo (and transformers' logits), greedy text
through the CLI and the server; native plugins win unless the bridge is picked; a broken mlx-lm
module, a missing or too-old mlx-lm and bad checkpoints fail as they should."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_zoo
from mlx_zoo import registry
from mlx_zoo.testing import (
    incremental_logits,
    logits,
    relative_error,
    sharpen_torch_model,
    torch_logits,
    write_tiny_tokenizer,
)
from mlx_zoo_mlxlm import BridgedArgs, discovery

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
mlx_lm_utils = pytest.importorskip("mlx_lm.utils")

BRIDGE = "mlx-zoo-mlxlm"
FAMILIES = {"starcoder2": "Starcoder2ForCausalLM", "cohere": "CohereForCausalLM",
            "olmo2": "Olmo2ForCausalLM", "granite": "GraniteForCausalLM"}
"""Families no plugin of this repository serves, each with transformers' class."""
BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rope_theta=10000.0)
IDS = np.array([[1, 200, 17, 45, 99, 3, 250, 64, 12, 7, 180, 33]])
SAME = 1e-5  # mlx-lm's model through mlx-zoo vs mlx-lm's own load: float32, the same kernels
REFERENCE = 1e-4  # vs transformers on CPU torch (float32)
CLI = Path(sys.executable).parent / "mlx-zoo"


def published(directory: Path) -> None:
    """Rewrite transformers 5's ``rope_parameters`` as ``rope_theta`` (+ ``rope_scaling``): the
    dialect mlx-lm's own loader reads (it ignores ``rope_parameters``)."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    params = config.pop("rope_parameters", None) or {}
    if "rope_theta" in params:
        config["rope_theta"] = params.pop("rope_theta")
    if params.get("rope_type", "default") != "default":
        config["rope_scaling"] = params
    path.write_text(json.dumps(config, indent=2))


def write_checkpoint(directory: Path, class_name: str, publish: bool = True, **overrides):
    """A transformers model of ``class_name`` with sharpened weights, saved as a checkpoint with
    the kit's tiny tokenizer; returns the torch model (the reference)."""
    cls = getattr(transformers, class_name)
    torch.manual_seed(0)
    model = sharpen_torch_model(cls(cls.config_class(**{**BASE, **overrides})).eval())
    model.save_pretrained(directory)
    if publish:
        published(directory)
    write_tiny_tokenizer(directory)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("bridged")
    return {t: (root / t, write_checkpoint(root / t, c)) for t, c in FAMILIES.items()}


@pytest.fixture
def prefer_bridge(monkeypatch):
    """MLX_ZOO_PREFER picks the bridge for the families, should a native plugin arrive."""
    monkeypatch.setenv("MLX_ZOO_PREFER", ",".join(f"{t}={BRIDGE}" for t in FAMILIES))
    return dict(os.environ)


def mlx_lm_model(path: Path):
    model, _ = mlx_lm_utils.load_model(path)
    return model


# -- discovery and resolution --------------------------------------------------------------------


def test_claims_every_model_type_of_the_installed_mlx_lm():
    """Every module of mlx_lm.models that imports with a Model and a ModelArgs, and every alias
    of mlx-lm's remapping table, is claimed; no helper module is."""
    import importlib
    import pkgutil

    import mlx_lm.models

    claimed = discovery.model_types()
    for info in pkgutil.iter_modules(mlx_lm.models.__path__):
        try:
            module = importlib.import_module(f"mlx_lm.models.{info.name}")
        except BaseException:  # noqa: BLE001 (olmo's sys.exit): tested below
            continue
        is_model = hasattr(module, "Model") and hasattr(module, "ModelArgs")
        assert (info.name in claimed) == is_model, info.name
    for alias, target in mlx_lm_utils.MODEL_REMAPPING.items():
        assert claimed[alias] == f"mlx_lm.models.{target}"
    assert {"starcoder2", "cohere", "olmo2", "granite", "mamba", "rwkv7"} <= set(claimed)


def test_bridge_only_types_resolve_to_the_bridge_and_native_types_to_native(monkeypatch):
    native = {e.model_type for e in registry.installed_entries()}
    for model_type in [*FAMILIES, "llama", "qwen2"]:
        bridged = registry.resolve(model_type).config_class is BridgedArgs
        assert bridged == (model_type not in native), model_type
    assert "llama" in native  # mlx-llama serves it: the bridge only on request
    assert registry.resolve("llama", plugin=BRIDGE).config_class is BridgedArgs
    monkeypatch.setenv("MLX_ZOO_PREFER", f"llama={BRIDGE}")
    assert registry.resolve("llama").config_class is BridgedArgs


def test_native_plugin_and_bridge_agree_on_a_llama(tmp_path):
    write_checkpoint(tmp_path, "LlamaForCausalLM")
    native, config = mlx_zoo.load(tmp_path)
    bridged, bridged_config = mlx_zoo.load(tmp_path, plugin=BRIDGE)
    assert not isinstance(config, BridgedArgs) and isinstance(bridged_config, BridgedArgs)
    assert type(bridged).__module__ == "mlx_lm.models.llama"
    assert relative_error(logits(bridged, IDS), logits(native, IDS)) < REFERENCE


# -- the families: logits, caches, greedy tokens ---------------------------------------------------


@pytest.mark.parametrize("model_type", FAMILIES)
def test_logits_are_mlx_lm_s_and_transformers(checkpoints, model_type):
    path, reference = checkpoints[model_type]
    model, config = mlx_zoo.load(path, plugin=BRIDGE, dtype="float32")
    assert isinstance(config, BridgedArgs)
    assert type(model).__module__ == discovery.model_types()[model_type]
    ours = logits(model, IDS)
    assert relative_error(ours, logits(mlx_lm_model(path), IDS)) < SAME
    assert relative_error(ours, torch_logits(reference, IDS)) < REFERENCE
    assert relative_error(incremental_logits(model, IDS, [5, 1, 4, 2]), ours) < SAME


def test_transformers_5_rope_parameters_reach_mlx_lm_s_model(tmp_path):
    """A transformers-5 config.json (``rope_parameters`` only): mlx-zoo hands mlx-lm's model
    the RoPE base it gives, matching transformers -- mlx-lm's own loader reads its default."""
    reference = write_checkpoint(tmp_path, "Starcoder2ForCausalLM", publish=False,
                                 rope_theta=50.0)
    assert "rope_theta" not in json.loads((tmp_path / "config.json").read_text())
    model, _ = mlx_zoo.load(tmp_path, plugin=BRIDGE, dtype="float32")
    expected = torch_logits(reference, IDS)
    assert relative_error(logits(model, IDS), expected) < REFERENCE
    assert relative_error(logits(mlx_lm_model(tmp_path), IDS), expected) > 100 * REFERENCE


@pytest.mark.parametrize("model_type", ["starcoder2", "cohere"])
def test_greedy_tokens_are_mlx_lm_s(checkpoints, model_type):
    from mlx_lm.generate import generate_step

    path, _ = checkpoints[model_type]
    model, _ = mlx_zoo.load(path, plugin=BRIDGE, dtype="float32")
    tokenizer = mlx_zoo.load_tokenizer(path)
    prompt = [int(i) for i in IDS[0]]
    ours = mlx_zoo.generate(model, tokenizer, prompt, max_tokens=12).tokens
    theirs = [int(t) for t, _ in generate_step(mx.array(prompt), mlx_lm_model(path),
                                               max_tokens=len(ours))]
    assert ours == theirs


def test_prompt_cache_file_and_quantized_convert(checkpoints, tmp_path):
    path, _ = checkpoints["starcoder2"]
    model, _ = mlx_zoo.load(path, plugin=BRIDGE, dtype="float32")
    cache = mlx_zoo.make_prompt_cache(model)
    model(mx.array(IDS[:, :8]), cache=cache)
    mlx_zoo.save_prompt_cache(tmp_path / "cache.safetensors", cache, model=model)
    restored = mlx_zoo.load_prompt_cache(tmp_path / "cache.safetensors", model=model)
    rest = np.array(model(mx.array(IDS[:, 8:]), cache=restored))
    assert relative_error(rest, logits(model, IDS)[:, 8:]) < SAME
    out = tmp_path / "q4"
    done = subprocess.run([str(CLI), "convert", "--hf-path", str(path), "--mlx-path", str(out),
                           "-q", "--q-group-size", "32"], capture_output=True, text=True,
                          env={**os.environ, "MLX_ZOO_PREFER": f"starcoder2={BRIDGE}"})
    assert done.returncode == 0, done.stderr
    quantized, _ = mlx_zoo.load(out, plugin=BRIDGE, dtype=None, dequantize=False)
    assert relative_error(logits(quantized, IDS), logits(mlx_lm_model(out), IDS)) < SAME


# -- the CLI and the server -----------------------------------------------------------------------


def expected_text(path: Path, prompt: str, max_tokens: int) -> str:
    model, _ = mlx_zoo.load(path)
    tokenizer = mlx_zoo.load_tokenizer(path)
    return mlx_zoo.generate(model, tokenizer, tokenizer.encode_prompt(prompt),
                            max_tokens=max_tokens).text


def test_cli_generate_greedy_text(checkpoints, prefer_bridge):
    path, _ = checkpoints["olmo2"]
    done = subprocess.run([str(CLI), "generate", "--model", str(path), "--prompt", "plugins",
                           "--max-tokens", "10", "--no-chat-template"], capture_output=True,
                          text=True, env=prefer_bridge, timeout=300)
    assert done.returncode == 0, done.stderr
    text = done.stdout.partition("\n==========")[0]
    assert text == expected_text(path, "plugins", 10)


@contextlib.contextmanager
def server(path: Path, env: dict[str, str]):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen([sys.executable, "-m", "mlx_zoo.serve", "--model", str(path),
                                "--port", str(port), "--max-concurrency", "4"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "the server exited"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", log
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def complete(url: str, model: str, prompt: str) -> str:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0})
    request = urllib.request.Request(f"{url}/v1/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        return json.loads(r.read())["choices"][0]["text"]


def test_server_batches_a_bridged_model_with_the_same_greedy_text(checkpoints, prefer_bridge):
    path, _ = checkpoints["granite"]
    prompts = ["hello", "a plugin", "caches, keys and values", "x"]
    with server(path, prefer_bridge) as (url, log):
        with ThreadPoolExecutor(len(prompts)) as pool:
            answers = list(pool.map(lambda p: complete(url, str(path), p), prompts))
        log.seek(0)
        assert "decoding batched" in log.read()
    assert answers == [expected_text(path, p, 8) for p in prompts]


# -- failures -------------------------------------------------------------------------------------


def test_a_broken_mlx_lm_module_makes_only_its_type_unavailable():
    """mlx-lm's olmo module exits the process at import without ai2-olmo: the bridge reports it
    for olmo alone (with what the module printed), and serves the others."""
    pytest.importorskip("torch")
    with contextlib.suppress(ImportError):
        import hf_olmo  # noqa: F401

        pytest.skip("ai2-olmo is installed: mlx-lm's olmo module imports")
    with pytest.raises(mlx_zoo.PluginLoadError, match=r"olmo.*SystemExit.*ai2-olmo"):
        registry.resolve("olmo")
    rows = {r.model_type: r for r in registry.list_bridged(check=True)}
    assert rows["olmo"].status == "broken" and "ai2-olmo" in rows["olmo"].error
    assert rows["starcoder2"].status in ("bridged", "native")
    assert rows["llama"].status == "native" and rows["llama"].native == ("mlx-llama",)
    listing = subprocess.run([str(CLI), "list"], capture_output=True, text=True, check=True)
    assert "mlx-zoo-mlxlm (olmo) is broken" in listing.stdout
    assert any(line.split() == ["cohere", "mlx_lm.models.cohere", "bridged"]
               for line in listing.stdout.splitlines())


@pytest.mark.parametrize("setting, message", [
    (("DISTRIBUTION", "mlx-lm-absent"), "mlx-lm is not installed"),
    (("MIN_VERSION", (99, 0)), r"mlx-lm 0\.\d+\.\d+ is too old"),
])
def test_missing_or_too_old_mlx_lm_is_said(checkpoints, monkeypatch, setting, message):
    monkeypatch.setattr(discovery, *setting)
    path, _ = checkpoints["starcoder2"]
    with pytest.raises(mlx_zoo.PluginLoadError, match=f"{message}.*pip install"):
        mlx_zoo.load(path, plugin=BRIDGE)
    (row,) = [r for r in registry.list_bridged(check=True) if r.distribution == BRIDGE]
    assert row.status == "broken" and row.model_type == "*" and "pip install" in row.error


class FakeBridge:
    """A bridge registered in process: one type it serves, one it cannot, one a native plugin
    registered in process serves too."""

    @staticmethod
    def architecture(model_type):
        if model_type == "zoo_bridge_bad":
            raise ImportError("needs zoo-extra")
        return mlx_zoo.Architecture(model_type, BridgedArgs, lambda config: None)

    @mlx_zoo.hookimpl
    def register_model_bridge(self):
        types = {t: f"fake.{t}" for t in ("zoo_bridge_ok", "zoo_bridge_bad", "zoo_bridge_nat")}
        return mlx_zoo.ModelBridge("fake 1.0", lambda: types, self.architecture)


def build_nothing(config):
    """A model class stand-in: one object, so that unregister finds the Architecture again."""


class FakeNative:
    @mlx_zoo.hookimpl
    def register_models(self):
        return [mlx_zoo.Architecture("zoo_bridge_nat", mlx_zoo.BaseModelArgs, build_nothing)]


def test_registry_contract_with_a_bridge_registered_in_process():
    bridge, native = FakeBridge(), FakeNative()
    mlx_zoo.register(bridge, name="zoo-fake-bridge")
    mlx_zoo.register(native, name="zoo-fake-native")
    try:
        assert registry.resolve("zoo_bridge_ok").model_type == "zoo_bridge_ok"
        assert registry.resolve("zoo_bridge_nat").config_class is mlx_zoo.BaseModelArgs
        with pytest.raises(mlx_zoo.PluginLoadError, match="zoo_bridge_bad.*needs zoo-extra"):
            registry.resolve("zoo_bridge_bad")
        rows = {r.model_type: r for r in registry.list_bridged(check=True)
                if r.distribution == "zoo-fake-bridge"}
        assert {t: r.status for t, r in rows.items()} == {
            "zoo_bridge_ok": "bridged", "zoo_bridge_bad": "broken", "zoo_bridge_nat": "native"}
        assert rows["zoo_bridge_ok"].via == "fake 1.0"
    finally:
        mlx_zoo.unregister(native)
        mlx_zoo.unregister(bridge)
    with pytest.raises(mlx_zoo.PluginNotFoundError):
        registry.resolve("zoo_bridge_ok")
    with pytest.raises(mlx_zoo.PluginNotFoundError):
        registry.resolve("zoo_bridge_nat")


def edited(source: Path, target: Path, config=None, drop: str | None = None) -> Path:
    target.mkdir()
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    if config is not None:
        data = json.loads((target / "config.json").read_text())
        config(data)
        (target / "config.json").write_text(json.dumps(data))
    if drop is not None:
        weights = mx.load(str(target / "model.safetensors"))
        del weights[drop]
        mx.save_safetensors(str(target / "model.safetensors"), weights)
    return target


def test_bad_checkpoints_are_clean_errors_naming_file_and_key(checkpoints, tmp_path):
    path, _ = checkpoints["starcoder2"]
    bad = edited(path, tmp_path / "type", lambda c: c.update(hidden_size="64"))
    with pytest.raises(mlx_zoo.ConfigError, match=r"config\.json, key 'hidden_size'"):
        mlx_zoo.load(bad, plugin=BRIDGE)
    bad = edited(path, tmp_path / "range", lambda c: c.update(num_hidden_layers=0))
    with pytest.raises(mlx_zoo.ConfigError, match=r"key 'num_hidden_layers'"):
        mlx_zoo.load(bad, plugin=BRIDGE)
    bad = edited(path, tmp_path / "missing", lambda c: c.pop("num_attention_heads"))
    with pytest.raises(mlx_zoo.ConfigError, match=r"config\.json.*mlx-lm's .*starcoder2"):
        mlx_zoo.load(bad, plugin=BRIDGE)
    dropped = "model.layers.1.mlp.c_fc.weight"
    bad = edited(path, tmp_path / "weights", drop=dropped)
    with pytest.raises(mlx_zoo.WeightMismatchError, match=dropped.replace(".", r"\.")):
        mlx_zoo.load(bad, plugin=BRIDGE)
    bad = edited(path, tmp_path / "unknown", lambda c: c.update(model_type="zoo_nowhere"))
    with pytest.raises(mlx_zoo.PluginNotFoundError, match="zoo_nowhere"):
        mlx_zoo.load(bad)
