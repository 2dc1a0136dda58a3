"""A GGUF file as a checkpoint: the config, tensor headers and weights :func:`mlx_zoo.load` reads,
in the names and layout the owning plugin's model expects.

The plugin is found by ``general.architecture`` through the ``register_gguf_architectures``
hook (:class:`~mlx_zoo.gguf.GGUFArchitecture`); its mapping gives config.json and the tensor
names. Q4_0/Q4_1/Q8_0 tensors stay quantized (group size 32), recorded in the config's
``quantization`` block exactly as mlx-lm writes one (global bits, per-layer overrides), so the
rest of the loader -- strict checks, dequantize/dtype policy, fusion -- runs unchanged.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import mlx.core as mx

from .. import registry
from ..config import QUANTIZATION_KEY, normalize_config
from ..errors import GGUFError, PluginLoadError
from .mapping import GGUFArchitecture, split_name, unpermute_rows
from .reader import GGUFFile, read_gguf, type_name
from .tensors import F16, F32, GROUP_SIZE, KEPT_QUANTIZED, Quantized, read_tensor

MLX_READS = {F32, F16, *KEPT_QUANTIZED}
"""The ggml types ``mx.load`` reads into the arrays mlx-zoo's own reader makes."""


def _native_parts(arrays: dict[str, mx.array], name: str, suffix: str) -> dict[str, mx.array]:
    """The arrays ``mx.load`` made of one GGUF tensor: packed weight, scales and biases for a
    quantized one (``stem.weight/.scales/.biases``), else the tensor itself."""
    stem = name.rpartition(".")[0]
    if f"{stem}.scales" in arrays and suffix == "weight":
        return {part: arrays[f"{stem}.{part}"] for part in ("weight", "scales", "biases")}
    return {suffix: arrays[name]}

HOOK = "register_gguf_architectures"
ARCH_KEY = "general.architecture"
KNOWN_GGUF_PACKAGES = {"llama": "mlx-llama", "qwen2": "mlx-qwen2", "qwen3": "mlx-qwen3",
                       "qwen3moe": "mlx-qwen3", "gemma2": "mlx-gemma", "gemma3": "mlx-gemma",
                       "hunyuan-dense": "mlx-hunyuan", "hunyuan-moe": "mlx-hunyuan",
                       "llama4": "mlx-llama4"}
"""Plugins that would add a GGUF architecture no installed plugin maps (install hints)."""


def gguf_architecture(gguf: GGUFFile) -> GGUFArchitecture:
    """The installed plugins' mapping for the file's ``general.architecture``."""
    name = gguf.architecture
    found = registry.find_contribution(HOOK, name)
    if found is None:
        hint = KNOWN_GGUF_PACKAGES.get(name) or registry.known_package(name)
        more = f"; `pip install {hint}` would add it" if hint else ""
        raise GGUFError(gguf.path, f"GGUF architecture {name!r}: no installed plugin maps it "
                        f"(plugins declare theirs with the {HOOK} hook){more}", ARCH_KEY)
    if not isinstance(found, GGUFArchitecture):
        raise PluginLoadError(registry.provider_of(HOOK, name) or "?", f"its {HOOK} hook",
                              TypeError(f"{name!r} maps to a {type(found).__name__}, expected "
                                        "a GGUFArchitecture"))
    return found


class GGUFCheckpoint:
    """A checkpoint read from a GGUF file (or split set): ``raw`` is the normalised config,
    ``path`` the file every error names, ``directory`` the folder holding it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.directory = self.path.parent
        self.where = self.path
        self.gguf = read_gguf(self.path, strings=False)  # no vocabulary needed here
        self.architecture = gguf_architecture(self.gguf)
        raw = self.architecture.config(self.gguf, self.architecture.model_type)
        self.names = self._names()
        quantization = self._quantization()
        if quantization:
            raw[QUANTIZATION_KEY] = quantization
        self.raw = normalize_config(raw, self.path)

    def _names(self) -> dict[str, tuple[str, str]]:
        """``{GGUF tensor name: (checkpoint module name, suffix)}`` for the mapped tensors."""
        arch, names = self.architecture, {}
        for name in self.gguf.tensors:
            stem, suffix, index = split_name(name)
            if stem in arch.ignored:
                continue
            target = arch.tensors.get(stem)
            if target is None:
                raise GGUFError(self.path, f"tensor not mapped for GGUF architecture "
                                f"{arch.architecture!r} (model_type {arch.model_type!r}): an "
                                "unexpected tensor, or a part the plugin does not model", name)
            names[name] = (target.format(i=index), suffix)
        return names

    def _quantization(self) -> dict[str, Any] | None:
        """mlx-lm's ``quantization`` block for the tensors kept quantized: the commonest bits
        globally, a per-layer entry where a layer's bits differ."""
        bits = {module: KEPT_QUANTIZED[self.gguf.tensors[name].ggml_type]
                for name, (module, suffix) in self.names.items()
                if suffix == "weight" and self.gguf.tensors[name].ggml_type in KEPT_QUANTIZED}
        if not bits:
            return None
        common = Counter(bits.values()).most_common(1)[0][0]
        block = {"group_size": GROUP_SIZE, "bits": common, "mode": "affine"}
        for module, b in sorted(bits.items()):
            if b != common:
                block[module] = {"group_size": GROUP_SIZE, "bits": b, "mode": "affine"}
        return block

    def headers(self) -> dict[Path, dict[str, Any]]:
        """safetensors-like headers, by checkpoint name (quantized tensors as their packed
        weight, scales and biases), for the checks that run before any tensor is read."""
        entries: dict[str, Any] = {}
        for name, (module, suffix) in self.names.items():
            info = self.gguf.tensors[name]
            span = [info.offset, info.offset + info.nbytes]
            if info.ggml_type in KEPT_QUANTIZED:
                bits = KEPT_QUANTIZED[info.ggml_type]
                lead, cols = list(info.shape[:-1]), info.shape[-1]
                entries[f"{module}.{suffix}"] = {"dtype": "U32", "data_offsets": span,
                                                 "shape": lead + [cols * bits // 32]}
                for part in ("scales", "biases"):
                    entries[f"{module}.{part}"] = {"dtype": "F16",
                                                   "shape": lead + [cols // GROUP_SIZE],
                                                   "data_offsets": span}
            else:
                entries[f"{module}.{suffix}"] = {"dtype": type_name(info.ggml_type),
                                                 "shape": list(info.shape), "data_offsets": span}
        return {self.path: entries}

    def read_weights(self, headers: Any = None, dtype: mx.Dtype | None = None
                     ) -> dict[str, mx.array]:
        """Every mapped tensor, under its checkpoint name, llama.cpp's row permutation and
        constant offsets (``GGUFArchitecture.shifted``) undone;
        types MLX cannot hold quantized are dequantized to ``dtype`` (float16 if None)."""
        native = self._mlx_reads()
        weights: dict[str, mx.array] = {}
        for name, (module, suffix) in self.names.items():
            if native is not None:
                parts = _native_parts(native, name, suffix)
            else:
                value = read_tensor(self.gguf.tensors[name], dtype)
                parts = value.parts() if isinstance(value, Quantized) else {suffix: value}
            quantized = "scales" in parts
            heads = self._permuted_heads(name)
            shift = self.architecture.shifted.get(split_name(name)[0])
            for part, array in parts.items():
                if heads:
                    array = self._unpermute(name, array, heads)
                if shift and part == ("biases" if quantized else "weight"):
                    # w = s * q + b: a constant comes off the bias of a quantized tensor
                    array = (array - shift).astype(array.dtype)
                weights[f"{module}.{part}"] = array
        return weights

    def _mlx_reads(self) -> dict[str, mx.array] | None:
        """Where every tensor is of a type MLX's own GGUF reader (``mx.load``, C++) turns into
        the same arrays :func:`~mlx_zoo.gguf.tensors.read_tensor` makes -- F32, F16, Q4_0,
        Q4_1, Q8_0; the tests check they are bit-identical -- its arrays, read ~7x faster;
        else None. Only a file this module's reader has validated gets here."""
        if any(info.ggml_type not in MLX_READS for info in self.gguf.tensors.values()):
            return None
        arrays: dict[str, mx.array] = {}
        for path in sorted({info.path for info in self.gguf.tensors.values()}):
            try:
                arrays.update(mx.load(str(path)))
            except Exception:  # MLX's reader refused what ours accepted: read it ourselves
                return None
        return arrays

    def _permuted_heads(self, name: str) -> Any:
        """The head count of a tensor llama.cpp permuted (None for the others)."""
        key = self.architecture.permuted.get(split_name(name)[0])
        return None if key is None else self.raw.get(key)

    def _unpermute(self, name: str, array: mx.array, heads: Any) -> mx.array:
        try:
            return unpermute_rows(array, heads)
        except (ValueError, TypeError) as e:
            raise GGUFError(self.path, f"cannot undo llama.cpp's row permutation with {heads} "
                            f"heads ({e}): the head counts contradict the tensor's shape "
                            f"{list(self.gguf.tensors[name].shape)}", name) from e

    def dense_nbytes(self, bits: int | None = None, itemsize: int = 4) -> int:
        """Bytes the weights take as dense arrays of ``itemsize`` bytes (``bits`` is the
        safetensors source's argument; the GGUF directory knows every shape)."""
        total = 0
        for name in self.names:
            count = 1
            for d in self.gguf.tensors[name].shape:
                count *= d
            total += count * itemsize
        return total
