"""Fused projections: several linear layers that read the same input, run as one matmul.

Why: at batch 1 every decode step multiplies one token by each weight matrix, and a matvec is
a kernel launch plus a pass over the weights. Projections that read the same input -- attention's
q, k and v, the gated MLP's gate and up -- can be one product of the input with their weights
stacked along the output axis, then split: fewer, larger kernels per token. Measured on an H100
(bench/probe_layout.py, bench/results/h100-layout-*.log), batch-1 matvecs chained over the
layers, bf16, in the checkpoint layout ``x @ W.T`` with ``W`` stored ``(out, in)``:

=================  ===========================  ==============  =============
shape              projections                  separate        fused
=================  ===========================  ==============  =============
Qwen2-7B           q, k, v (-> 4608 x 3584)     44.4 us/layer   25.0 us/layer
Qwen2-7B           gate, up                     105.4 us/layer  97.6 us/layer
Qwen2-0.5B         q, k, v                      35.7 us/layer   11.6 us/layer
Qwen2-0.5B         gate, up                     35.0 us/layer   17.8 us/layer
=================  ===========================  ==============  =============

The stacked weight keeps that (fast) layout: the parts' rows one after the other. mlx-lm does
not fuse.

How: a module declares which of its projections may be fused, and calls them through
:func:`project`, which works either way::

    class Attention(nn.Module):
        fusable_projections = {"qkv_proj": ("q_proj", "k_proj", "v_proj")}

        def __call__(self, x, ...):
            q, k, v = project(self, "qkv_proj", x)

:func:`fuse_projections` replaces each declared group whose parts are all present and compatible
by a :class:`FusedLinear` (modules that declare nothing are never touched, so plugins that call
``self.q_proj`` directly keep working); :func:`unfuse_projections` restores the parts exactly.

Names on disk never change: :func:`checkpoint_parameters` (what :func:`mlx_zoo.save` writes)
gives the parts' names and arrays whether or not the model is fused, so a saved fused model is
the same checkpoint as the unfused one. Fusion is opt-in at load (``mlx_zoo.load(...,
fuse=True)``): code that edits ``self_attn.q_proj`` after loading (LoRA tooling, as with mlx-lm)
finds it where it expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

FUSABLE_ATTRIBUTE = "fusable_projections"
"""Class attribute of a module that declares fusable groups: ``{fused name: part names}``."""

FUSABLE_TYPES = (nn.Linear, nn.QuantizedLinear)
"""Layer classes that fuse (exactly these: subclasses, e.g. tensor-parallel shards, do not)."""

ROW_WISE_KEYS = frozenset({"weight", "bias", "scales", "biases"})
"""A fusable layer's arrays: each has one row (element, for ``bias``) per output feature, so the
parts' arrays concatenate along axis 0. Quantization groups run along the input axis, within a
row, so this holds for quantized weights of every mode that stores only these arrays."""


@dataclass(frozen=True)
class FusedParts:
    """The parts of a :class:`FusedLinear`, in order: their attribute names and output sizes."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def boundaries(self) -> list[int]:
        """Output offsets at which the fused output splits into the parts' outputs."""
        return list(accumulate(self.sizes))[:-1]

    def rows(self, name: str) -> slice:
        """The rows of the fused arrays that belong to part ``name``."""
        index = self.names.index(name)
        start = sum(self.sizes[:index])
        return slice(start, start + self.sizes[index])


class FusedLinear(nn.Module):
    """Several ``nn.Linear`` (or ``nn.QuantizedLinear``) layers that read the same input, as one
    layer of the same class (``self.linear``) whose arrays are the parts' rows concatenated.

    ``fused(x)`` returns the list of the parts' outputs, in the order of ``parts.names``.
    Build it with :meth:`from_parts`; :meth:`split` gives the parts back.
    """

    def __init__(self, linear: nn.Module, parts: FusedParts):
        super().__init__()
        self.linear = linear
        self.parts = parts  # a dataclass, not a container: kept out of the parameters

    @classmethod
    def from_parts(cls, parts: dict[str, nn.Module]) -> FusedLinear:
        """Fuse ``parts`` (``{attribute name: layer}``, in output order); they must be
        compatible (:func:`compatible`)."""
        if not compatible(list(parts.values())):
            raise ValueError(f"cannot fuse {list(parts)}: not layers of one class with the same "
                             "input size, dtypes, quantization, bias and trainable arrays")
        layers = list(parts.values())
        arrays = {key: mx.concatenate([layer[key] for layer in layers])
                  for key in _arrays(layers[0])}
        sizes = tuple(_output_dims(layer) for layer in layers)
        linear = _layer_like(layers[0], arrays, _trainable_keys(layers[0]))
        return cls(linear, FusedParts(tuple(parts), sizes))

    def __call__(self, x: mx.array) -> list[mx.array]:
        return mx.split(self.linear(x), self.parts.boundaries, axis=-1)

    def part_arrays(self, name: str) -> dict[str, mx.array]:
        """The arrays of part ``name`` (``weight``, ``bias``, ...): row slices of the fused ones,
        bit-identical to the part's own."""
        rows = self.parts.rows(name)
        return {key: value[rows] for key, value in _arrays(self.linear).items()}

    def split(self) -> dict[str, nn.Module]:
        """The separate layers, ``{name: layer}``, holding exactly the parts' arrays."""
        trainable = _trainable_keys(self.linear)
        return {name: _layer_like(self.linear, self.part_arrays(name), trainable)
                for name in self.parts.names}

    def _extra_repr(self) -> str:
        return ", ".join(f"{n}={s}" for n, s in zip(self.parts.names, self.parts.sizes,
                                                      strict=True))


# -- compatibility and construction of the layers ----------------------------------------------


def _arrays(layer: nn.Module) -> dict[str, mx.array]:
    return {key: value for key, value in layer.items() if isinstance(value, mx.array)}


def _trainable_keys(layer: nn.Module) -> frozenset[str]:
    return frozenset(name for name, _ in tree_flatten(layer.trainable_parameters()))


def _quantization(layer: nn.Module) -> tuple[Any, ...] | None:
    if isinstance(layer, nn.QuantizedLinear):
        return layer.group_size, layer.bits, layer.mode
    return None


def _output_dims(layer: nn.Module) -> int:
    return layer["weight"].shape[0]


def _signature(layer: nn.Module) -> tuple | None:
    """What parts must share to fuse; None when ``layer`` cannot be fused at all."""
    if type(layer) not in FUSABLE_TYPES:
        return None
    arrays = _arrays(layer)
    if not arrays.keys() <= ROW_WISE_KEYS or "weight" not in arrays:
        return None
    per_row = tuple(sorted((key, value.shape[1:], value.dtype) for key, value in arrays.items()))
    return type(layer), _quantization(layer), per_row, _trainable_keys(layer)


def compatible(layers: list[nn.Module]) -> bool:
    """Whether ``layers`` can be fused: all of one fusable class (:data:`FUSABLE_TYPES`), with
    the same input size and dtypes, the same quantization (group size, bits, mode), a bias on
    all or none, and the same arrays trainable (frozen)."""
    signatures = [_signature(layer) for layer in layers]
    return bool(layers) and signatures[0] is not None and all(
        s == signatures[0] for s in signatures)


def _layer_like(template: nn.Module, arrays: dict[str, mx.array],
                trainable: frozenset[str]) -> nn.Module:
    """A layer of ``template``'s class and quantization settings holding ``arrays`` (see
    :func:`layer_of`)."""
    return layer_of(type(template), arrays, trainable, _quantization(template))


def layer_of(cls: type, arrays: dict[str, mx.array], trainable: frozenset[str],
             quantization: tuple[Any, ...] | None = None) -> nn.Module:
    """A ``cls`` layer (``nn.Linear`` or ``nn.QuantizedLinear``, whose ``quantization`` is
    ``(group_size, bits, mode)``) holding ``arrays``, with the arrays named in ``trainable``
    trainable and the others frozen.

    Built without the class's constructor, which would draw random initial weights: that would
    advance MLX's global random state, so fusing a model would change what a seeded program
    samples afterwards."""
    layer = cls.__new__(cls)
    nn.Module.__init__(layer)
    if quantization is not None:
        layer.group_size, layer.bits, layer.mode = quantization
        layer.biases = None  # modes without biases (mxfp4, ...) keep None, as the class does
    for key, value in arrays.items():
        setattr(layer, key, value)
    frozen = [key for key in arrays if key not in trainable]
    if frozen:
        layer.freeze(keys=frozen)
    return layer


# -- declaring modules: calling, fusing, unfusing ----------------------------------------------


def fusable_groups(module: nn.Module) -> dict[str, tuple[str, ...]]:
    """The groups ``module`` declares fusable: ``{fused name: part names}`` (empty if none)."""
    return dict(getattr(type(module), FUSABLE_ATTRIBUTE, None) or {})


def project(module: nn.Module, fused_name: str, x: mx.array) -> list[mx.array]:
    """The outputs of the projections of ``module``'s group ``fused_name`` applied to ``x``, in
    the declared order: one fused product when the group is fused, else each part in turn."""
    if fused_name in module:
        return module[fused_name](x)
    return [getattr(module, name)(x) for name in fusable_groups(module)[fused_name]]


def fuse_projections(model: nn.Module, *, evaluate: bool = False) -> int:
    """Fuse, in place, every declared group of every module of ``model`` whose parts are all
    present and compatible (:func:`compatible`); others stay as they are (e.g. parts quantized
    with different bits, or a Cross-Layer Attention layer that has no ``k_proj``/``v_proj``).
    Returns the number of groups fused.

    ``evaluate=True`` computes each fused layer's arrays as it is built, so that the parts'
    arrays, once nothing else holds them, are freed before the next group is fused (lazily, the
    parts and every fused copy would all be alive when the model is first evaluated)."""
    fused = 0
    # Only the declaring modules are kept while fusing: a list of every module would hold on
    # to the parts being replaced.
    declaring = [module for _, module in model.named_modules() if fusable_groups(module)]
    for module in declaring:
        for fused_name, names in fusable_groups(module).items():
            if fused_name in module or not all(name in module for name in names):
                continue
            parts = {name: module[name] for name in names}
            if not compatible(list(parts.values())):
                continue
            fused_layer = FusedLinear.from_parts(parts)
            setattr(module, fused_name, fused_layer)
            for name in names:
                del module[name]
            if evaluate:
                del parts
                mx.eval(fused_layer.parameters())
            fused += 1
    return fused


def unfuse_projections(model: nn.Module) -> int:
    """Replace, in place, every :class:`FusedLinear` of ``model`` by its parts (arrays
    bit-identical to the ones fused). Returns the number of fused layers split."""
    split = 0
    for _, module in model.named_modules():
        for fused_name, child in list(module.items()):
            if not isinstance(child, FusedLinear):
                continue
            for name, part in child.split().items():
                setattr(module, name, part)
            del module[fused_name]
            split += 1
    return split


def is_fused(model: nn.Module) -> bool:
    """Whether ``model`` holds any :class:`FusedLinear`."""
    return any(isinstance(module, FusedLinear) for _, module in model.named_modules())


def checkpoint_parameters(model: nn.Module) -> list[tuple[str, mx.array]]:
    """``model``'s parameters under the names a checkpoint uses: a :class:`FusedLinear`'s arrays
    appear as its parts' (``...q_proj.weight``, ``...k_proj.weight``, ...), row slices of the
    fused arrays. ``model`` is not changed."""
    fused = {path: module for path, module in model.named_modules()
             if isinstance(module, FusedLinear)}
    if not fused:
        return tree_flatten(model.parameters())
    out, done = [], set()
    for name, value in tree_flatten(model.parameters()):
        owner = _fused_owner(name, fused)
        if owner is None:
            out.append((name, value))
        elif owner not in done:
            done.add(owner)
            out.extend(_part_parameters(owner, fused[owner]))
    return out


def _fused_owner(name: str, fused: dict[str, FusedLinear]) -> str | None:
    """The path of the fused layer that parameter ``name`` belongs to, if any."""
    components = name.split(".")
    for end in range(len(components) - 1, 0, -1):
        path = ".".join(components[:end])
        if path in fused:
            return path
    return None


def _part_parameters(path: str, layer: FusedLinear) -> list[tuple[str, mx.array]]:
    parent = path.rpartition(".")[0]
    prefix = f"{parent}." if parent else ""
    return [(f"{prefix}{name}.{key}", value)
            for name in layer.parts.names for key, value in layer.part_arrays(name).items()]
