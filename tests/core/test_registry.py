"""Discovery by model_type through real entry points, aliases, in-process registration, the
allow/block list, conflicts and broken plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import mlx_zoo
from mlx_zoo import PluginConflictError, PluginLoadError, PluginNotFoundError, registry

pytestmark = pytest.mark.usefixtures("isolated_registry")

CLAIMING_MODULE = textwrap.dedent("""
    from mlx_zoo import Architecture, hookimpl
    from mlx_zoo_testplugin import Model, TinyArgs

    class OtherModel(Model):
        pass

    @hookimpl
    def register_models():
        return [Architecture("zoo_tiny", TinyArgs, OtherModel)]
""")


def test_loads_by_model_type_through_installed_entry_point(tiny_checkpoint):
    model, config = mlx_zoo.load(tiny_checkpoint)
    assert type(model).__module__ == "mlx_zoo_testplugin"
    assert config.vocab_size == 32 and config.hidden_size == 16
    entry = [r for r in mlx_zoo.list_plugins() if r.model_type == "zoo_tiny"]
    assert entry and entry[0].distribution == "mlx-zoo-testplugin" and entry[0].version == "0.0.1"


def test_alias_entry_point_serves_same_plugin(tmp_path, testplugin, write_zoo_tiny):
    model, _ = mlx_zoo.load(write_zoo_tiny(tmp_path / "a", model_type="zoo_tiny_alias"))
    assert type(model).__module__ == "mlx_zoo_testplugin"


def test_loading_imports_only_the_plugin_it_needs(tiny_checkpoint):
    """In a fresh interpreter: loading zoo_tiny imports its plugin and no other."""
    code = textwrap.dedent(f"""
        import sys, mlx_zoo
        from importlib import metadata
        others = {{ep.value for ep in metadata.entry_points(group="mlx_zoo.models")}}
        assert "mlx_zoo_testplugin" in others, others
        others.discard("mlx_zoo_testplugin")
        mlx_zoo.load({str(tiny_checkpoint)!r})
        assert "mlx_zoo_testplugin" in sys.modules
        loaded = sorted(m for m in others if m in sys.modules)
        assert not loaded, loaded
        assert "transformers" not in sys.modules and "huggingface_hub" not in sys.modules
        print("ok", sorted(others))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_import_of_core_imports_no_plugin_hub_or_transformers():
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mlx_zoo"],
                         capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert "mlx_zoo" in imported
    for forbidden in ("huggingface_hub", "transformers", "torch", "mlx_qwen2", "mlx_hunyuan",
                      "mlx_llama4", "mlx_zoo_testplugin"):
        assert forbidden not in imported, forbidden


def test_register_in_process_without_packaging(tmp_path, testplugin, write_zoo_tiny):
    import mlx_zoo_testplugin as plugin

    class Renamed:  # an object with hook implementations, not an installed module
        @mlx_zoo.hookimpl
        def register_models(self):
            return [mlx_zoo.Architecture("notebook_tiny", plugin.TinyArgs, plugin.Model)]

    obj = Renamed()
    assert mlx_zoo.register(obj) == ["notebook_tiny"]
    model, _ = mlx_zoo.load(write_zoo_tiny(tmp_path / "n", model_type="notebook_tiny"))
    assert isinstance(model, plugin.Model)
    mlx_zoo.unregister(obj)
    with pytest.raises(PluginNotFoundError):
        mlx_zoo.load(tmp_path / "n")


def test_unknown_model_type_names_package_and_installed(tmp_path, testplugin, monkeypatch,
                                                        write_zoo_tiny):
    monkeypatch.setattr(registry, "known_package", {"zoo_absent": "mlx-zoo-absent"}.get)
    ckpt = write_zoo_tiny(tmp_path / "q", model_type="zoo_absent")
    with pytest.raises(PluginNotFoundError) as e:
        mlx_zoo.load(ckpt)
    msg = str(e.value)
    assert "'zoo_absent'" in msg and "pip install mlx-zoo-absent" in msg and "zoo_tiny" in msg
    assert "config.json" in msg
    ckpt2 = write_zoo_tiny(tmp_path / "x", model_type="no_such_arch")
    with pytest.raises(PluginNotFoundError, match="no_such_arch.*Installed model types"):
        mlx_zoo.load(ckpt2)


def test_block_list_switches_a_plugin_off(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MLX_ZOO_PLUGINS", "-mlx-zoo-testplugin")
    with pytest.raises(PluginNotFoundError):
        mlx_zoo.load(tiny_checkpoint)
    assert any(r.status == "blocked" for r in mlx_zoo.list_plugins()
               if r.distribution == "mlx-zoo-testplugin")


def test_allow_list_admits_only_named_plugins(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MLX_ZOO_PLUGINS", "mlx-zoo-testplugin")
    assert registry.available_model_types() == ["zoo_tiny", "zoo_tiny_alias"]
    mlx_zoo.load(tiny_checkpoint)
    monkeypatch.setenv("MLX_ZOO_PLUGINS", "mlx-qwen2")
    with pytest.raises(PluginNotFoundError):
        mlx_zoo.load(tiny_checkpoint)


def test_conflict_refuses_naming_both_unless_chosen(tmp_path, tiny_checkpoint, monkeypatch,
                                                    write_zoo_tiny, fake_distribution):
    site = fake_distribution(tmp_path / "site", "mlx-zoo-rival", {"zoo_tiny": "rival_plugin"},
                             {"rival_plugin": CLAIMING_MODULE})
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(PluginConflictError) as e:
        mlx_zoo.load(tiny_checkpoint)
    assert "mlx-zoo-rival" in str(e.value) and "mlx-zoo-testplugin" in str(e.value)
    assert "rival_plugin" not in sys.modules  # refused before importing either

    model, _ = mlx_zoo.load(tiny_checkpoint, plugin="mlx-zoo-rival")
    assert type(model).__name__ == "OtherModel"
    monkeypatch.setenv("MLX_ZOO_PREFER", "zoo_tiny=mlx-zoo-testplugin")
    model, _ = mlx_zoo.load(tiny_checkpoint)
    assert type(model).__name__ == "Model"
    # other model types are unaffected by the conflict
    mlx_zoo.load(write_zoo_tiny(tmp_path / "alias", model_type="zoo_tiny_alias"))
    statuses = {r.distribution: r.status for r in mlx_zoo.list_plugins()
                if r.model_type == "zoo_tiny"}
    assert statuses == {"mlx-zoo-rival": "conflict", "mlx-zoo-testplugin": "conflict"}


def test_plugin_failing_to_import_is_broken_not_missing(tmp_path, testplugin, monkeypatch,
                                                        write_zoo_tiny, fake_distribution):
    site = fake_distribution(tmp_path / "site", "mlx-zoo-broken", {"zoo_broken": "broken_plugin"},
                             {"broken_plugin": "raise RuntimeError('boom at import')\n"})
    monkeypatch.syspath_prepend(str(site))
    ckpt = write_zoo_tiny(tmp_path / "b", model_type="zoo_broken")
    with pytest.raises(PluginLoadError) as e:
        mlx_zoo.load(ckpt)
    assert not isinstance(e.value, PluginNotFoundError)
    assert "mlx-zoo-broken" in str(e.value) and "boom at import" in str(e.value)
    assert isinstance(e.value.__cause__, RuntimeError)
    rows = {r.distribution: r for r in mlx_zoo.list_plugins(check=True)}
    assert rows["mlx-zoo-broken"].status == "broken"
    assert rows["mlx-zoo-testplugin"].status == "ok"
    mlx_zoo.load(write_zoo_tiny(tmp_path / "ok"))  # others keep working


def test_plugin_whose_hook_raises_is_broken(tmp_path, testplugin, monkeypatch, write_zoo_tiny,
                                            fake_distribution):
    source = textwrap.dedent("""
        from mlx_zoo import hookimpl

        @hookimpl
        def register_models():
            raise ValueError("hook exploded")
    """)
    site = fake_distribution(tmp_path / "site", "mlx-zoo-badhook", {"zoo_badhook": "badhook"},
                             {"badhook": source})
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(PluginLoadError, match="mlx-zoo-badhook.*hook exploded") as e:
        mlx_zoo.load(write_zoo_tiny(tmp_path / "h", model_type="zoo_badhook"))
    assert isinstance(e.value.__cause__, ValueError)
    mlx_zoo.load(write_zoo_tiny(tmp_path / "ok"))


def test_entry_point_without_matching_architecture_is_broken(tmp_path, testplugin, monkeypatch,
                                                             write_zoo_tiny, fake_distribution):
    site = fake_distribution(tmp_path / "site", "mlx-zoo-liar", {"zoo_other": "mlx_zoo_testplugin"})
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(PluginLoadError, match="no Architecture for it"):
        mlx_zoo.load(write_zoo_tiny(tmp_path / "l", model_type="zoo_other"))
