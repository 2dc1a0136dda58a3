"""``mlx-zoo new-plugin``: the template writes a plugin distribution that builds, installs into a
fresh virtual environment next to the core of this checkout, and passes its own conformance
tests against transformers' LlamaForCausalLM; bad names, model_types and destinations are
refused with an MlxZooError before anything is written."""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

import mlx_zoo
from mlx_zoo import newplugin
from mlx_zoo.newplugin import NewPluginError, new_plugin

REPO = Path(__file__).resolve().parents[2]
EXPECTED_FILES = {".gitignore", "README.md", "pyproject.toml", "src/mlx_my_arch/__init__.py",
                  "src/mlx_my_arch/myarch.py", "tests/test_mlx_my_arch.py"}


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def command(argv: list[str]) -> int:
    """``mlx-zoo new-plugin ARGV`` through the subcommand's own parser and the CLI's error
    handling (what mlx_zoo.cli.main does with every command)."""
    parser = argparse.ArgumentParser(prog="mlx-zoo new-plugin")
    newplugin.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return newplugin.run(args)
    except mlx_zoo.MlxZooError as e:
        print(f"mlx-zoo: error: {e}", file=sys.stderr)
        return 2


@pytest.fixture
def plugin(tmp_path) -> Path:
    return new_plugin("my-arch", "myarch", tmp_path / "mlx-my-arch")


def test_writes_the_distribution(plugin):
    assert files_under(plugin) == EXPECTED_FILES
    project = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]
    assert project["name"] == "mlx-my-arch"
    assert project["dependencies"] == ["mlx-zoo>=0.1,<0.2"]
    assert project["optional-dependencies"]["test"] == ["mlx-zoo[test]>=0.1,<0.2", "torch"]
    assert project["entry-points"]["mlx_zoo.models"] == {"myarch": "mlx_my_arch"}
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in (
        plugin / "pyproject.toml").read_text()
    for relative in EXPECTED_FILES:
        assert "$" not in (plugin / relative).read_text(), f"unfilled placeholder in {relative}"


def test_sources_follow_the_plugin_conventions(plugin):
    hooks = ast.parse((plugin / "src/mlx_my_arch/__init__.py").read_text())
    functions = {n.name: n for n in hooks.body if isinstance(n, ast.FunctionDef)}
    assert set(functions) == {"spec_version", "register_models"}
    returned = functions["spec_version"].body[-1].value
    assert isinstance(returned, ast.Constant) and returned.value == mlx_zoo.SPEC_VERSION
    model = ast.parse((plugin / "src/mlx_my_arch/myarch.py").read_text())
    assert "arxiv.org" in ast.get_docstring(model)  # the header to fill in says what to cite
    names = [type(n).__name__ for n in model.body[1:]]
    assert names.index("Assign") < names.index("ClassDef")  # __all__ before the classes
    classes = [n for n in model.body if isinstance(n, ast.ClassDef)]
    assert [c.name for c in classes] == ["ModelArgs", "Model"]
    assert all(ast.get_docstring(c) for c in classes)
    tests = (plugin / "tests/test_mlx_my_arch.py").read_text()
    assert "class TestMyArch(PluginConformance):" in tests and "LlamaForCausalLM" in tests
    for path in plugin.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")


def test_generated_model_matches_llama(plugin, isolated_registry):
    """In process (the installed run is the slow test below): the generated model, registered
    by hand, equals transformers' LlamaForCausalLM on sharpened weights."""
    import mlx.core as mx
    import numpy as np

    from mlx_zoo.testing import (
        PLAIN,
        TOLERANCE,
        logits,
        relative_error,
        transformers_reference,
        write_tiny_checkpoint,
    )

    sys.path.insert(0, str(plugin / "src"))
    try:
        import mlx_my_arch

        isolated_registry.register(mlx_my_arch)
        config = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
        path = write_tiny_checkpoint(plugin.parent / "ckpt", "myarch", config)
        model, _ = mlx_zoo.load(path, **PLAIN)
        ids = np.random.default_rng(0).integers(0, 320, (1, 24))
        weights = {k: np.array(v) for k, v in mx.load(str(path / "model.safetensors")).items()}
        llama = transformers_reference("LlamaForCausalLM")
        expected = llama({**config, "model_type": "llama"}, weights, ids)
        assert relative_error(logits(model, ids), expected) < TOLERANCE
    finally:
        sys.path.remove(str(plugin / "src"))
        for name in [n for n in sys.modules if n == "mlx_my_arch" or n.startswith("mlx_my_arch.")]:
            del sys.modules[name]


def test_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert command(["mlx-my-arch", "--model-type", "myarch"]) == 0  # the mlx- prefix is optional
    out = capsys.readouterr().out
    assert "wrote mlx-my-arch (model_type myarch)" in out and "pytest" in out
    assert files_under(tmp_path / "mlx-my-arch") == EXPECTED_FILES


BAD_NAMES = ["", "my arch", "-myarch", "myarch-", "my/arch", "é", "My-Arch", "my_arch",
             "my--arch", "mlx-", "zoo", "mlx-zoo"]
BAD_MODEL_TYPES = ["", "MyArch", "my-arch", "1arch", "_arch", "my.arch", "class", "a" * 65,
                   "arch\n"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_name_is_refused(tmp_path, capsys, name):
    assert command(["--model-type", "myarch", "--dest", str(tmp_path / "out"), "--", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlx-zoo: error: plugin name") and repr(name) in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model_type", BAD_MODEL_TYPES)
def test_bad_model_type_is_refused(tmp_path, capsys, model_type):
    assert command(["my-arch", "--model-type", model_type, "--dest", str(tmp_path / "o")]) == 2
    assert f"model_type {model_type!r}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_normalised_form_is_suggested():
    with pytest.raises(NewPluginError, match="use 'my-arch'"):
        new_plugin("My_Arch", "myarch")


def test_installed_model_type_needs_force(tmp_path, testplugin):
    with pytest.raises(NewPluginError, match="'zoo_tiny' is already served by the installed "
                                             "mlx-zoo-testplugin .*--force"):
        new_plugin("tiny", "zoo_tiny", tmp_path / "a")
    assert list(tmp_path.iterdir()) == []
    assert (new_plugin("tiny", "zoo_tiny", tmp_path / "a", force=True) / "pyproject.toml").exists()


def test_known_model_type_and_installed_distribution_need_force(tmp_path, monkeypatch):
    monkeypatch.setattr(mlx_zoo.registry, "known_package", {"arch9": "mlx-arch9"}.get)
    with pytest.raises(NewPluginError, match="'arch9' is served by the project's plugin mlx-a"):
        new_plugin("myarch9", "arch9", tmp_path / "a")
    with pytest.raises(NewPluginError, match="a distribution named mlx-zoo-testplugin"):
        new_plugin("zoo-testplugin", "brand_new", tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_is_refused_even_with_force(tmp_path, capsys):
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    for extra in ([], ["--force"]):
        assert command(["my-arch", "--model-type", "myarch", "--dest", str(dest), *extra]) == 2
        assert "already exists" in capsys.readouterr().err
    assert files_under(dest) == {"keep.txt"} and (dest / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NewPluginError, match="already exists"):
        new_plugin("my-arch", "myarch", tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken"]


def test_unwritable_destination_leaves_nothing(tmp_path, monkeypatch):
    with pytest.raises(NewPluginError, match="is not a directory"):
        new_plugin("my-arch", "myarch", tmp_path / "missing" / "deeper")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(newplugin.os, "rename", fail)
    with pytest.raises(NewPluginError, match="No space left on device"):
        new_plugin("my-arch", "myarch", tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_has_the_command(capsys):
    from mlx_zoo.cli import main

    assert main(["new-plugin", "Bad Name", "--model-type", "x"]) == 2
    assert "plugin name 'Bad Name'" in capsys.readouterr().err


# -- the real thing: build, install into a fresh venv, run the generated tests -----------------


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


@pytest.mark.slow
def test_generated_plugin_installs_and_passes_its_tests(tmp_path):
    """~65 s on the 2-core CI machine with pip's cache warm (venv + install ~50 s, the
    generated suite ~11 s); the installs come from pip's cache, torch from the local CPU wheel
    (pinned through requirements-test.txt as a constraints file)."""
    started = time.monotonic()
    plugin = new_plugin("my-arch", "myarch", tmp_path / "mlx-my-arch")
    # the core as this checkout has it (copied: an in-tree build would reuse core/build/)
    core = shutil.copytree(REPO / "core", tmp_path / "core", ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([python, "-m", "pip", "install", "--quiet", "-c", str(REPO / "requirements-test.txt"),
         str(core), f"{plugin}[test]"], env=env, timeout=900)
    where = run([python, "-c", "import mlx_zoo, mlx_my_arch; print(mlx_zoo.__file__); "
                 "print(mlx_my_arch.__file__)"], env=env, cwd=tmp_path).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where  # installed, not sources
    installed = time.monotonic()
    out = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(plugin)],
                         capture_output=True, text=True, env=env, cwd=plugin, timeout=600)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
    print(f"install {installed - started:.0f} s, tests {time.monotonic() - installed:.0f} s: "
          f"{summary}")
