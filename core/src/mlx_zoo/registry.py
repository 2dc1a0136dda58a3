"""Finding plugins: entry-point discovery by model_type, the plugin manager, conflicts, and the
allow/block list.

Discovery reads entry-point *metadata* only (``importlib.metadata``); a plugin module is imported
the first time a checkpoint of one of its model_types is loaded, so loading a Qwen2 checkpoint
imports ``mlx_qwen2`` and nothing else.

Environment variables:

``MLX_ZOO_PLUGINS``
    Comma-separated allow/block list of distribution names. ``-name`` blocks a distribution;
    plain names, if any, are the only ones allowed. E.g. ``MLX_ZOO_PLUGINS=-mlx-broken`` switches
    one plugin off without uninstalling it; ``MLX_ZOO_PLUGINS=mlx-qwen2`` allows only that one.
``MLX_ZOO_PREFER``
    Resolves conflicts, as ``model_type=distribution`` pairs separated by commas, when several
    installed distributions claim one model_type.

Bridges (the ``mlx_zoo.bridges`` group, :class:`~mlx_zoo.hookspecs.ModelBridge`) serve model
types they learn at run time, below native plugins: one is imported and asked only when no
enabled native plugin serves a checkpoint's model_type, or when ``plugin=`` /
``MLX_ZOO_PREFER`` names it (:func:`resolve`, :func:`list_bridged`).
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginConflictError, PluginLoadError, PluginNotFoundError
from .hookspecs import Architecture, ModelBridge

PLUGINS_ENV = "MLX_ZOO_PLUGINS"
PREFER_ENV = "MLX_ZOO_PREFER"
IN_PROCESS = "<registered in process>"

KNOWN_PACKAGES_FILE = Path(__file__).with_name("known_plugins.json")
"""Data, not code: ``{"model_types": {model_type: distribution}}`` for the project's own
plugins, read only for the "install ..." hint of an error (:func:`known_package`)."""


def known_package(model_type: str) -> str | None:
    """The distribution to install for ``model_type``, from :data:`KNOWN_PACKAGES_FILE` (None if
    the file does not name one, or cannot be read)."""
    try:
        known = json.loads(KNOWN_PACKAGES_FILE.read_text(encoding="utf-8"))["model_types"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    hint = known.get(model_type) if isinstance(known, dict) else None
    return hint if isinstance(hint, str) else None

PROPAGATED = (KeyboardInterrupt, GeneratorExit)
"""The only base exceptions a plugin's import or hook may pass on to the caller: the user's
Ctrl-C, and a generator being closed. Anything else it raises -- ``SystemExit`` from a module-top
``sys.exit()``, a custom ``BaseException`` subclass -- becomes a :class:`PluginLoadError`, so that
one broken plugin never ends the process (``mlx-zoo list`` still lists the others)."""


@dataclass(frozen=True)
class PluginEntry:
    """One installed ``mlx_zoo.models`` entry point: a model_type and who serves it."""

    model_type: str
    distribution: str
    version: str
    module: str


_manager: pluggy.PluginManager | None = None
_in_process: dict[str, Architecture] = {}  # model_type -> architecture, from register()


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (project ``mlx_zoo``)."""
    global _manager
    if _manager is None:
        _manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        _manager.add_hookspecs(hookspecs)
    return _manager


def canonical_name(name: str) -> str:
    """PEP 503 normalised distribution name: ``MLX_Qwen2`` -> ``mlx-qwen2``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _plugin_filter() -> tuple[set[str], set[str]]:
    allowed, blocked = set(), set()
    for item in os.environ.get(PLUGINS_ENV, "").split(","):
        item = item.strip()
        if item.startswith("-"):
            blocked.add(canonical_name(item[1:]))
        elif item:
            allowed.add(canonical_name(item))
    return allowed, blocked


def is_enabled(distribution: str) -> bool:
    """Whether the allow/block list in ``MLX_ZOO_PLUGINS`` lets ``distribution`` load."""
    allowed, blocked = _plugin_filter()
    name = canonical_name(distribution)
    return name not in blocked and (not allowed or name in allowed)


def installed_entries(group: str = hookspecs.ENTRY_POINT_GROUP) -> list[PluginEntry]:
    """Every installed entry point of the ``mlx_zoo.models`` group, or of ``group`` (metadata
    only, no import)."""
    entries = []
    seen = set()
    for ep in metadata.entry_points(group=group):
        dist = ep.dist
        name = canonical_name(dist.name) if dist is not None else ep.value
        version = dist.version if dist is not None else "?"
        key = (ep.name, name, ep.value)
        if key not in seen:
            seen.add(key)
            entries.append(PluginEntry(ep.name, name, version, ep.value))
    return sorted(entries, key=lambda e: (e.model_type, e.distribution))


def available_model_types() -> list[str]:
    """Model types that can be loaded now: registered in process or installed and enabled."""
    types = set(_in_process)
    types.update(e.model_type for e in installed_entries() if is_enabled(e.distribution))
    return sorted(types)


def _hook_names() -> set[str]:
    """Names of the hooks :mod:`mlx_zoo.hookspecs` specifies."""
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return {name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), marker)}


def check_contract(plugin: Any, label: str) -> None:
    """Refuse, with a :class:`PluginLoadError` naming ``label``, a plugin that marks as
    ``@hookimpl`` a function no hook of this core specifies (a misspelt hook would otherwise
    never be called: pluggy accepts unknown names), or that declares a spec version (its
    :func:`~mlx_zoo.hookspecs.spec_version` hook) this core does not load. Called before the
    plugin is registered, so a refused plugin leaves the others untouched."""
    known = _hook_names()
    marker = f"{hookspecs.PROJECT_NAME}_impl"
    for attr in dir(plugin):
        try:
            value = getattr(plugin, attr)
        except Exception:  # a property that raises is not a hook implementation
            continue
        options = getattr(value, marker, None)
        if not isinstance(options, dict):
            continue
        hook = options.get("specname") or attr
        if hook not in known:
            close = difflib.get_close_matches(hook, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PluginLoadError(label, "checking its hooks", LookupError(
                f"{hook!r} is marked @hookimpl but no mlx-zoo hook has that name{hint}; "
                f"the hooks are: {', '.join(sorted(known))}"))
    declared = getattr(plugin, "spec_version", None)
    version = hookspecs.UNDECLARED_SPEC
    if callable(declared) and isinstance(getattr(declared, marker, None), dict):
        try:
            version = declared()
        except PROPAGATED:
            raise
        except BaseException as e:
            raise PluginLoadError(label, "its spec_version hook", e) from e
    if isinstance(version, bool) or not isinstance(version, int) \
            or version not in hookspecs.COMPATIBLE_SPECS:
        supported = ", ".join(str(v) for v in sorted(hookspecs.COMPATIBLE_SPECS))
        raise PluginLoadError(label, "checking its spec version", ValueError(
            f"it implements mlx-zoo plugin spec {version!r}, but this mlx-zoo "
            f"(SPEC_VERSION {hookspecs.SPEC_VERSION}) loads spec {supported}; install a "
            "version of the plugin made for this mlx-zoo, or an mlx-zoo it supports"))


def register(plugin: ModuleType | Any, name: str | None = None) -> list[str]:
    """Register a plugin (a module or object with ``@hookimpl`` functions) in this process --
    for notebooks and tests, without packaging. Returns the model_types it serves, which then
    take precedence over installed plugins. The plugin is checked first
    (:func:`check_contract`)."""
    pm = plugin_manager()
    label = name or getattr(plugin, "__name__", repr(plugin))
    if not pm.is_registered(plugin):
        check_contract(plugin, label)
        pm.register(plugin, name=name)
    architectures = _call_models_hook(plugin, label)
    for arch in architectures:
        _in_process[arch.model_type] = arch
    return [a.model_type for a in architectures]


def unregister(plugin: ModuleType | Any) -> None:
    """Undo :func:`register` (and the import-time registration of an entry-point plugin)."""
    pm = plugin_manager()
    for model_type, arch in list(_in_process.items()):
        if arch in _architectures_of(plugin):
            del _in_process[model_type]
    if pm.is_registered(plugin):
        pm.unregister(plugin)


def _architectures_of(plugin: Any) -> list[Architecture]:
    try:
        return _call_models_hook(plugin, "?")
    except PluginLoadError:
        return []


def _impls(hook_name: str, plugin: Any):
    caller = getattr(plugin_manager().hook, hook_name)
    return [impl for impl in caller.get_hookimpls() if impl.plugin is plugin]


def _call_models_hook(plugin: Any, distribution: str) -> list[Architecture]:
    architectures: list[Architecture] = []
    for impl in _impls("register_models", plugin):
        try:
            result = list(impl.function() or [])
        except PROPAGATED:
            raise
        except BaseException as e:
            raise PluginLoadError(distribution, "its register_models hook", e) from e
        for arch in result:
            if not isinstance(arch, Architecture):
                raise PluginLoadError(distribution, "its register_models hook",
                                      TypeError(f"returned {arch!r}, expected Architecture"))
            architectures.append(arch)
    return architectures


def call_hook(hook_name: str) -> list[Any]:
    """Call a hook on every registered plugin, naming the plugin of a hook that raises."""
    pm = plugin_manager()
    results = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        try:
            results.append(impl.function())
        except PROPAGATED:
            raise
        except BaseException as e:
            name = pm.get_name(impl.plugin) or "?"
            raise PluginLoadError(name, f"its {hook_name} hook", e) from e
    return results


def _preferred(model_type: str) -> str | None:
    for item in os.environ.get(PREFER_ENV, "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == model_type and value.strip():
            return canonical_name(value.strip())
    return None


def candidates(model_type: str) -> list[PluginEntry]:
    """Enabled installed entry points for ``model_type``, one per distribution."""
    by_dist: dict[str, PluginEntry] = {}
    for entry in installed_entries():
        if entry.model_type == model_type and is_enabled(entry.distribution):
            by_dist.setdefault(entry.distribution, entry)
    return list(by_dist.values())


def resolve(model_type: str, plugin: str | None = None, path: Any = None) -> Architecture:
    """The :class:`Architecture` serving ``model_type``, importing only the plugin that serves it.

    ``plugin`` (a distribution name) picks one when several claim the model_type; so does
    ``MLX_ZOO_PREFER``. A native plugin always wins over a bridge: bridges are asked only when
    no enabled native plugin serves ``model_type``, or when the distribution picked is a
    bridge (:func:`model_bridges`). Raises :class:`PluginNotFoundError`,
    :class:`PluginConflictError` or :class:`PluginLoadError`.
    """
    if plugin is None and model_type in _in_process:
        return _in_process[model_type]
    entries = candidates(model_type)
    choice = canonical_name(plugin) if plugin else _preferred(model_type)
    if choice is not None:
        entries = [e for e in entries if e.distribution == choice]
    if not entries:
        bridged = _resolve_bridged(model_type, choice)
        if bridged is not None:
            return bridged
        raise _not_found(model_type, path, choice, "plugin=" if plugin else PREFER_ENV)
    if len(entries) > 1:
        raise PluginConflictError(model_type, [e.distribution for e in entries])
    return _architecture_from(entries[0])


def _not_found(model_type: str, path: Any, choice: str | None,
               chosen_by: str) -> PluginNotFoundError:
    """The error for a model_type that nothing enabled serves, saying why: nothing installed
    provides it (with an install hint), ``MLX_ZOO_PLUGINS`` switches its providers off, or the
    distribution chosen (``plugin=`` or ``MLX_ZOO_PREFER``) is not one of them."""
    every = {e.distribution for e in installed_entries() if e.model_type == model_type}
    providers = sorted(d for d in every if is_enabled(d))
    if model_type in _in_process:
        providers.append(IN_PROCESS)
    disabled = sorted(every.difference(providers))
    hint = None if every or model_type in _in_process else known_package(model_type)
    return PluginNotFoundError(
        model_type, available_model_types(), hint, path, disabled=disabled,
        disabled_by=os.environ.get(PLUGINS_ENV) if disabled else None, chosen=choice,
        chosen_by=chosen_by if choice is not None else None, providers=providers)


def import_plugin(entry: PluginEntry) -> ModuleType:
    """Import (once) and register the module of an entry point."""
    pm = plugin_manager()
    module = pm.get_plugin(entry.distribution)
    if module is not None:
        return module
    module_name, _, attr = entry.module.partition(":")
    try:
        module = importlib.import_module(module_name)
        if attr:
            for part in attr.split("."):
                module = getattr(module, part)
    except PROPAGATED:
        raise
    except BaseException as e:
        raise PluginLoadError(entry.distribution, f"importing {entry.module!r}", e) from e
    if pm.is_registered(module):
        return module
    check_contract(module, entry.distribution)
    try:
        pm.register(module, name=entry.distribution)
    except PROPAGATED:
        raise
    except BaseException as e:  # pluggy validates hook implementations against the specs
        raise PluginLoadError(entry.distribution, "registering its hooks", e) from e
    return module


def _architecture_from(entry: PluginEntry) -> Architecture:
    module = import_plugin(entry)
    for arch in _call_models_hook(module, entry.distribution):
        if arch.model_type == entry.model_type:
            return arch
    raise PluginLoadError(entry.distribution, "its register_models hook", LookupError(
        f"the entry point names model_type {entry.model_type!r}, but register_models returns "
        "no Architecture for it"))



# -- bridges: model types learned at run time, below native plugins ------------------------------

BRIDGE_HOOK = "register_model_bridge"


def installed_bridges() -> list[PluginEntry]:
    """Every installed entry point of the ``mlx_zoo.bridges`` group (metadata only); its
    ``model_type`` is the entry's name, the bridge's own."""
    return installed_entries(hookspecs.BRIDGE_ENTRY_POINT_GROUP)


def _bridge_of(plugin: Any, label: str) -> ModelBridge:
    """What ``plugin``'s :func:`~mlx_zoo.hookspecs.register_model_bridge` returns, checked."""
    impls = _impls(BRIDGE_HOOK, plugin)
    if not impls:
        raise PluginLoadError(label, "its bridge entry point", LookupError(
            f"the module is in the {hookspecs.BRIDGE_ENTRY_POINT_GROUP!r} group but implements "
            f"no {BRIDGE_HOOK} hook"))
    try:
        bridge = impls[0].function()
    except PROPAGATED:
        raise
    except BaseException as e:
        raise PluginLoadError(label, f"its {BRIDGE_HOOK} hook", e) from e
    if not isinstance(bridge, ModelBridge):
        raise PluginLoadError(label, f"its {BRIDGE_HOOK} hook",
                              TypeError(f"returned {bridge!r}, expected ModelBridge"))
    return bridge


def model_bridges() -> list[tuple[str, ModelBridge | PluginLoadError]]:
    """``(name, bridge)`` for every enabled installed bridge (imported for the purpose) and every
    plugin registered in process that implements ``register_model_bridge``; a bridge that fails
    to import or whose hook raises comes with its :class:`PluginLoadError` instead."""
    found: list[tuple[str, ModelBridge | PluginLoadError]] = []
    installed = installed_bridges()
    for entry in installed:
        if not is_enabled(entry.distribution):
            continue
        try:
            found.append((entry.distribution,
                          _bridge_of(import_plugin(entry), entry.distribution)))
        except PluginLoadError as e:
            found.append((entry.distribution, e))
    pm = plugin_manager()
    names = {e.distribution for e in installed}
    for impl in getattr(pm.hook, BRIDGE_HOOK).get_hookimpls():
        name = pm.get_name(impl.plugin) or "?"
        if name not in names:
            try:
                found.append((name, _bridge_of(impl.plugin, name)))
            except PluginLoadError as e:
                found.append((name, e))
    return found


def bridged_types(name: str, bridge: ModelBridge) -> dict[str, str]:
    """``bridge.model_types()``, checked: a dict of model_type -> where it comes from."""
    try:
        types = bridge.model_types()
    except PROPAGATED:
        raise
    except BaseException as e:
        raise PluginLoadError(name, "listing its bridged model types", e) from e
    if not isinstance(types, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in types.items()):
        raise PluginLoadError(name, "listing its bridged model types", TypeError(
            f"model_types() returned {type(types).__name__}, expected a dict of str to str"))
    return types


def bridged_architecture(name: str, bridge: ModelBridge, model_type: str) -> Architecture:
    """``bridge.architecture(model_type)``; what it raises becomes a :class:`PluginLoadError`
    naming the bridge and the model_type (only that type is unavailable)."""
    try:
        arch = bridge.architecture(model_type)
    except PROPAGATED:
        raise
    except BaseException as e:
        raise PluginLoadError(name, f"bridging model_type {model_type!r}", e) from e
    if not isinstance(arch, Architecture) or arch.model_type != model_type:
        raise PluginLoadError(name, f"bridging model_type {model_type!r}", TypeError(
            f"architecture() returned {arch!r}, expected an Architecture for {model_type!r}"))
    return arch


def _resolve_bridged(model_type: str, choice: str | None) -> Architecture | None:
    """The bridged architecture of ``model_type`` (no native plugin serves it, or ``choice``
    names a bridge); None if no bridge claims it. Two bridges claiming it are a conflict; a
    broken bridge, when no other claims it, raises its error (it might have served it)."""
    claims, broken = [], []
    for name, bridge in model_bridges():
        if choice is not None and canonical_name(name) != choice:
            continue
        try:
            if isinstance(bridge, PluginLoadError):
                raise bridge
            if model_type in bridged_types(name, bridge):
                claims.append((name, bridge))
        except PluginLoadError as e:
            broken.append(e)
    if len(claims) > 1:
        raise PluginConflictError(model_type, [name for name, _ in claims])
    if claims:
        return bridged_architecture(*claims[0], model_type)
    if broken:
        raise broken[0]
    return None


@dataclass(frozen=True)
class BridgedStatus:
    """A row of :func:`list_bridged`: one model_type of a bridge, or the bridge itself
    (``model_type`` ``"*"``) where its types are not listed (unchecked, blocked, broken)."""

    model_type: str
    distribution: str
    version: str
    source: str  # where the type comes from ("mlx_lm.models.starcoder2"), or the bridge's source
    status: str  # "bridged", "native" (a native plugin serves it), "broken", "blocked", "unchecked"
    error: str | None = None
    native: tuple[str, ...] = ()  # the distributions serving it natively
    via: str = ""  # what the bridge bridges to (ModelBridge.source: "mlx-lm 0.32.2")


def list_bridged(check: bool = False) -> list[BridgedStatus]:
    """What the installed bridges serve. Without ``check``, one ``"unchecked"`` row per bridge
    (metadata only); with it each bridge is imported and each model_type it claims is marked
    ``"native"`` (an enabled native plugin serves it: the bridge only on request),
    ``"bridged"``, or ``"broken"`` with the reason (its architecture could not be built)."""
    versions = {e.distribution: e.version for e in installed_bridges()}
    rows = [BridgedStatus("*", e.distribution, e.version, e.module,
                          "blocked" if not is_enabled(e.distribution) else "unchecked")
            for e in installed_bridges() if not (check and is_enabled(e.distribution))]
    if not check:
        return rows
    native: dict[str, list[str]] = {}
    for e in installed_entries():
        if is_enabled(e.distribution):
            native.setdefault(e.model_type, []).append(e.distribution)
    for model_type in _in_process:
        native.setdefault(model_type, []).append(IN_PROCESS)
    for name, bridge in model_bridges():
        version = versions.get(name, "")
        try:
            if isinstance(bridge, PluginLoadError):
                raise bridge
            types = bridged_types(name, bridge)
        except PluginLoadError as e:
            rows.append(BridgedStatus("*", name, version, "", "broken", str(e)))
            continue
        for model_type, source in sorted(types.items()):
            status, error = "native", None
            if model_type not in native:
                try:
                    bridged_architecture(name, bridge, model_type)
                    status = "bridged"
                except PluginLoadError as e:
                    status, error = "broken", str(e)
            rows.append(BridgedStatus(model_type, name, version, source, status, error,
                                      tuple(native.get(model_type, ())), bridge.source))
    return rows


# -- contributions by name: RoPE variants, cache classes, demos ----------------------------------


def _call_one(hook_name: str, plugin: Any, label: str) -> dict[str, Any]:
    """What ``plugin``'s implementation of ``hook_name`` returns, merged (``{}`` if none)."""
    merged: dict[str, Any] = {}
    for impl in _impls(hook_name, plugin):
        try:
            result = impl.function()
        except PROPAGATED:
            raise
        except BaseException as e:
            raise PluginLoadError(label, f"its {hook_name} hook", e) from e
        if result is not None and not isinstance(result, dict):
            raise PluginLoadError(label, f"its {hook_name} hook", TypeError(
                f"returned {type(result).__name__}, expected a dict"))
        merged.update(result or {})
    return merged


def _unimported_plugins(name: str = "", providers: Iterable[str] = ()) -> Iterator[PluginEntry]:
    """One entry point per installed, enabled distribution whose plugin is not registered yet,
    those most likely to provide ``name`` first: the distributions in ``providers``, then those
    whose module is ``name``'s prefix (``mlx_myarch.SharedKVCache``), then those serving a
    model_type called ``name``, then the rest."""
    pm = plugin_manager()
    by_dist: dict[str, PluginEntry] = {}
    for entry in installed_entries() + installed_bridges():
        if is_enabled(entry.distribution) and pm.get_plugin(entry.distribution) is None:
            by_dist.setdefault(entry.distribution, entry)
    wanted = [canonical_name(p) for p in providers]
    prefix = name.partition(".")[0]
    served = {e.distribution for e in installed_entries() if e.model_type == name}

    def rank(entry: PluginEntry) -> tuple:
        module = entry.module.partition(":")[0].partition(".")[0]
        return (entry.distribution not in wanted, module != prefix,
                entry.distribution not in served, entry.distribution)

    yield from sorted(by_dist.values(), key=rank)


def find_contribution(hook_name: str, name: str, *, providers: Iterable[str] = ()) -> Any | None:
    """The value under ``name`` in the dicts that the ``hook_name`` hook returns
    (``register_rope_variants``, ``register_cache_classes``, ``register_demos``): from the
    plugins registered now, else from installed plugins not imported yet, imported one at a time
    -- the likeliest first (:func:`_unimported_plugins`; ``providers`` names distributions known
    to provide it) -- until one provides it. So what a plugin registers is found whether or not
    anything imported the plugin before, and only what is needed is imported. A plugin that
    fails to import is skipped here (``mlx-zoo list`` shows it as broken). None if no plugin
    provides ``name``."""
    for contributed in call_hook(hook_name):
        if name in (contributed or {}):
            return contributed[name]
    for entry in _unimported_plugins(name, providers):
        try:
            found = _call_one(hook_name, import_plugin(entry), entry.distribution)
        except PluginLoadError:
            continue
        if name in found:
            return found[name]
    return None


def provider_of(hook_name: str, name: str) -> str | None:
    """The name of the registered plugin (its distribution, for an installed one) whose
    ``hook_name`` hook contributes ``name`` -- the last one, as merged lookups let it win."""
    found = None
    for plugin, result in _dict_results(hook_name):
        if name in result:
            found = plugin_manager().get_name(plugin)
    return found


def _dict_results(hook_name: str) -> Iterator[tuple[Any, dict[str, Any]]]:
    """``(plugin, result)`` of every registered implementation of ``hook_name`` that returns a
    dict, in registration order; implementations that raise are skipped (lookups must not
    fail because an unrelated plugin is broken)."""
    for impl in getattr(plugin_manager().hook, hook_name).get_hookimpls():
        try:
            result = impl.function()
        except PROPAGATED:
            raise
        except BaseException:
            continue
        if isinstance(result, dict):
            yield impl.plugin, result


def all_contributions(hook_name: str) -> dict[str, Any]:
    """Everything every enabled plugin -- registered, or installed and imported for the purpose
    -- contributes through ``hook_name``, merged (installed ones first, registered in-process
    ones override). Plugins that fail to import or whose hook raises are left out."""
    for entry in list(_unimported_plugins()):
        try:
            import_plugin(entry)
        except PluginLoadError:
            continue
    merged: dict[str, Any] = {}
    for _, result in _dict_results(hook_name):  # in registration order
        merged.update(result)
    return merged


@dataclass(frozen=True)
class PluginStatus:
    """A row of :func:`list_plugins`."""

    model_type: str
    distribution: str
    version: str
    module: str
    status: str  # "ok", "conflict", "blocked", "broken" or "unchecked"
    error: str | None = None


def list_plugins(check: bool = False) -> list[PluginStatus]:
    """What is installed, from entry-point metadata. With ``check=True`` each plugin is also
    imported and its hooks called, so a broken plugin shows as ``"broken"`` with its error."""
    rows = []
    entries = installed_entries()
    claims: dict[str, set[str]] = {}
    for e in entries:
        if is_enabled(e.distribution):
            claims.setdefault(e.model_type, set()).add(e.distribution)
    for e in entries:
        status, error = ("ok" if check else "unchecked"), None
        if not is_enabled(e.distribution):
            status = "blocked"
        else:
            if check:
                try:
                    _architecture_from(e)
                except PluginLoadError as err:
                    status, error = "broken", str(err)
            if status != "broken" and len(claims[e.model_type]) > 1:
                status = "conflict"
        rows.append(PluginStatus(e.model_type, e.distribution, e.version, e.module, status, error))
    for model_type, arch in sorted(_in_process.items()):
        rows.append(PluginStatus(model_type, IN_PROCESS, "", arch.model_class.__module__, "ok"))
    return rows


