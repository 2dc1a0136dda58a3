"""The versioned plugin contract: a plugin declares the spec version it implements
(``spec_version`` hook), the core refuses one built for a spec it does not load and one whose
``@hookimpl`` names no hook (a misspelt hook would never be called), each with a
:class:`~mlx_zoo.PluginLoadError` naming the plugin -- and the other plugins keep working."""

from __future__ import annotations

import itertools
import textwrap
import types

import pytest

import mlx_zoo
from mlx_zoo import PluginLoadError, hookimpl, hookspecs, registry

pytestmark = pytest.mark.usefixtures("isolated_registry")

NUMBERS = itertools.count()

PLUGIN = textwrap.dedent("""
    from mlx_zoo import hookimpl
    from mlx_zoo_testplugin import Model, TinyArgs
    from mlx_zoo import Architecture

    {extra}

    @hookimpl
    def register_models():
        return [Architecture("zoo_contract", TinyArgs, Model)]
""")


@pytest.fixture
def load_contract_plugin(tmp_path, monkeypatch, fake_distribution, write_zoo_tiny):
    """``load_contract_plugin(extra)``: install (on sys.path) a plugin serving zoo_contract
    whose module holds ``extra`` besides its register_models, and load a checkpoint of it."""

    def load(extra: str):
        module = f"contract_{next(NUMBERS)}"
        site = fake_distribution(tmp_path / "site", "mlx-zoo-contract", {"zoo_contract": module},
                                 {module: PLUGIN.format(extra=textwrap.dedent(extra))})
        monkeypatch.syspath_prepend(str(site))
        return mlx_zoo.load(write_zoo_tiny(tmp_path / "c", model_type="zoo_contract"))

    return load


def test_the_core_loads_its_own_spec():
    assert hookspecs.SPEC_VERSION in hookspecs.COMPATIBLE_SPECS
    assert "spec_version" in registry._hook_names()


def test_declared_compatible_spec_loads(tmp_path, testplugin, monkeypatch, load_contract_plugin):
    model, _ = load_contract_plugin("""
        @hookimpl
        def spec_version():
            return 1
    """)
    assert model is not None


def test_undeclared_spec_is_the_first_one(tmp_path, testplugin, monkeypatch, load_contract_plugin):
    model, _ = load_contract_plugin("")
    assert model is not None


@pytest.mark.parametrize("declared", ["99", "0", "'1'", "True", "None"])
def test_incompatible_spec_is_refused_naming_both_versions(tmp_path, testplugin, monkeypatch,
                                                            declared, load_contract_plugin):
    with pytest.raises(PluginLoadError) as e:
        load_contract_plugin(f"""
            @hookimpl
            def spec_version():
                return {declared}
        """)
    message = str(e.value)
    assert "mlx-zoo-contract" in message and "spec" in message
    assert f"SPEC_VERSION {hookspecs.SPEC_VERSION}" in message
    assert repr(eval(declared)) in message  # the plugin's own declaration


def test_misspelt_hook_is_refused_with_a_suggestion(tmp_path, testplugin, monkeypatch,
                                                    load_contract_plugin):
    with pytest.raises(PluginLoadError) as e:
        load_contract_plugin("""
            @hookimpl
            def register_rope_variant():   # the hook is register_rope_variants
                return {}
        """)
    assert "register_rope_variant" in str(e.value)
    assert "did you mean 'register_rope_variants'" in str(e.value)


def test_a_refused_plugin_leaves_the_others_working(tmp_path, testplugin, monkeypatch,
                                                    write_zoo_tiny, load_contract_plugin):
    with pytest.raises(PluginLoadError):
        load_contract_plugin("""
            @hookimpl
            def spec_version():
                return 99
        """)
    model, _ = mlx_zoo.load(write_zoo_tiny(tmp_path / "ok"))  # the fixture plugin
    assert model is not None
    rows = {r.model_type: r for r in mlx_zoo.list_plugins(check=True)}
    assert rows["zoo_contract"].status == "broken"
    assert rows["zoo_tiny"].status == "ok"


def test_entry_point_naming_a_missing_module(tmp_path, testplugin, monkeypatch, write_zoo_tiny,
                                             fake_distribution):
    root = fake_distribution(tmp_path / "site", "mlx-zoo-ghost", {"zoo_ghost": "no_such_module"})
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(PluginLoadError) as e:
        mlx_zoo.load(write_zoo_tiny(tmp_path / "g", model_type="zoo_ghost"))
    assert "mlx-zoo-ghost" in str(e.value) and "no_such_module" in str(e.value)


def test_in_process_registration_is_checked_too():
    plugin = types.SimpleNamespace(register_modles=hookimpl(lambda: []))
    with pytest.raises(PluginLoadError) as e:
        mlx_zoo.register(plugin, name="notebook-plugin")
    assert "notebook-plugin" in str(e.value) and "register_models" in str(e.value)
    assert not registry.plugin_manager().is_registered(plugin)


def test_every_plugin_of_this_repository_declares_the_spec():
    for entry in registry.installed_entries():
        if entry.distribution.startswith("mlx-zoo-"):
            continue  # the test fixtures
        module = registry.import_plugin(entry)
        assert module.spec_version() == hookspecs.SPEC_VERSION, entry
