"""``mlx-zoo new-plugin NAME --model-type T [--dest DIR] [--force]``: write a new plugin
distribution from the template that ships with the core (``mlx_zoo/template/plugin``).

The result, ``mlx-NAME/`` (a buildable, installable, tested distribution)::

    pyproject.toml            name mlx-NAME, dependency mlx-zoo>=X.Y,<X.Y+1, a [test] extra,
                              the entry point  T = "mlx_NAME"
    README.md, .gitignore
    src/mlx_NAME/__init__.py  the spec_version and register_models hooks
    src/mlx_NAME/T.py         ModelArgs and Model on mlx_zoo.decoder (Llama's layout), under a
                              docstring header to fill in with what it implements and cites
    tests/test_mlx_NAME.py    a PluginConformance subclass with a tiny config, against
                              transformers' LlamaForCausalLM

Templates are plain :class:`string.Template` files (``$name`` placeholders; no dependency).
Every check runs before anything is written, and the files are written into a temporary
directory beside the destination and moved into place at once: a refused or failed run leaves
nothing behind. Bad input raises :class:`NewPluginError` (an :class:`~mlx_zoo.MlxZooError`,
exit status 2 from the command line).

Only the standard library is imported at module level (the CLI lists this command cheaply);
:mod:`mlx_zoo.registry` is imported when checking for model_types that are already installed.
"""

from __future__ import annotations

import argparse
import keyword
import os
import re
import shutil
import tempfile
from pathlib import Path
from string import Template

from .errors import MlxZooError
from .hookspecs import SPEC_VERSION

__all__ = ["NewPluginError", "add_arguments", "new_plugin", "render", "run",
           "TEMPLATE_DIR", "COMMAND"]

TEMPLATE_DIR = Path(__file__).parent / "template" / "plugin"
"""The template tree (package data of the core's wheel). A file ``X.tmpl`` becomes ``X``, with
``__module__`` / ``__model_type__`` in its path replaced; ``gitignore`` becomes ``.gitignore``."""

# PEP 508 names (https://peps.python.org/pep-0508/#names), and their PEP 503 normal form.
_PEP508_NAME = re.compile(r"([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])", re.IGNORECASE)
_MODEL_TYPE = re.compile(r"[a-z][a-z0-9_]*")
MAX_MODEL_TYPE = 64
RESERVED_NAMES = frozenset({"zoo"})  # mlx-zoo is the core


class NewPluginError(MlxZooError):
    """``mlx-zoo new-plugin`` refused its input (a name, a model_type, a destination); nothing
    was written."""


def _core_range() -> str:
    """``>=X.Y,<X.(Y+1)`` (``>=X.Y,<X+1`` from 1.0 on): the core series a new plugin pins."""
    from . import __version__

    major, minor = (int(part) for part in re.findall(r"\d+", __version__)[:2])
    upper = f"{major}.{minor + 1}" if major == 0 else f"{major + 1}"
    return f">={major}.{minor},<{upper}"


def check_name(name: str) -> str:
    """The plugin's short name (``NAME`` of ``mlx-NAME``): a PEP 508 distribution name in its
    normalised form (lowercase letters, digits, single hyphens; PEP 503). A leading ``mlx-`` is
    dropped (``mlx-myarch`` and ``myarch`` both give ``mlx-myarch``)."""
    if not isinstance(name, str) or not _PEP508_NAME.fullmatch(name):
        raise NewPluginError(
            f"plugin name {name!r} is not a valid distribution name (PEP 508: letters, digits, "
            "'-', '_', '.', starting and ending with a letter or digit)")
    normal = re.sub(r"[-_.]+", "-", name).lower()
    if name != normal:
        raise NewPluginError(
            f"plugin name {name!r} is not in normalised form (PEP 503: lowercase, single "
            f"hyphens): use {normal!r}")
    short = normal[len("mlx-"):] if normal.startswith("mlx-") else normal
    if not short or short == "mlx":
        raise NewPluginError(f"plugin name {name!r} names no architecture: e.g. 'myarch' "
                             "gives the distribution mlx-myarch")
    if short in RESERVED_NAMES:
        raise NewPluginError(f"plugin name {name!r} would be mlx-{short}, the core's own name")
    return short


def check_model_type(model_type: str) -> str:
    """A model_type a plugin may declare here: lowercase letters, digits and underscores,
    starting with a letter, at most 64 characters, and not a Python keyword -- it is the entry
    point's name and the name of the model's module."""
    if not isinstance(model_type, str) or not _MODEL_TYPE.fullmatch(model_type):
        raise NewPluginError(
            f"model_type {model_type!r} is not valid: lowercase letters, digits and '_', "
            "starting with a letter (config.json's \"model_type\", e.g. 'myarch' or "
            "'myarch_v2')")
    if len(model_type) > MAX_MODEL_TYPE:
        raise NewPluginError(f"model_type {model_type!r} is longer than {MAX_MODEL_TYPE} "
                             "characters")
    if keyword.iskeyword(model_type):
        raise NewPluginError(f"model_type {model_type!r} is a Python keyword: it names the "
                             "model's module, which could not be imported")
    return model_type


def _clashes(dist: str, model_type: str) -> list[str]:
    """What the new plugin would collide with: an installed distribution of the same name, an
    installed plugin serving the same model_type, the project's own plugin for it."""
    from . import registry

    found = []
    for entry in registry.installed_entries():
        if entry.model_type == model_type:
            found.append(f"model_type {model_type!r} is already served by the installed "
                         f"{entry.distribution} {entry.version}")
    known = registry.known_package(model_type)
    if known and known != dist and not any(known in line for line in found):
        found.append(f"model_type {model_type!r} is served by the project's plugin {known}")
    try:
        from importlib import metadata

        installed = metadata.distribution(dist)
    except Exception:  # PackageNotFoundError, or broken metadata: no clash to report
        installed = None
    if installed is not None:
        found.append(f"a distribution named {dist} ({installed.version}) is already installed")
    return found


def _camel(short: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_.]", short) if part)


def render(name: str, model_type: str) -> dict[str, str]:
    """The files of plugin ``mlx-NAME`` serving ``model_type``: ``{relative path: text}``
    (checks both, as :func:`new_plugin` does, but not what is installed)."""
    short, model_type = check_name(name), check_model_type(model_type)
    module = "mlx_" + short.replace("-", "_")
    values = {
        "name": short, "dist": f"mlx-{short}", "module": module, "model_type": model_type,
        "title": _camel(short), "camel": _camel(short), "spec": str(SPEC_VERSION),
        "core_range": _core_range(),
    }
    files = {}
    for source in sorted(TEMPLATE_DIR.rglob("*.tmpl")):
        relative = source.relative_to(TEMPLATE_DIR).as_posix()[:-len(".tmpl")]
        relative = relative.replace("__module__", module).replace("__model_type__", model_type)
        if relative == "gitignore":
            relative = ".gitignore"
        files[relative] = Template(source.read_text(encoding="utf-8")).substitute(values)
    if not files:  # an install without the package data
        raise NewPluginError(f"the plugin template is missing from this installation "
                             f"({TEMPLATE_DIR}): reinstall mlx-zoo")
    return files


def new_plugin(name: str, model_type: str, dest: str | os.PathLike | None = None, *,
               force: bool = False) -> Path:
    """Write plugin ``mlx-NAME`` serving ``model_type`` into ``dest`` (default
    ``./mlx-NAME``), which must not exist; returns it. ``force`` allows a model_type or a
    distribution name that is already installed (e.g. to write a replacement); it never
    overwrites a destination."""
    if dest is not None and not isinstance(dest, (str, os.PathLike)):
        raise TypeError(f"new_plugin: dest must be a folder path (str or os.PathLike) or None, "
                        f"got {type(dest).__name__} {dest!r:.60}")
    if not isinstance(force, bool):
        raise TypeError(f"new_plugin: force must be True or False, got {force!r:.60}")
    files = render(name, model_type)
    short = check_name(name)
    dist = f"mlx-{short}"
    target = Path(dest) if dest is not None else Path.cwd() / dist
    if os.path.lexists(target):
        raise NewPluginError(f"destination {target} already exists: choose another --dest "
                             "(new-plugin never overwrites)")
    if not force:
        clashes = _clashes(dist, model_type)
        if clashes:
            raise NewPluginError("; ".join(clashes) + " (pass --force to write the plugin "
                                 "anyway, or choose another name / --model-type)")
    parent = target.absolute().parent
    if not parent.is_dir():
        raise NewPluginError(f"cannot create {target}: {parent} is not a directory")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    except OSError as e:
        raise NewPluginError(f"cannot write into {parent}: {e.strerror or e}") from e
    try:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        staging.chmod(0o777 & ~_umask())
        os.rename(staging, target)  # atomic; fails if target appeared meanwhile (non-empty)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise NewPluginError(f"cannot create {target}: {e.strerror or e}") from e
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``new-plugin`` subcommand's arguments."""
    parser.add_argument("name", metavar="NAME",
                        help="the plugin's name: writes the distribution mlx-NAME with the "
                             "package mlx_NAME (a normalised distribution name: lowercase "
                             "letters, digits, single hyphens)")
    parser.add_argument("--model-type", required=True, metavar="T",
                        help="the model_type it serves (config.json's \"model_type\"): "
                             "lowercase letters, digits, '_', starting with a letter")
    parser.add_argument("--dest", metavar="DIR", default=None,
                        help="directory to create (default: ./mlx-NAME); must not exist")
    parser.add_argument("--force", action="store_true",
                        help="write it even if the model_type or the distribution name is "
                             "already installed (never overwrites --dest)")


def run(args: argparse.Namespace) -> int:
    """Write the plugin and say what to do next."""
    target = new_plugin(args.name, args.model_type, args.dest, force=args.force)
    short = check_name(args.name)
    module = "mlx_" + short.replace("-", "_")
    print(f"wrote mlx-{short} (model_type {args.model_type}) into {target}:")
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(target)}")
    print(f"next: fill in the docstring of src/{module}/{args.model_type}.py, then\n"
          f"  pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu\n"
          f"  pip install -e \"{target}[test]\" && python -m pytest {target}")
    return 0


COMMAND = ("write a new plugin distribution from the template", add_arguments, run)
"""``(help, add_arguments, run)``: the entry ``mlx_zoo.cli.COMMANDS["new-plugin"]`` takes."""
