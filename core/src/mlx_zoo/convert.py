"""``mlx-zoo convert``: a checkpoint to an MLX checkpoint -- cast, quantized (uniform or with a
mixed-bit recipe) or dequantized -- in the layout mlx-zoo and mlx-lm both load.

The command takes mlx-lm's ``convert`` flags where they exist (``--hf-path``, ``--mlx-path``,
``-q/--quantize``, ``--q-bits``, ``--q-group-size``, ``--q-mode``, ``--quant-predicate``,
``--dtype``, ``-d/--dequantize``) and adds ``--force``, ``--max-shard-size``, ``--revision`` and
``--plugin``.

Data flow of :func:`convert`::

    options        -> checked (nothing read or written yet)
    --mlx-path     -> refused if it exists, unless --force
    source         -> mlx_zoo.load(lazy=True): every tensor a lazy array (nothing read yet)
    --dtype        -> lazy casts
    -q             -> every layer to be quantized found and its input size checked against the
                      group size up front; then mlx_zoo.quantize (lazy mx.quantize per layer)
    -d             -> lazy mx.dequantize per quantized tensor
    tensors        -> planned into shards by their nbytes (known without evaluating anything);
                      each tensor is evaluated, the shard written when full, references dropped
    everything     -> written into a directory beside the target, renamed into place at the end

Memory: only the tensors of the shard being written (plus the inputs of the one being computed)
are resident, so converting an N GB checkpoint needs well under N GB (docs/benchmarks.md,
"Converting big checkpoints").
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import MlxZooError
from .hookspecs import QuantizePredicate

log = logging.getLogger("mlx_zoo.convert")

CONVERSION_DTYPES = ("float16", "bfloat16", "float32")
"""What ``--dtype`` accepts: the floating-point types a checkpoint can be stored in."""

QUANT_MODE_LIMITS = {
    # mode: (bit widths, group sizes, default bits, default group size), as mx.quantize accepts
    # them on MLX 0.32 (tests/test_convert.py checks this table against mx.quantize).
    "affine": ((2, 3, 4, 5, 6, 8), (32, 64, 128), 4, 64),
    "mxfp4": ((4,), (32,), 4, 32),
    "nvfp4": ((4,), (16,), 4, 16),
    "mxfp8": ((8,), (32,), 8, 32),
}

QUANT_RECIPES = {"mixed_2_6": (2, 6), "mixed_3_4": (3, 4), "mixed_3_6": (3, 6),
                 "mixed_4_6": (4, 6)}
"""mlx-lm's mixed-bit recipes: (bits of most layers, bits of the sensitive ones)."""

DEFAULT_MLX_PATH = "mlx_model"
DEFAULT_SHARD_GB = 5.0  # like transformers' and mlx-lm's shards
GB = 1024**3

SUPPORT_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
                    "merges.txt", "spiece.model", "*.tiktoken", "generation_config.json",
                    "chat_template.json", "*.jinja", "preprocessor_config.json",
                    "processor_config.json")
"""The files of the source copied into the output (names, or ``fnmatch`` patterns): what
tokenizers, chat templates and generation read -- not whatever else the folder holds (notes,
training logs, other formats' weights) ..."""
CODE_SUFFIXES = (".py", ".pyc", ".so", ".dylib", ".dll", ".sh", ".exe")
"""... and never code, which mlx-zoo never runs and does not pass on."""
WRITTEN_FILES = ("config.json", "model.safetensors.index.json", "README.md")
"""Files the conversion writes itself."""

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SAFETENSORS_METADATA = {"format": "mlx"}


class ConvertError(MlxZooError, ValueError):
    """A conversion that cannot be done as asked: a bad flag, an existing output folder, a model
    that cannot be quantized that way. Raised before anything is written; ``flag`` names the
    option at fault (``--q-bits``), ``path`` the file or folder."""

    def __init__(self, message: str, *, flag: str | None = None, path: Path | str | None = None):
        self.flag = flag
        self.path = Path(path) if path is not None else None
        where = [str(path)] if path is not None else []
        where += [flag] if flag is not None else []
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


# -- options -----------------------------------------------------------------------------------


def quant_parameters(mode: str, bits: int | None, group_size: int | None) -> tuple[int, int]:
    """``(bits, group_size)`` for ``mode``, MLX's defaults filling the ``None``s; a mode, width
    or group size MLX cannot quantize with raises :class:`ConvertError` naming the flag."""
    if mode not in QUANT_MODE_LIMITS:
        raise ConvertError(f"{mode!r} is not a quantization mode (one of "
                           f"{', '.join(QUANT_MODE_LIMITS)})", flag="--q-mode")
    allowed_bits, allowed_groups, default_bits, default_group = QUANT_MODE_LIMITS[mode]
    bits = default_bits if bits is None else bits
    group_size = default_group if group_size is None else group_size
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed_bits:
        raise ConvertError(f"{bits!r} bits is not supported for --q-mode {mode} (one of "
                           f"{', '.join(map(str, allowed_bits))})", flag="--q-bits")
    if (isinstance(group_size, bool) or not isinstance(group_size, int)
            or group_size not in allowed_groups):
        raise ConvertError(f"group size {group_size!r} is not supported for --q-mode {mode} "
                           f"(one of {', '.join(map(str, allowed_groups))})",
                           flag="--q-group-size")
    return bits, group_size


def _check_options(*, dtype, quantize, q_bits, q_group_size, q_mode, quant_predicate, dequantize,
                   max_shard_size) -> None:
    if quantize and dequantize:
        raise ConvertError("choose either quantizing or dequantizing, not both",
                           flag="-q/--quantize with -d/--dequantize")
    if dtype is not None and dtype not in CONVERSION_DTYPES:
        raise ConvertError(f"{dtype!r} is not a floating-point type a checkpoint can be "
                           f"converted to (one of {', '.join(CONVERSION_DTYPES)})", flag="--dtype")
    if quantize:
        quant_parameters(q_mode, q_bits, q_group_size)
    elif (q_bits, q_group_size, quant_predicate) != (None, None, None) or q_mode != "affine":
        used = [f for f, v in (("--q-bits", q_bits), ("--q-group-size", q_group_size),
                               ("--quant-predicate", quant_predicate)) if v is not None]
        used += ["--q-mode"] if q_mode != "affine" else []
        raise ConvertError("quantization options given without -q/--quantize",
                           flag=", ".join(used))
    if isinstance(quant_predicate, str):
        if quant_predicate not in QUANT_RECIPES:
            raise ConvertError(f"unknown recipe {quant_predicate!r} (one of "
                               f"{', '.join(QUANT_RECIPES)})", flag="--quant-predicate")
        if q_mode != "affine":
            raise ConvertError(f"the mixed-bit recipes quantize in affine mode, not {q_mode!r}",
                               flag="--quant-predicate with --q-mode")
    elif quant_predicate is not None and not callable(quant_predicate):
        raise ConvertError("expected a recipe name or a callable (path, module) -> bool | dict",
                           flag="quant_predicate")
    if max_shard_size is not None and not (isinstance(max_shard_size, (int, float))
                                           and 0 < max_shard_size < float("inf")):
        raise ConvertError(f"{max_shard_size!r} is not a positive number of gigabytes",
                           flag="--max-shard-size")


def _check_paths(hf_path: str, mlx_path: Path, revision: str | None) -> None:
    """Both paths usable as names (a 300-character component is an OS error, not a
    traceback); ``--revision`` only with a Hub repo id (a local folder has none)."""
    from .demos import is_demo_reference

    for text, flag in ((hf_path, "--hf-path"), (str(mlx_path), "--mlx-path")):
        try:
            is_dir = Path(text).expanduser().is_dir()
        except (OSError, ValueError) as e:  # ENAMETOOLONG, NUL in the name
            raise ConvertError(f"cannot be used as a path ({e.__class__.__name__}: "
                               f"{getattr(e, 'strerror', None) or e})", flag=flag) from None
        if flag == "--hf-path" and revision is not None and (is_dir
                                                             or is_demo_reference(text)):
            raise ConvertError(f"--revision {revision!r} applies to a Hugging Face repo id; "
                               f"{text} is a local folder", flag="--revision")


def _check_target(mlx_path: Path, force: bool) -> None:
    if mlx_path.is_symlink() or (mlx_path.exists() and not mlx_path.is_dir()):
        raise ConvertError("exists and is not a directory; refusing to replace it",
                           path=mlx_path, flag="--mlx-path")
    if mlx_path.exists() and not force:
        raise ConvertError("already exists; pass --force to replace it (or choose another "
                           "--mlx-path)", path=mlx_path, flag="--mlx-path")


# -- mixed-bit recipes -------------------------------------------------------------------------


def _layer_index(path: str) -> int | None:
    """The decoder layer a module path belongs to: the number after ``layers``
    (``model.layers.7.mlp.down_proj`` -> 7)."""
    parts = path.split(".")
    for before, part in zip(parts, parts[1:], strict=False):
        if before == "layers" and part.isdigit():
            return int(part)
    return None


SENSITIVE_ATTENTION = frozenset({"v_proj", "v_a_proj", "v_b_proj"})
SENSITIVE_MLP = frozenset({"down_proj"})
OUTPUT_HEAD = "lm_head"


def mixed_recipe(recipe: str, model, group_size: int) -> Callable[[str, Any], dict]:
    """The decision of mlx-lm's recipe ``recipe`` (after llama.cpp's Q4_K_M), on module paths
    that follow the Hugging Face naming: the output head always, and the value and
    down projections of the sensitive layers -- the first and last eighth of the decoder
    layers, and every third one in between -- get the high bit width; every other layer the
    low one."""
    low, high = QUANT_RECIPES[recipe]
    paths = [p for p, _ in model.named_modules()]
    indices = {i for i in map(_layer_index, paths) if i is not None}
    if not indices or not any(set(p.split(".")) & SENSITIVE_MLP for p in paths):
        raise ConvertError(f"the recipe needs decoder layers under 'layers.<i>' with "
                           f"'down_proj' projections, which this {type(model).__name__} does not "
                           "have", flag="--quant-predicate")
    n = max(indices) + 1
    eighth = n // 8

    def sensitive(index: int) -> bool:
        return index < eighth or index >= 7 * n // 8 or (index - eighth) % 3 == 2

    def decide(path: str, module) -> dict:
        parts = set(path.split("."))
        index = _layer_index(path)
        index = 0 if index is None else index
        more = (OUTPUT_HEAD in parts
                or (bool(parts & (SENSITIVE_ATTENTION | SENSITIVE_MLP)) and sensitive(index)))
        return {"group_size": group_size, "bits": high if more else low, "mode": "affine"}

    return decide


# -- preparing the tensors ---------------------------------------------------------------------


def _quantizable_input(module) -> int | None:
    weight = getattr(module, "weight", None)
    return None if weight is None else weight.shape[-1]


def _quantize(model, config, *, bits: int, group_size: int, mode: str, quant_predicate,
              source: Path) -> dict:
    """Quantize ``model`` lazily through :func:`mlx_zoo.quantize`, after checking every layer
    that will be quantized -- those the plugin's ``quantize_predicate`` and the recipe select --
    against its group size. The plugin's predicate always has the last word: a layer it keeps
    in full precision stays so, and its own parameters for a layer win over the recipe's."""
    import mlx_zoo

    if isinstance(quant_predicate, str):
        quant_predicate = mixed_recipe(quant_predicate, model, group_size)
    own = model.quantize_predicate if isinstance(model, QuantizePredicate) else None

    def decide(path: str, module):
        decision = own(path, module) if own is not None else True
        if not decision:
            return False
        if isinstance(decision, dict) or quant_predicate is None:
            return decision
        return quant_predicate(path, module)

    selected, bad = [], []
    already = []
    for path, module in model.named_modules():
        if type(module).__name__.startswith("Quantized"):
            already.append(path)
        if not hasattr(module, "to_quantized"):
            continue
        decision = decide(path, module)
        if not decision:
            continue
        params = decision if isinstance(decision, dict) else {}
        layer_mode = params.get("mode", mode)
        layer_bits, layer_group = quant_parameters(layer_mode, params.get("bits", bits),
                                                   params.get("group_size", group_size))
        size = _quantizable_input(module)
        if size is not None and size % layer_group:
            bad.append(f"{path} (input size {size})")
        selected.append(path)
    if already:
        raise ConvertError(f"is already quantized ({already[0]}, ...); convert it with "
                           "-d/--dequantize first", path=source, flag="-q/--quantize")
    if not selected:
        raise ConvertError(f"no layer of this {type(model).__name__} can be quantized (none has "
                           "a quantized form, or the plugin's quantize_predicate excludes them "
                           "all)", path=source, flag="-q/--quantize")
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise ConvertError(f"group size {group_size} does not divide the input size of "
                           f"{shown}; choose a group size that divides them",
                           path=source, flag="--q-group-size")
    model.quantize_predicate = decide  # what mlx_zoo.quantize consults, for this instance only
    try:
        return mlx_zoo.quantize(model, config, bits=bits, group_size=group_size, mode=mode)
    finally:
        del model.quantize_predicate


def _dequantized(tensors: list[tuple[str, Any]], model, dtype) -> list[tuple[str, Any]]:
    """The checkpoint tensors with every quantized layer's ``weight``/``scales``/``biases``
    replaced by its lazily dequantized ``weight`` (in ``dtype``, else the scales' dtype)."""
    import mlx.core as mx

    quantized = {path: module for path, module in model.named_modules()
                 if "scales" in module and hasattr(module, "bits")}
    out = []
    for name, array in tensors:
        path, _, leaf = name.rpartition(".")
        module = quantized.get(path)
        if module is None:
            out.append((name, array))
        elif leaf == "weight":
            weight = mx.dequantize(module["weight"], module["scales"], module.get("biases"),
                                   group_size=module.group_size, bits=module.bits,
                                   mode=getattr(module, "mode", "affine"))
            out.append((name, weight.astype(dtype or module["scales"].dtype)))
        elif leaf == "bias":
            out.append((name, array.astype(dtype) if dtype is not None else array))
        # scales and biases: gone with the quantization
    return out


def _default_dtype(raw: dict) -> str | None:
    """mlx-lm's default for ``--dtype``: the ``torch_dtype`` (or ``dtype``) that config.json
    declares, when it is one of :data:`CONVERSION_DTYPES`."""
    for section in (raw, raw.get("text_config") or {}):
        for key in ("torch_dtype", "dtype"):
            value = section.get(key) if isinstance(section, dict) else None
            if value in CONVERSION_DTYPES:
                return value
    return None


def _cast(model, dtype) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    keep = getattr(model, "cast_predicate", None)
    params = [(k, v.astype(dtype)) for k, v in tree_flatten(model.parameters())
              if mx.issubdtype(v.dtype, mx.floating) and v.dtype != dtype
              and (keep is None or keep(k))]
    if params:
        model.update(tree_unflatten(params))


# -- writing -----------------------------------------------------------------------------------


def plan_shards(tensors: list[tuple[str, Any]], max_bytes: int) -> list[list[int]]:
    """Consecutive runs of tensor positions, each at most ``max_bytes`` (a bigger tensor gets a
    shard of its own); decided from the tensors' ``nbytes``, which lazy arrays know."""
    shards: list[list[int]] = []
    size = 0
    for i, (_, array) in enumerate(tensors):
        if not shards or (size + array.nbytes > max_bytes and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += array.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_shards(directory: Path, tensors: list[tuple[str, Any]], max_bytes: int,
                 progress: bool | None = None) -> dict[str, Any]:
    """Write ``tensors`` (``[(name, lazy array)]``, consumed: each entry is dropped once
    written) as safetensors shards of at most ``max_bytes`` into ``directory``, evaluating one
    tensor at a time and holding only the current shard; writes the index when there are
    several shards. Returns the index (``metadata.total_size``, ``weight_map``)."""
    import mlx.core as mx

    plan = plan_shards(tensors, max_bytes)
    names = shard_names(len(plan))
    total = sum(array.nbytes for _, array in tensors)
    weight_map: dict[str, str] = {}
    with _progress(total, progress) as bar:
        for shard, file_name in zip(plan, names, strict=True):
            arrays = {}
            for i in shard:
                name, array = tensors[i]
                tensors[i] = (name, None)  # the list no longer holds the graph
                mx.eval(array)
                arrays[name] = array
                del array
                bar.update(arrays[name].nbytes)
            mx.save_safetensors(str(directory / file_name), arrays,
                                metadata=SAFETENSORS_METADATA)
            weight_map.update(dict.fromkeys(arrays, file_name))
            del arrays
            mx.clear_cache()  # give the freed buffers back rather than keep them cached
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    if len(names) > 1:
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


class _NoBar:
    def update(self, n: int) -> None:
        pass


class _progress:
    """A tqdm bar over bytes written, shown only when stderr is a terminal (or when forced)."""

    def __init__(self, total: int, show: bool | None):
        self.total = total
        self.show = sys.stderr.isatty() if show is None else show
        self.bar = None

    def __enter__(self):
        if not self.show:
            return _NoBar()
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoBar()
        self.bar = tqdm(total=self.total, unit="B", unit_scale=True, unit_divisor=1024,
                        desc="converting", file=sys.stderr)
        return self.bar

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def copy_support_files(source: Path, target: Path) -> list[str]:
    """Copy the source's :data:`SUPPORT_PATTERNS` files -- tokenizer files, generation config,
    chat template, vocabularies -- into ``target``; returns the names copied. A symbolic link
    is followed only into the source folder itself or, in a Hugging Face cache snapshot, into
    the repository's own ``blobs/``; any other (``notes.txt -> ~/private``) is skipped with a
    warning, so that a converted model never carries a file from elsewhere."""
    import fnmatch
    import warnings

    copied = []
    for item in sorted(source.iterdir()):
        name = item.name
        if (name.startswith(".") or name in WRITTEN_FILES
                or name.lower().endswith(CODE_SUFFIXES)
                or not any(fnmatch.fnmatchcase(name, p) for p in SUPPORT_PATTERNS)
                or not item.is_file()):
            continue
        if item.is_symlink() and not _link_allowed(source, item):
            warnings.warn(f"{item}: a link to {item.resolve()}, outside the source folder "
                          f"and its Hugging Face cache blobs; not copied", stacklevel=2)
            continue
        shutil.copyfile(item, target / name)
        copied.append(name)
    return copied


def _link_allowed(source: Path, link: Path) -> bool:
    """Whether the symbolic link ``link`` in ``source`` resolves into ``source`` or, for a
    Hugging Face cache snapshot (``.../snapshots/<revision>``), into its repository's
    ``blobs/``."""
    real_source = source.resolve()
    resolved = link.resolve()
    allowed = [real_source]
    if real_source.parent.name == "snapshots":
        allowed.append(real_source.parent.parent / "blobs")
    return any(resolved.is_relative_to(root) for root in allowed)


def _front_matter(source: Path) -> dict:
    """The YAML front matter of the source's README.md (license, language, tags...), if any."""
    readme = source / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
        if not text.startswith("---"):
            return {}
        import yaml

        data = yaml.safe_load(text.split("---", 2)[1])
        return data if isinstance(data, dict) else {}
    except Exception:  # an unreadable card is not worth failing a conversion for
        return {}


def model_card(hf_path: str, source: Path, config: dict, mlx_path: Path,
               flags: list[str]) -> str:
    """README.md for the converted checkpoint: front matter as mlx-lm writes it
    (``library_name: mlx``, ``pipeline_tag``, ``tags`` with ``mlx``, ``base_model``) and how to
    use it with mlx-zoo."""
    import yaml

    from . import __version__

    card = _front_matter(source)
    card["library_name"] = "mlx"
    card.setdefault("pipeline_tag", "text-generation")
    tags = card.get("tags") if isinstance(card.get("tags"), list) else []
    card["tags"] = tags + [t for t in ("mlx", "mlx-zoo") if t not in tags]
    is_repo = not Path(hf_path).expanduser().exists() and hf_path.count("/") == 1
    if is_repo:
        card["base_model"] = hf_path
    origin = (f"[{hf_path}](https://huggingface.co/{hf_path})" if is_repo else f"`{hf_path}`")
    model_type = config.get("model_type", "?")
    plugin = _distribution(model_type)
    command = " ".join(["mlx-zoo convert", "--hf-path", hf_path, "--mlx-path", mlx_path.name]
                       + flags)
    name = mlx_path.name
    return (
        "---\n" + yaml.safe_dump(card, sort_keys=False, allow_unicode=True) + "---\n\n"
        f"# {name}\n\n"
        f"This model was converted to MLX format from {origin} (model_type `{model_type}`) "
        f"with mlx-zoo {__version__}:\n\n"
        f"```bash\n{command}\n```\n\n"
        "## Use with mlx-zoo\n\n"
        f"```bash\npip install mlx-zoo {plugin}\n"
        f"mlx-zoo generate --model {name} --prompt \"hello\"\n```\n\n"
        "```python\nimport mlx_zoo\n\n"
        f"model, config = mlx_zoo.load(\"{name}\")\n"
        f"tokenizer = mlx_zoo.load_tokenizer(\"{name}\")\n"
        "print(mlx_zoo.generate(model, tokenizer, \"hello\", max_tokens=64))\n```\n"
    )


def _distribution(model_type: str) -> str:
    try:
        from .registry import list_plugins

        for row in list_plugins(check=False):
            if row.model_type == model_type:
                return row.distribution
    except Exception:
        pass
    return f"<the plugin for {model_type}>"


def _sibling(target: Path, tag: str) -> Path:
    from .weights import sibling_directory

    return sibling_directory(target, tag)


def _swap_in(tmp: Path, target: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``target`` (:func:`mlx_zoo.weights.swap_in_directory`:
    an existing target is moved aside, put back if the rename fails, deleted after) -- which
    replaces an existing target only with ``force``."""
    from .weights import swap_in_directory

    if target.exists() and not force:
        raise ConvertError("appeared while converting; pass --force to replace it",
                           path=target, flag="--mlx-path")
    swap_in_directory(tmp, target)



# -- the conversion ----------------------------------------------------------------------------


def convert(hf_path: str | Path, mlx_path: str | Path = DEFAULT_MLX_PATH, *,
            dtype: str | None = None, quantize: bool = False, q_bits: int | None = None,
            q_group_size: int | None = None, q_mode: str = "affine",
            quant_predicate: str | Callable | None = None, dequantize: bool = False,
            force: bool = False, revision: str | None = None, plugin: str | None = None,
            max_shard_size: float | None = None, progress: bool | None = None) -> Path:
    """Convert the checkpoint at ``hf_path`` (a directory, a Hugging Face repo id or
    ``demo:NAME``) into an MLX checkpoint at ``mlx_path``; returns ``mlx_path``.

    ``dtype`` (float16, bfloat16, float32) casts the floating-point weights (default: the
    config's ``torch_dtype``, as mlx-lm does); ``quantize`` quantizes with ``q_mode`` (affine,
    mxfp4, nvfp4, mxfp8), ``q_bits`` and ``q_group_size`` (default: the mode's) -- the layers
    the plugin's ``quantize_predicate`` allows, or as ``quant_predicate`` decides (a recipe of
    :data:`QUANT_RECIPES`, or a callable ``(path, module) -> bool | dict``); ``dequantize``
    turns a quantized checkpoint dense. Tokenizer and generation files are copied, a
    README.md model card written. Shards hold at most ``max_shard_size`` GB (default 5).

    Every bad option raises :class:`ConvertError` before anything is written; an existing
    ``mlx_path`` is refused unless ``force``. The output is written beside ``mlx_path`` and
    renamed into place once complete (atomically replacing it with ``force``), so a failure
    leaves no half-written folder. Tensors are evaluated and written one shard at a time.
    """
    _check_options(dtype=dtype, quantize=quantize, q_bits=q_bits, q_group_size=q_group_size,
                   q_mode=q_mode, quant_predicate=quant_predicate, dequantize=dequantize,
                   max_shard_size=max_shard_size)
    hf_path = str(hf_path)
    _check_paths(hf_path, Path(mlx_path), revision)
    mlx_path = Path(mlx_path).expanduser()
    _check_target(mlx_path, force)
    tensors, config, source, flags = _prepare(
        hf_path, dtype=dtype, quantize=quantize, q_bits=q_bits, q_group_size=q_group_size,
        q_mode=q_mode, quant_predicate=quant_predicate, dequantize=dequantize,
        revision=revision, plugin=plugin)
    if source.resolve() == mlx_path.resolve():
        raise ConvertError("is the source checkpoint itself; choose another --mlx-path",
                           path=mlx_path, flag="--mlx-path")
    config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"  # as mlx_zoo.save writes
    card = model_card(hf_path, source, config, mlx_path, flags)
    max_bytes = int((DEFAULT_SHARD_GB if max_shard_size is None else max_shard_size) * GB)

    _remove_stale(mlx_path)
    try:
        tmp = _sibling(mlx_path, f"tmp-{os.getpid()}")
    except OSError as e:
        raise ConvertError(f"cannot create a directory beside it to write into ({e})",
                           path=mlx_path) from e
    try:
        with _terminate_as_exit():
            _write(tmp, tensors, max_bytes, progress, config_text, source, card)
            _swap_in(tmp, mlx_path, force)
    except MlxZooError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (OSError, RuntimeError, ValueError) as e:  # a full disk, MLX's write errors
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConvertError(f"could not write the converted checkpoint ({type(e).__name__}: "
                           f"{e}); nothing was left behind", path=mlx_path) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return mlx_path


def _write(tmp: Path, tensors: list[tuple[str, Any]], max_bytes: int, progress: bool | None,
           config_text: str, source: Path, card: str) -> None:
    """Everything of the converted checkpoint, into ``tmp``."""
    write_shards(tmp, tensors, max(1, max_bytes), progress)
    (tmp / "config.json").write_text(config_text, encoding="utf-8")
    if source.is_file():  # a GGUF file: its tokenizer and chat template as transformers' files
        write_gguf_tokenizer(source, tmp)
    else:
        copy_support_files(source, tmp)
    (tmp / "README.md").write_text(card, encoding="utf-8")


def write_gguf_tokenizer(source: Path, target: Path) -> None:
    """The GGUF file's tokenizer (vocabulary, merges, special tokens, chat template) saved as
    transformers writes one -- tokenizer.json and tokenizer_config.json -- for mlx-lm and
    transformers to read; the stop ids llama.cpp names go to generation_config.json."""
    from .tokenizer import load_tokenizer

    tokenizer = load_tokenizer(source)
    tokenizer.hf.save_pretrained(str(target))
    (target / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": sorted(tokenizer.eos_token_ids)}, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM (``kill``, a job scheduler's stop) raises ``SystemExit(143)`` in the main thread
    while converting, as SIGINT raises ``KeyboardInterrupt``: the cleanup of the half-written
    folder runs either way. Elsewhere (another thread) the handler is left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


STALE_PATTERN = re.compile(r"tmp-(\d+)-[^-]*")
"""The tag of a conversion's temporary folder, ``.NAME.tmp-<pid>-XXXX``: the pid of the process
writing it."""


def _remove_stale(mlx_path: Path) -> None:
    """Delete the ``.NAME.tmp-<pid>-*`` folders beside ``mlx_path`` whose process is gone (a
    conversion killed by SIGKILL or a power cut); a running conversion's folder is kept."""
    prefix = f".{mlx_path.name}."
    try:
        siblings = list(mlx_path.parent.iterdir())
    except OSError:
        return
    for item in siblings:
        match = (STALE_PATTERN.fullmatch(item.name[len(prefix):])
                 if item.name.startswith(prefix) else None)
        if match is None or not item.is_dir() or item.is_symlink():
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _process_alive(pid):
            continue
        log.info("removing %s, left by an interrupted conversion (process %d)", item, pid)
        shutil.rmtree(item, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or not a pid at all: left alone
    return True


def _prepare(hf_path: str, *, dtype, quantize, q_bits, q_group_size, q_mode, quant_predicate,
             dequantize, revision, plugin) -> tuple[list[tuple[str, Any]], dict, Path, list[str]]:
    """Load lazily and transform: ``(tensors, config.json dict, source dir, flags)``; the
    model itself is dropped here, so that the tensors list holds the only references to the
    lazy arrays (each is freed once written)."""
    import mlx.core as mx

    import mlx_zoo

    from .fusion import checkpoint_parameters
    from .sources import open_checkpoint

    checkpoint = open_checkpoint(hf_path, revision)  # a model directory or a GGUF file
    source, raw = checkpoint.where, checkpoint.raw
    # a GGUF file mixes block types (Q4_K beside Q8_0 beside F32): -q re-quantizes all of it
    # from its values, the blocks MLX could have kept included
    requantize = quantize and source.is_file()
    is_quantized = bool(raw.get("quantization")) and not requantize
    if dtype is None:
        dtype = _default_dtype(raw)
    flags = [f"--dtype {dtype}"] if dtype else []
    # the checkpoint as stored: no dtype/dequantize policy, no fused projections
    model, config = mlx_zoo.load(source, lazy=True, plugin=plugin, dtype=None,
                                 dequantize=requantize, fuse=False)
    target = getattr(mx, dtype) if dtype else None
    if quantize:
        if is_quantized:
            raise ConvertError("is already quantized; convert it with -d/--dequantize first",
                               path=source, flag="-q/--quantize")
        bits, group_size = quant_parameters(q_mode, q_bits, q_group_size)
        if target is not None:
            _cast(model, target)
        _quantize(model, config, bits=bits, group_size=group_size, mode=q_mode,
                  quant_predicate=quant_predicate, source=source)
        flags += ["-q", f"--q-mode {q_mode}", f"--q-bits {bits}", f"--q-group-size {group_size}"]
        if isinstance(quant_predicate, str):
            flags.append(f"--quant-predicate {quant_predicate}")
        tensors = list(checkpoint_parameters(model))
    elif dequantize and is_quantized:
        flags.append("-d")
        tensors = _dequantized(list(checkpoint_parameters(model)), model, target)
        if target is not None:
            tensors = [(k, v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v)
                       for k, v in tensors]
    else:
        flags += ["-d"] if dequantize else []
        if target is not None:
            _cast(model, target)
        tensors = list(checkpoint_parameters(model))
    if dequantize:
        config.clear_quantization()  # written dense
    data = config.to_dict()
    del model
    gc.collect()  # a module cycle would otherwise keep the model's arrays alive past writing
    return tensors, data, source, flags


# -- the command -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mlx-zoo convert``'s flags (mlx-lm's names where mlx-lm has them)."""
    parser.add_argument("--hf-path", "--model", required=True,
                        help="model to convert: a directory, a Hugging Face repo id or demo:NAME")
    parser.add_argument("--mlx-path", default=DEFAULT_MLX_PATH,
                        help="where to write the MLX model (default: %(default)s); must not "
                             "exist unless --force")
    parser.add_argument("-q", "--quantize", action="store_true", help="quantize the model")
    parser.add_argument("--q-bits", type=int, default=None,
                        help="bits per weight (default: the mode's: 4 for affine, mxfp4 and "
                             "nvfp4, 8 for mxfp8)")
    parser.add_argument("--q-group-size", type=int, default=None,
                        help="weights per scale (default: the mode's: 64 affine, 32 mxfp4/"
                             "mxfp8, 16 nvfp4)")
    parser.add_argument("--q-mode", default="affine",
                        help=f"quantization mode: {', '.join(QUANT_MODE_LIMITS)} "
                             "(default: %(default)s)")
    parser.add_argument("--quant-predicate", default=None,
                        help="mixed-bit recipe: " + ", ".join(QUANT_RECIPES) + " (more bits for "
                             "the output head and the sensitive layers' v_proj/down_proj)")
    parser.add_argument("--dtype", default=None,
                        help=f"store the unquantized weights as {', '.join(CONVERSION_DTYPES)} "
                             "(default: config.json's torch_dtype, else as stored)")
    parser.add_argument("-d", "--dequantize", action="store_true",
                        help="dequantize a quantized model")
    parser.add_argument("--force", action="store_true",
                        help="replace --mlx-path if it exists (atomically, once the new model "
                             "is complete)")
    parser.add_argument("--max-shard-size", type=float, default=None,
                        help=f"largest output shard in GB (default: {DEFAULT_SHARD_GB:g})")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag, commit)")
    parser.add_argument("--plugin", default=None,
                        help="distribution to use when several claim the model_type")


def run(args: argparse.Namespace) -> int:
    """Run ``mlx-zoo convert``; bad input raises :class:`ConvertError` (exit code 2 in the
    CLI)."""
    path = convert(args.hf_path, args.mlx_path, dtype=args.dtype, quantize=args.quantize,
                   q_bits=args.q_bits, q_group_size=args.q_group_size, q_mode=args.q_mode,
                   quant_predicate=args.quant_predicate, dequantize=args.dequantize,
                   force=args.force, revision=args.revision, plugin=args.plugin,
                   max_shard_size=args.max_shard_size)
    files = sorted(p.name for p in path.iterdir())
    size = sum((path / f).stat().st_size for f in files if f.endswith(".safetensors"))
    print(f"Wrote {path} ({size / GB:.2f} GB of weights; {', '.join(files)})")
    return 0


COMMAND = ("convert a checkpoint to MLX: cast, quantize or dequantize", add_arguments, run)
"""``(help, add_arguments, run)``: the entry ``mlx_zoo.cli.COMMANDS["convert"]`` takes."""
