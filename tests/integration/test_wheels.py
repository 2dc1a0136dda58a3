"""The release artefacts hold what they must: each wheel (built from its sdist by
scripts/build_dists.sh, as PyPI users get it) contains exactly the files of its source package --
every module, the core's plugin-author kit (mlx_zoo/testing) and new-plugin template, its
known_plugins.json, each plugin's demo checkpoint -- and nothing stale; its metadata declares the
entry points of its pyproject.toml, the plugins pin the core series.

Reads the wheels in $MLX_ZOO_DIST when set (scripts/test_wheels.sh sets it to the dist/ it has
just built); otherwise builds them into a temporary directory (~30 s, in build_dists.sh's own
virtual environment)."""

from __future__ import annotations

import configparser
import email.parser
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
PROJECTS = [REPO / "core"] + sorted(p for p in (REPO / "plugins").iterdir()
                                    if (p / "pyproject.toml").is_file())
IGNORED = ("__pycache__", ".egg-info", ".pyc")

pytestmark = pytest.mark.slow


def project_of(directory: Path) -> dict:
    return tomllib.loads((directory / "pyproject.toml").read_text())["project"]


def normalised(name: str) -> str:
    return name.replace("-", "_").lower()


def source_files(directory: Path) -> set[str]:
    """The files of the project's packages under src/, as paths inside a wheel."""
    src = directory / "src"
    return {p.relative_to(src).as_posix() for p in src.rglob("*")
            if p.is_file() and not any(part.endswith(IGNORED) for part in p.parts)}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    if os.environ.get("MLX_ZOO_DIST"):
        return Path(os.environ["MLX_ZOO_DIST"]).resolve()
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(["bash", str(REPO / "scripts" / "build_dists.sh")], cwd=REPO,
                          env={**os.environ, "DIST_DIR": str(out)}, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def artefacts(dist: Path, directory: Path) -> tuple[Path, Path]:
    project = project_of(directory)
    stem = f"{normalised(project['name'])}-{project['version']}"
    wheel, sdist = dist / f"{stem}-py3-none-any.whl", dist / f"{stem}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), f"{stem}: run scripts/build_dists.sh"
    return wheel, sdist


@pytest.mark.parametrize("directory", PROJECTS, ids=[p.name for p in PROJECTS])
def test_wheel_holds_exactly_the_source_package(dist, directory):
    wheel, sdist = artefacts(dist, directory)
    with zipfile.ZipFile(wheel) as archive:
        names = {n for n in archive.namelist() if ".dist-info/" not in n}
    expected = source_files(directory)
    assert names - expected == set(), "files in the wheel that the sources do not have (stale?)"
    assert expected - names == set(), "files of the sources missing from the wheel (package-data)"
    with tarfile.open(sdist) as archive:
        top = f"{sdist.name[:-len('.tar.gz')]}/"
        in_sdist = {n[len(top):] for n in archive.getnames()}
    assert {"pyproject.toml", "PKG-INFO"} <= in_sdist
    assert {f"src/{name}" for name in expected} <= in_sdist


@pytest.mark.parametrize("directory", PROJECTS, ids=[p.name for p in PROJECTS])
def test_wheel_metadata(dist, directory):
    wheel, _ = artefacts(dist, directory)
    project = project_of(directory)
    info = f"{normalised(project['name'])}-{project['version']}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = configparser.ConfigParser(delimiters=("=",))
        entry_points.optionxform = str
        entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
    assert metadata["Name"] == project["name"] and metadata["Version"] == project["version"]
    declared = project.get("entry-points", {}).get("mlx_zoo.models", {})
    if declared:
        assert dict(entry_points["mlx_zoo.models"]) == declared
    if directory.name == "core":
        assert dict(entry_points["console_scripts"]) == {"mlx-zoo": "mlx_zoo.cli:main"}
        assert dict(entry_points["pytest11"]) == {"mlx_zoo": "mlx_zoo.testing.pytest_plugin"}
        assert "test" in metadata.get_all("Provides-Extra")
    else:
        requires = [r.replace(" ", "") for r in metadata.get_all("Requires-Dist")]
        assert any(r.startswith("mlx-zoo") and "<0.2" in r and ">=0.1" in r
                   and "extra" not in r for r in requires), requires


def test_core_wheel_ships_the_kit_and_the_template(dist):
    wheel, _ = artefacts(dist, REPO / "core")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for module in ("__init__", "conformance", "helpers", "pytest_plugin", "reference"):
        assert f"mlx_zoo/testing/{module}.py" in names
    template = {n for n in names if n.startswith("mlx_zoo/template/")}
    assert "mlx_zoo/template/plugin/pyproject.toml.tmpl" in template and len(template) >= 6
    assert {"mlx_zoo/known_plugins.json", "mlx_zoo/newplugin.py"} <= names
    assert not any(n.startswith("mlx_zoo/demos/") and n.count("/") > 2 for n in names), (
        "demo checkpoints ship with their plugins, not the core")


@pytest.mark.parametrize("directory", PROJECTS[1:], ids=[p.name for p in PROJECTS[1:]])
def test_plugin_wheel_ships_its_demo(dist, directory):
    package = normalised(project_of(directory)["name"])
    demo = directory / "src" / package / "demo"
    if not demo.is_dir():
        pytest.skip(f"{directory.name} has no demo checkpoint")
    wheel, _ = artefacts(dist, directory)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    needed = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert {f"{package}/demo/{n}" for n in needed} <= names
