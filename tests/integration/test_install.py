"""Each plugin installs and uninstalls on its own: pip install registers its model types with
the core (`mlx-zoo list` shows them), pip uninstall removes them."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
PLUGINS = sorted(p for p in (REPO / "plugins").iterdir() if (p / "pyproject.toml").is_file())


def declared(plugin_dir: Path) -> tuple[str, list[str]]:
    """The distribution's name and the model types it declares (none for a bridge, whose
    types ``mlx-zoo list`` shows in its own section)."""
    project = tomllib.loads((plugin_dir / "pyproject.toml").read_text())["project"]
    return project["name"], sorted(project["entry-points"].get("mlx_zoo.models", {}))


def listed_model_types(distribution: str) -> set[str]:
    out = subprocess.run([str(Path(sys.executable).parent / "mlx-zoo"), "list"],
                         capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines()[1:]
            if len(line.split()) > 1 and line.split()[1] == distribution}


def was_editable(distribution: str) -> bool:
    try:
        direct = metadata.distribution(distribution).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return False
    return bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))


@pytest.mark.parametrize("plugin_dir", PLUGINS, ids=[p.name for p in PLUGINS])
def test_plugin_installs_and_uninstalls_on_its_own(plugin_dir, pip_run):
    pip = pip_run
    distribution, model_types = declared(plugin_dir)
    editable = was_editable(distribution)
    install = ["install", "--quiet", "--no-deps", "--no-build-isolation"]
    try:
        pip("uninstall", "--quiet", "--yes", distribution)
        assert listed_model_types(distribution) == set()
        pip(*install, str(plugin_dir))
        assert listed_model_types(distribution) == set(model_types)
        if not model_types:  # a bridge: listed as one
            assert f"Bridged by {distribution} " in subprocess.run(
                [str(Path(sys.executable).parent / "mlx-zoo"), "list", "--no-check"],
                capture_output=True, text=True, check=True).stdout
        pip("uninstall", "--quiet", "--yes", distribution)
        assert listed_model_types(distribution) == set()
    finally:  # leave the environment as it was
        pip(*install, *(["-e"] if editable else []), str(plugin_dir))
