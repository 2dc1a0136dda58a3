"""Hook specifications: the contract between the mlx-zoo core and its plugins.

A plugin is a module (found through the ``mlx_zoo.models`` entry-point group, or passed to
:func:`mlx_zoo.register`) that implements some of the hooks below with :data:`hookimpl`.
The extension points:

* **models** -- :func:`register_models` returns the :class:`Architecture` of each model_type the
  plugin serves: its config dataclass and its Model class. The Model follows :class:`Model`;
  the optional capabilities (``sanitize``, ``shard``, ``make_cache``, ``quantize_predicate``,
  ``keep_layers``) are described by :class:`Sanitizes`, :class:`Shards`, :class:`MakesCache`,
  :class:`QuantizePredicate` and :class:`PipelineStages`.
* **caches** -- :func:`register_cache_classes` names the plugin's own KV-cache classes, so that a
  prompt cache saved to disk is rebuilt with the right class (looked up by that name, never by
  ``globals()``).
* **RoPE** -- :func:`register_rope_variants` adds rotary-embedding variants to the one registry
  keyed by Hugging Face's ``rope_scaling["rope_type"]`` (see :mod:`mlx_zoo.rope`).
* **GGUF** -- :func:`register_gguf_architectures` maps llama.cpp's architectures, metadata keys
  and tensor names to the plugin's model_types (:mod:`mlx_zoo.gguf`).
* **demos** -- :func:`register_demos` names the demo checkpoints the plugin ships (a tiny model
  directory inside its package), loadable as ``demo:NAME`` (:mod:`mlx_zoo.demos`).
* **bridges** -- :func:`register_model_bridge` returns a :class:`ModelBridge`: model types served
  through another library, learned at run time, each used only where no native plugin serves it
  (found through the ``mlx_zoo.bridges`` entry-point group, :data:`BRIDGE_ENTRY_POINT_GROUP`).

What a plugin registers is found whether or not anything imported the plugin before: a name the
registered plugins do not know is looked up in the installed plugins' hooks, importing only what
is needed (:func:`mlx_zoo.registry.find_contribution`). Plugin modules register nothing when
imported; a model class that builds the plugin's own RoPE variant passes it to
:func:`mlx_zoo.get_rope` (``variants=``), so it builds in any import order.

A model's modules may also declare projections that read the same input and may run as one
matmul (``fusable_projections = {"qkv_proj": ("q_proj", "k_proj", "v_proj")}``, called through
:func:`mlx_zoo.project`); ``mlx_zoo.load(..., fuse=True)`` then fuses them (:mod:`mlx_zoo.fusion`).
A module that declares nothing is never touched. A ``shard`` that splits q/k/v or gate/up by
heads calls :func:`mlx_zoo.unfuse_projections` first.

The spec is versioned by :data:`SPEC_VERSION`; a change that breaks plugins bumps it.

Example plugin (``src/mlx_myarch/__init__.py``)::

    from mlx_zoo import Architecture, hookimpl
    from .myarch import Model, ModelArgs

    @hookimpl
    def spec_version():
        return 1            # the mlx_zoo.SPEC_VERSION this plugin implements

    @hookimpl
    def register_models():
        return [Architecture("myarch", ModelArgs, Model)]

with, in its ``pyproject.toml``::

    [project.entry-points."mlx_zoo.models"]
    myarch = "mlx_myarch"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import mlx.core as mx
    import mlx.nn as nn

PROJECT_NAME = "mlx_zoo"
"""The pluggy project name: hook implementations are marked ``@hookimpl`` of this project."""

SPEC_VERSION = 1
"""Version of this contract. Bumped when a hook or the Model protocol changes incompatibly:
a hook removed or renamed, a hook's arguments or return value changed, a new *required* method
on :class:`Model`. Adding a hook or an optional capability does not bump it (a plugin that does
not implement the new hook keeps working)."""

COMPATIBLE_SPECS = frozenset({1})
"""The plugin spec versions this core loads. A plugin declares the version it implements with
the :func:`spec_version` hook; one built for another version is refused with a
:class:`~mlx_zoo.PluginLoadError` naming both versions, and the other plugins keep working."""

UNDECLARED_SPEC = 1
"""The version assumed for a plugin that implements no :func:`spec_version` hook: the contract
as it stood before plugins declared it."""

ENTRY_POINT_GROUP = "mlx_zoo.models"
"""Entry-point group: entry name = model_type, value = the plugin module holding the hooks."""

BRIDGE_ENTRY_POINT_GROUP = "mlx_zoo.bridges"
"""Entry-point group of bridge plugins (:func:`register_model_bridge`): entry name = the bridge's
name, value = the plugin module holding the hooks. A bridge's model types are not in its metadata:
it is imported when a checkpoint's model_type has no native plugin, or to list what it serves."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- the model contract ------------------------------------------------------------------------


@runtime_checkable
class Model(Protocol):
    """What every model class must provide.

    ``Model(args)`` builds the module from its config dataclass; calling it maps token ids
    ``(batch, length)`` to logits ``(batch, length, vocab)``, reading and extending ``cache`` (a
    list with one entry per layer, from :meth:`MakesCache.make_cache` or one
    :class:`~mlx_zoo.cache.KVCache` per element of ``layers``).
    """

    layers: list

    def __call__(self, inputs: mx.array, cache: list | None = None) -> mx.array: ...


@runtime_checkable
class Sanitizes(Protocol):
    """Optional: maps checkpoint tensor names and layouts to this model's parameters
    (drops rotary ``inv_freq`` buffers, splits fused projections, stacks experts, ...)."""

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]: ...


@runtime_checkable
class Shards(Protocol):
    """Optional: splits the model's linear layers across the ranks of a distributed group
    (tensor parallelism), in place."""

    def shard(self, group: Any = None) -> None: ...


@runtime_checkable
class MakesCache(Protocol):
    """Optional: the model decides the cache of each layer (sliding-window, chunked, shared
    across layers, ...). Without it the core gives one ``KVCache`` per layer."""

    def make_cache(self) -> list: ...


@runtime_checkable
class QuantizePredicate(Protocol):
    """Optional: which layers may be quantized. Returns ``False`` to keep a layer in full
    precision, ``True`` to quantize it with the defaults, or a dict of ``group_size``/``bits``."""

    def quantize_predicate(self, path: str, module: nn.Module) -> bool | dict: ...


@runtime_checkable
class PipelineStages(Protocol):
    """Optional: how to cut the model into pipeline stages (:mod:`mlx_zoo.pipeline`), for a
    backbone that keeps per-layer state besides ``layers`` (cache slots shared across layers,
    per-layer mask kinds). Without it the core cuts ``model.model.layers`` alone, and refuses a
    backbone holding other per-layer lists.

    ``pipeline_boundaries()`` lists the layer indices a stage may start at (e.g. only where a
    run of layers sharing keys/values begins); ``keep_layers(start, stop)`` keeps layers
    ``start .. stop - 1`` of the backbone, in place, with their bookkeeping, so that the
    backbone's own forward -- fed the hidden states entering layer ``start`` -- runs exactly
    those layers and ``make_cache`` makes the caches of those layers only."""

    def pipeline_boundaries(self) -> list[int]: ...

    def keep_layers(self, start: int, stop: int) -> None: ...


@dataclass(frozen=True)
class Architecture:
    """One model_type served by a plugin.

    ``config_class`` is a dataclass with a ``from_dict(dict, path=None)`` classmethod -- derive it
    from :class:`mlx_zoo.BaseModelArgs` -- and ``model_class(config)`` builds a :class:`Model`.
    """

    model_type: str
    config_class: type
    model_class: Callable[..., Model]


@dataclass(frozen=True)
class ModelBridge:
    """Model types served through another library, learned at run time (what
    :func:`register_model_bridge` returns).

    A bridge ranks below native plugins: the registry asks it only for a model_type that no
    enabled native plugin serves, unless ``plugin=`` / ``MLX_ZOO_PREFER`` names the bridge's
    distribution. ``source`` says what it bridges to (``"mlx-lm 0.32.2"``; shown by
    ``mlx-zoo list``). ``model_types()`` returns every model_type it claims, each with where it
    comes from (``{"starcoder2": "mlx_lm.models.starcoder2"}``), cheaply: no model code imported.
    ``architecture(model_type)`` returns the :class:`Architecture` of one of them, importing what
    it needs, or raises for a type it cannot serve now (a module that fails to import, a missing
    optional dependency): the exception's message is the reason ``mlx-zoo list`` shows, and only
    that type is unavailable.
    """

    source: str
    model_types: Callable[[], dict[str, str]]
    architecture: Callable[[str], Architecture]


# -- hook specifications -----------------------------------------------------------------------


@hookspec(firstresult=True)
def spec_version() -> int:
    """Return the :data:`SPEC_VERSION` this plugin was written against (an ``int``); checked
    when the plugin is registered. Implement it in every plugin::

        @hookimpl
        def spec_version():
            return 1
    """


@hookspec
def register_models() -> list[Architecture]:
    """Return the architectures (model_types) this plugin serves."""


@hookspec
def register_model_bridge() -> ModelBridge:
    """Return the :class:`ModelBridge` of a plugin that serves model types it learns at run time
    (another library's architectures), at a lower priority than native plugins. Such a plugin
    declares itself in the ``mlx_zoo.bridges`` entry-point group (:data:`BRIDGE_ENTRY_POINT_GROUP`)
    instead of naming model types in ``mlx_zoo.models``. Optional; a bridge may implement the
    other hooks as well (``register_cache_classes`` for the caches its models make)."""


@hookspec
def register_rope_variants() -> dict[str, type]:
    """Return RoPE variants to add to the registry: ``{rope_type: class}``.

    Each class is built as ``cls(dims, *, base, traditional, scaling, max_position_embeddings)``
    and called as ``rope(x, offset)``; derive it from :class:`mlx_zoo.rope.RoPE`.
    """


@hookspec
def register_demos() -> dict[str, Path]:
    """Return the demo checkpoints this plugin ships: ``{name: directory}``, each directory an
    ordinary checkpoint (``config.json``, ``model.safetensors``, tokenizer files) inside the
    plugin's package (declare it as package data), e.g.
    ``{"myarch": Path(__file__).parent / "demo"}``; loaded as ``demo:myarch``. A demo may also
    be a GGUF file (a real model shipped by another package, ``demo:smollm2``)."""


@hookspec
def register_gguf_architectures() -> dict[str, Any]:
    """Return how the GGUF files of this plugin's families load: ``{general.architecture:
    mlx_zoo.gguf.GGUFArchitecture}``, e.g. ``{"qwen2": GGUFArchitecture("qwen2", "qwen2")}`` --
    the model_type it loads as, the config.json built from the file's metadata, llama.cpp's
    tensor names mapped to the checkpoint names the model reads, and the projections whose rows
    llama.cpp's converter permuted (see :mod:`mlx_zoo.gguf.mapping`). Optional."""


@hookspec
def register_cache_classes() -> dict[str, type]:
    """Return this plugin's KV-cache classes by a namespaced name, e.g.
    ``{"mlx_myarch.SharedKVCache": SharedKVCache}``, so saved prompt caches can be reloaded."""


@hookspec
def register_tool_parsers() -> dict[str, Any]:
    """Return tool-call parsers by model_type, e.g. ``{"myarch": ToolCallParser("<call>",
    "</call>")}``: how the model family writes a tool call, for ``mlx-zoo serve`` to return it in
    the OpenAI shape (see :mod:`mlx_zoo.serve.tools`; the default reads Qwen/Hermes-style
    ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``). Optional."""


@hookspec
def register_reasoning_parsers() -> dict[str, Any]:
    """Return reasoning parsers by model_type, e.g. ``{"myarch": ReasoningParser("<reason>",
    "</reason>")}``, or ``{"myarch": None}`` for a family that never reasons: how the family
    marks what it thinks before answering, for ``mlx-zoo serve`` to return it as
    ``reasoning_content`` apart from the answer (see :mod:`mlx_zoo.serve.reasoning`; the default
    reads ``<think> ... </think>``). Optional."""
