"""Nothing depends on import order: what a plugin registers -- RoPE variants, cache classes,
demos -- is available whether the plugin was found through its entry point or imported
directly, in any order, and plugins register nothing when imported. Each case runs in a fresh
interpreter, so nothing imported by the test session helps."""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mlx_zoo
from mlx_zoo.demos import demo_dir

REPO = Path(__file__).resolve().parents[2]
PLUGINS = ("mlx_hunyuan", "mlx_llama4", "mlx_qwen2")
NTK_CONFIG = {"model_type": "hunyuan_v1_dense", "vocab_size": 64, "hidden_size": 32,
              "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "rope_scaling": {"type": "dynamic", "alpha": 4.0, "factor": 1.0}}

FAKE_PLUGIN = '''
from dataclasses import dataclass

import mlx.nn as nn

from mlx_zoo import Architecture, BaseModelArgs, KVCache, hookimpl


class FakeCache(KVCache):
    """A plugin's own cache class."""


@dataclass
class Args(BaseModelArgs):
    """Nothing to configure."""

    model_type: str = "fake_cache_arch"


class Model(nn.Module):
    """Never built."""


@hookimpl
def spec_version():
    return 1


@hookimpl
def register_models():
    return [Architecture("fake_cache_arch", Args, Model)]


@hookimpl
def register_cache_classes():
    return {"mlx_fakecache.FakeCache": FakeCache}
'''


def run(code: str, path: Path | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (with ``path`` on sys.path); it prints JSON last."""
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


LOADED = f"sorted(m for m in {PLUGINS} if m in sys.modules)"  # which plugins are imported


@pytest.mark.parametrize("first", ["plugin", "core"])
def test_plugin_module_imported_directly_builds_its_own_rope(first):
    """The plugin's module, imported directly (before or after mlx_zoo, never registered),
    validates an NTK-alpha config and builds the model with it."""
    imports = ["from mlx_hunyuan import hunyuan_v1_dense", "import mlx_zoo"]
    if first == "core":
        imports.reverse()
    out = run(f"""
        import json, sys
        {imports[0]}
        {imports[1]}
        import mlx.core as mx
        from mlx_zoo.registry import plugin_manager
        args = hunyuan_v1_dense.ModelArgs.from_dict(mlx_zoo.normalize_config({NTK_CONFIG!r}))
        model = hunyuan_v1_dense.Model(args)
        logits = model(mx.array([[1, 2, 3]]))
        print(json.dumps({{"rope": type(model.layers[0].self_attn.rope).__name__,
                          "shape": list(logits.shape),
                          "registered": len(plugin_manager().get_plugins())}}))
    """)
    assert out == {"rope": "NTKAlphaRoPE", "shape": [1, 3, 64], "registered": 0}


def test_importing_a_plugin_registers_nothing():
    out = run("""
        import json, sys
        import mlx_hunyuan, mlx_llama4, mlx_qwen2
        import mlx_zoo
        from mlx_zoo.registry import plugin_manager, call_hook
        print(json.dumps([len(plugin_manager().get_plugins()),
                          call_hook("register_rope_variants")]))
    """)
    assert out == [0, []]


def test_a_variant_name_is_found_through_the_installed_plugins():
    """The core's lookup finds a plugin's variant by name without anything importing the
    plugin first (the installed entry points' plugins are consulted)."""
    out = run("""
        import json, sys
        import mlx_zoo
        rope = mlx_zoo.get_rope(32, base=10000.0, scaling={"rope_type": "ntk_alpha",
                                                            "alpha": 4.0})
        mlx_zoo.validate_rope_scaling({"rope_type": "ntk_alpha", "alpha": 4.0}, 32)
        print(json.dumps([type(rope).__name__, "mlx_hunyuan" in sys.modules]))
    """)
    assert out == ["NTKAlphaRoPE", True]


def test_an_unknown_variant_still_names_the_known_ones():
    with pytest.raises(mlx_zoo.ConfigError, match="unknown rope_type 'nope'.*ntk_alpha"):
        mlx_zoo.get_rope(32, base=10000.0, scaling={"rope_type": "nope"})


@pytest.mark.parametrize("name", ["hunyuan", "llama4", "qwen2"])
def test_demo_resolves_through_its_plugin_only(name):
    module = {"hunyuan": "mlx_hunyuan", "llama4": "mlx_llama4", "qwen2": "mlx_qwen2"}[name]
    out = run(f"""
        import json, sys
        import mlx_zoo
        model, config = mlx_zoo.load("demo:{name}", fuse=False)
        print(json.dumps({LOADED}))
    """)
    assert out == [module]


def fake_plugin(root: Path) -> Path:
    """A distribution 'installed' by putting it on sys.path: module plus dist-info."""
    (root / "mlx_fakecache").mkdir(parents=True)
    (root / "mlx_fakecache" / "__init__.py").write_text(FAKE_PLUGIN)
    info = root / "mlx_fakecache-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlx-fakecache\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mlx_zoo.models]\nfake_cache_arch = mlx_fakecache\n")
    return root


@pytest.mark.parametrize("recorded", [True, False])
def test_prompt_cache_with_a_plugin_class_loads_before_the_plugin_is_imported(tmp_path,
                                                                              recorded):
    """Saved in one process (the plugin found through its entry point), loaded in a fresh one
    that never imported it: the class is found through the installed entry points -- by the
    distribution the file records, or (files without it) by the class name's module -- and
    only that plugin is imported."""
    root = fake_plugin(tmp_path / "site")
    cache_file = tmp_path / "prompt.safetensors"
    out = run(f"""
        import json, sys
        import mlx.core as mx
        import mlx_zoo
        from mlx_zoo import registry
        registry.resolve("fake_cache_arch")  # imports the plugin through its entry point
        cls = mlx_zoo.cache.cache_classes()["mlx_fakecache.FakeCache"]
        cache = [cls(), mlx_zoo.KVCache()]
        for c in cache:
            c.update_and_fetch(mx.ones((1, 2, 3, 4)), mx.ones((1, 2, 3, 4)))
        mlx_zoo.save_prompt_cache({str(cache_file)!r}, cache)
        arrays, meta = mx.load({str(cache_file)!r}, return_metadata=True)
        layers = json.loads(meta["layers"])
        if not {recorded}:
            for entry in layers:
                entry.pop("plugin", None)
            mx.save_safetensors({str(cache_file)!r}, arrays, metadata={{**meta,
                                "layers": json.dumps(layers)}})
        print(json.dumps(layers))
    """, root)
    assert out[0]["plugin"] == "mlx-fakecache" if recorded else "plugin" not in out[0]
    assert "plugin" not in out[1]  # built-in classes need no provider
    loaded = run(f"""
        import json, sys
        import mlx_zoo
        caches = mlx_zoo.load_prompt_cache({str(cache_file)!r})
        print(json.dumps([[type(c).__name__ for c in caches], caches[0].offset,
                          "mlx_fakecache" in sys.modules, {LOADED}]))
    """, root)
    assert loaded == [["FakeCache", "KVCache"], 3, True, []]


def test_the_core_ships_no_demo_and_the_plugins_package_theirs():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    core = REPO / "core" / "src" / "mlx_zoo"
    assert not list(core.rglob("*.safetensors"))
    for plugin, name in (("mlx-qwen2", "qwen2"), ("mlx-hunyuan", "hunyuan"),
                         ("mlx-llama4", "llama4"), ("mlx-qwen3", "qwen3"),
                         ("mlx-gemma", "gemma3")):
        package = plugin.replace("-", "_")
        # the plugin's own package directory, wherever it is installed (editable or a wheel)
        installed = Path(importlib.import_module(package).__file__).parent
        assert demo_dir(name) == installed / "demo"
        assert (REPO / "plugins" / plugin / "src" / package / "demo" / "config.json").is_file()
        project = tomllib.loads((REPO / "plugins" / plugin / "pyproject.toml").read_text())
        data = project["tool"]["setuptools"]["package-data"][package]
        for file in demo_dir(name).iterdir():  # every file of the demo goes into the wheel
            assert any(fnmatch.fnmatch(f"demo/{file.name}", pattern) for pattern in data)
    core_data = tomllib.loads((REPO / "core" / "pyproject.toml").read_text())
    assert "known_plugins.json" in core_data["tool"]["setuptools"]["package-data"]["mlx_zoo"]


def test_install_hints_come_from_data():
    from mlx_zoo import registry

    known = json.loads(registry.KNOWN_PACKAGES_FILE.read_text())["model_types"]
    assert known["qwen2"] == "mlx-qwen2" and known["llama4_text"] == "mlx-llama4"
    assert registry.known_package("hunyuan_v1_moe") == "mlx-hunyuan"
    assert registry.known_package("no_such_type") is None


def test_generate_without_model_picks_qwen2_first():
    from mlx_zoo.demos import available_demos, default_demo

    assert {"qwen2", "hunyuan", "llama4"} <= set(available_demos())
    assert default_demo() == "qwen2"
    from mlx_zoo import cli

    assert cli.DEFAULT_MODEL is None
