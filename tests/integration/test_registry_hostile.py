"""Plugins that misbehave in ways an ``except Exception`` does not see (``SystemExit`` at module
top, a custom ``BaseException``), and the "not found" errors that used to give wrong advice: a
plugin switched off by ``MLX_ZOO_PLUGINS``, and ``plugin=`` / ``MLX_ZOO_PREFER`` naming a
distribution that does not provide the model_type."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mlx_zoo
from mlx_zoo import PluginLoadError, PluginNotFoundError, registry

pytestmark = pytest.mark.usefixtures("isolated_registry")

BOOM = textwrap.dedent("""
    class Boom(BaseException):
        pass

    raise Boom("custom BaseException at import")
""")

HOOK_RAISES = textwrap.dedent("""
    from mlx_zoo import hookimpl

    @hookimpl
    def register_models():
        raise {exc}
""")

MODULE_NUMBERS = itertools.count()

HOSTILE_IMPORTS = {
    "system_exit": ("raise SystemExit(3)\n", SystemExit, "SystemExit: 3"),
    "base_exception": (BOOM, BaseException, "Boom: custom BaseException at import"),
}


@pytest.fixture
def hostile_site(fake_distribution):
    """``hostile_site(root, source, name=..., model_type=...)``: a fake distribution whose module
    has a name of its own (a module imported by an earlier test stays in ``sys.modules``)."""

    def write(root: Path, source: str, name: str = "mlx-zoo-hostile",
              model_type: str = "zoo_hostile") -> Path:
        module = f"hostile_{next(MODULE_NUMBERS)}"
        return fake_distribution(root, name, {model_type: module}, {module: source})

    return write


@pytest.mark.parametrize("kind", sorted(HOSTILE_IMPORTS))
def test_base_exception_at_import_is_a_broken_plugin(tmp_path, testplugin, monkeypatch, kind,
                                                     write_zoo_tiny, hostile_site):
    source, cause, text = HOSTILE_IMPORTS[kind]
    monkeypatch.syspath_prepend(str(hostile_site(tmp_path / "site", source)))
    with pytest.raises(PluginLoadError) as e:
        mlx_zoo.load(write_zoo_tiny(tmp_path / "h", model_type="zoo_hostile"))
    assert "mlx-zoo-hostile" in str(e.value) and text in str(e.value)
    assert isinstance(e.value.__cause__, cause)
    rows = {r.distribution: r for r in mlx_zoo.list_plugins(check=True)}
    assert rows["mlx-zoo-hostile"].status == "broken"
    assert text in rows["mlx-zoo-hostile"].error
    assert rows["mlx-zoo-testplugin"].status == "ok"
    mlx_zoo.load(write_zoo_tiny(tmp_path / "ok"))  # the others keep working


@pytest.mark.parametrize("exc", ["SystemExit(1)", "type('Boom', (BaseException,), {})('hook')"])
def test_base_exception_in_register_models_is_a_broken_plugin(tmp_path, testplugin, monkeypatch,
                                                               exc, write_zoo_tiny, hostile_site):
    site = hostile_site(tmp_path / "site", HOOK_RAISES.format(exc=exc))
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(PluginLoadError, match="mlx-zoo-hostile.*register_models"):
        mlx_zoo.load(write_zoo_tiny(tmp_path / "h", model_type="zoo_hostile"))


def test_register_models_returning_a_non_list_is_a_broken_plugin(tmp_path, testplugin,
                                                                  monkeypatch, write_zoo_tiny,
                                                                  hostile_site):
    source = "from mlx_zoo import hookimpl\n\n@hookimpl\ndef register_models():\n    return 5\n"
    monkeypatch.syspath_prepend(str(hostile_site(tmp_path / "site", source)))
    with pytest.raises(PluginLoadError, match="mlx-zoo-hostile.*not iterable"):
        mlx_zoo.load(write_zoo_tiny(tmp_path / "h", model_type="zoo_hostile"))


@pytest.mark.parametrize("exc", [KeyboardInterrupt, GeneratorExit])
def test_keyboard_interrupt_and_generator_exit_propagate(tmp_path, testplugin, monkeypatch, exc,
                                                         write_zoo_tiny, hostile_site):
    site = hostile_site(tmp_path / "site", f"raise {exc.__name__}()\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(exc):
        mlx_zoo.load(write_zoo_tiny(tmp_path / "h", model_type="zoo_hostile"))
    monkeypatch.syspath_prepend(str(hostile_site(
        tmp_path / "site2", HOOK_RAISES.format(exc=exc.__name__ + "()"), name="mlx-zoo-hostile2",
        model_type="zoo_hostile2")))
    with pytest.raises(exc):
        mlx_zoo.load(write_zoo_tiny(tmp_path / "h2", model_type="zoo_hostile2"))


def test_call_hook_reports_base_exception_as_broken_plugin():
    class Rope:
        @mlx_zoo.hookimpl
        def register_rope_variants(self):
            raise SystemExit("bye")

    plugin = Rope()
    mlx_zoo.register(plugin, name="hostile-rope")
    try:
        with pytest.raises(PluginLoadError, match="hostile-rope.*register_rope_variants.*bye"):
            registry.call_hook("register_rope_variants")
    finally:
        mlx_zoo.unregister(plugin)


def test_cli_list_survives_base_exception_plugins(tmp_path, repo_root, fake_distribution):
    """``mlx-zoo list`` in a fresh interpreter with both hostile plugins installed: the table,
    the broken rows with their errors, exit status 0."""
    site = tmp_path / "site"
    for kind, (source, _, _) in HOSTILE_IMPORTS.items():
        fake_distribution(site, f"mlx-zoo-{kind.replace('_', '-')}", {f"zoo_{kind}": kind},
                          {kind: source})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("MLX_ZOO_PLUGINS", None)
    out = subprocess.run([sys.executable, "-m", "mlx_zoo.cli", "list"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["MODEL", "TYPE"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.startswith("zoo_")
            or line.startswith("qwen2")}
    assert rows["zoo_system_exit"][-1] == "broken" and rows["zoo_base_exception"][-1] == "broken"
    assert rows["qwen2"][-1] == "ok"
    assert "SystemExit: 3" in out.stdout and "Boom: custom BaseException" in out.stdout


# -- "not found", with the right reason ----------------------------------------------------------


@pytest.mark.parametrize("plugins", ["-mlx-zoo-testplugin", "mlx-qwen2"])
def test_disabled_plugin_names_the_variable_not_pip(tiny_checkpoint, monkeypatch, plugins):
    monkeypatch.setenv("MLX_ZOO_PLUGINS", plugins)
    with pytest.raises(PluginNotFoundError) as e:
        mlx_zoo.load(tiny_checkpoint)
    msg = str(e.value)
    assert (f"mlx-zoo-testplugin provides 'zoo_tiny' but is disabled by "
            f"MLX_ZOO_PLUGINS={plugins!r}") in msg
    assert "pip install" not in msg and "config.json" in msg
    assert e.value.disabled == ["mlx-zoo-testplugin"] and e.value.disabled_by == plugins
    assert e.value.model_type == "zoo_tiny" and "zoo_tiny" not in e.value.installed


def test_plugin_argument_naming_another_distribution(tiny_checkpoint):
    with pytest.raises(PluginNotFoundError) as e:
        mlx_zoo.load(tiny_checkpoint, plugin="mlx-qwen2")
    msg = str(e.value)
    assert ("mlx-qwen2 (chosen by plugin='mlx-qwen2') does not provide model_type 'zoo_tiny'"
            in msg)
    assert "Installed distributions that provide it: mlx-zoo-testplugin" in msg
    assert "pip install" not in msg and "Installed model types" not in msg
    assert (e.value.chosen, e.value.chosen_by) == ("mlx-qwen2", "plugin=")
    assert e.value.providers == ["mlx-zoo-testplugin"]


def test_prefer_naming_an_unknown_distribution(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MLX_ZOO_PREFER", "zoo_tiny=Not_Installed")
    with pytest.raises(PluginNotFoundError) as e:
        mlx_zoo.load(tiny_checkpoint)
    msg = str(e.value)
    assert "not-installed (chosen by MLX_ZOO_PREFER='zoo_tiny=not-installed')" in msg
    assert "provide it: mlx-zoo-testplugin" in msg and "pip install" not in msg
    assert (e.value.chosen, e.value.chosen_by) == ("not-installed", "MLX_ZOO_PREFER")


def test_plugin_argument_naming_a_disabled_provider(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MLX_ZOO_PLUGINS", "-mlx-zoo-testplugin")
    with pytest.raises(PluginNotFoundError) as e:
        mlx_zoo.load(tiny_checkpoint, plugin="mlx_zoo_testplugin")
    assert str(e.value).endswith(
        "mlx-zoo-testplugin (chosen by plugin='mlx-zoo-testplugin') provides 'zoo_tiny' but is "
        "disabled by MLX_ZOO_PLUGINS='-mlx-zoo-testplugin'.")


def test_chosen_distribution_when_nothing_provides_the_type(tmp_path, testplugin, monkeypatch,
                                                            write_zoo_tiny):
    monkeypatch.setattr(registry, "known_package", {"zoo_absent": "mlx-zoo-absent"}.get)
    ckpt = write_zoo_tiny(tmp_path / "a", model_type="zoo_absent")
    with pytest.raises(PluginNotFoundError, match="No installed distribution provides it. "
                       "Install it with: pip install mlx-zoo-absent"):
        mlx_zoo.load(ckpt, plugin="mlx-zoo-testplugin")
    with pytest.raises(PluginNotFoundError, match="no plugin provides model_type 'zoo_absent'. "
                       "Install it with: pip install mlx-zoo-absent. Installed model types: "):
        mlx_zoo.load(ckpt)
