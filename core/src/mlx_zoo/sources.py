"""Checkpoint sources: what a reference names, opened as config + tensor headers + weights.

A reference is a model directory (config.json and safetensors, as transformers and mlx-lm write
them), a Hugging Face repo id, ``demo:NAME``, a GGUF file (or a directory holding one, or any
shard of a split one), or ``ollama:NAME[:TAG]`` (a GGUF blob of Ollama's local store).
:func:`open_checkpoint` returns an object with the same four members for each:

``path``        the file errors about the config name (config.json, or the .gguf file)
``directory``   the folder holding the checkpoint (tokenizer and support files)
``where``       what errors about the weights name (the directory, or the .gguf file)
``raw``         the normalised config.json dict (for GGUF: built from the metadata)
``headers()``   ``{file: {tensor name: entry}}`` before any tensor is read
``read_weights(dtype)``  every tensor by checkpoint name
``dense_nbytes(bits)``   what the weights take as dense float32
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx

from .config import CONFIG_FILE, read_config
from .demos import DEMO_PREFIX, demo_dir, is_demo_reference
from .errors import GGUFError, ModelNotFoundError
from .weights import (
    DTYPE_BYTES,
    checkpoint_headers,
    load_safetensors,
    read_safetensors_header,
    weight_files,
)

GGUF_SUFFIX = ".gguf"
OLLAMA_PREFIX = "ollama:"


class SafetensorsCheckpoint:
    """A model directory with config.json and (sharded) safetensors."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / CONFIG_FILE
        self.where = self.directory  # what the weight checks name
        self.raw = read_config(self.directory)

    def headers(self) -> dict[Path, dict[str, Any]]:
        return checkpoint_headers(self.directory)

    def read_weights(self, headers: dict[Path, dict[str, Any]] | None = None,
                     dtype: mx.Dtype | None = None) -> dict[str, mx.array]:
        return load_safetensors(self.directory, headers)

    def dense_nbytes(self, bits: int | None) -> int:
        return dense_nbytes(self.directory, bits)


DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.tiktoken",
                     "*.txt"]
"""Files fetched from the Hub: configs, weights and tokenizer files -- never code."""


def resolve_model_dir(path_or_repo: str | Path, revision: str | None = None) -> Path:
    """A local model directory for a path, a Hub repo id fetched with ``snapshot_download``
    (only :data:`DOWNLOAD_PATTERNS`; honours the HF cache and ``HF_HUB_OFFLINE``), or
    ``demo:NAME`` for a demo checkpoint shipped with a plugin (:mod:`mlx_zoo.demos`)."""
    if is_demo_reference(path_or_repo):  # "demo:qwen2": a checkpoint shipped with mlx-qwen2
        return demo_dir(str(path_or_repo)[len(DEMO_PREFIX):])
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ModelNotFoundError(f"{text}: no such model directory (and not a Hugging Face repo "
                                 "id of the form 'org/name')")
    import huggingface_hub  # imported only when a repo id is given

    try:
        return Path(huggingface_hub.snapshot_download(text, revision=revision,
                                                      allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as e:
        raise ModelNotFoundError(f"{text}: not a local directory, and the Hugging Face repo could "
                                 f"not be fetched ({type(e).__name__}: {e})") from e


PACKED_BITS = 32
"""Quantized weights are packed into uint32 words: ``32 / bits`` values per element."""


def dense_nbytes(model_dir: Path, bits: int | None, itemsize: int = 4) -> int:
    """Bytes the checkpoint's weights take as dense arrays of ``itemsize`` bytes (float32 by
    default), read from the safetensors headers only: a packed quantized ``X.weight`` (uint32,
    with an ``X.scales`` beside it) holds ``32 / bits`` values per element; its scales and biases
    disappear once dequantized."""
    entries: dict[str, dict] = {}
    for path in weight_files(Path(model_dir)):
        entries.update({k: v for k, v in read_safetensors_header(path).items()
                        if k != "__metadata__"})
    total = 0
    for name, entry in entries.items():
        count = 1
        for dim in entry["shape"]:
            count *= dim
        stem = name.rsplit(".", 1)[0]
        quantized = bits and f"{stem}.scales" in entries
        if quantized and name.endswith(".weight"):
            total += count * PACKED_BITS // bits * itemsize
        elif quantized:
            continue  # scales / biases
        else:
            total += count * max(itemsize, DTYPE_BYTES.get(entry["dtype"], itemsize))
    return total


def gguf_file_in(directory: Path) -> Path | None:
    """The GGUF file a directory without config.json holds (the first shard of a split one);
    None if it holds none; a :class:`GGUFError` if it holds several models (which is meant is
    ambiguous)."""
    files = sorted(p for p in directory.glob(f"*{GGUF_SUFFIX}") if p.is_file())
    from .gguf.reader import SPLIT_NAME

    models = [p for p in files if not SPLIT_NAME.match(p.name)
              or SPLIT_NAME.match(p.name)["no"] == "00001"]
    if len(models) > 1:
        raise GGUFError(directory, f"holds {len(models)} GGUF models "
                        f"({', '.join(p.name for p in models[:5])}): name the file to load")
    return models[0] if models else None


def resolve_reference(path_or_repo: str | Path, revision: str | None = None) -> Path:
    """The local checkpoint a reference names: a model directory or a GGUF file."""
    text = str(path_or_repo)
    if text.startswith(OLLAMA_PREFIX):
        from .gguf.ollama import resolve_ollama

        return resolve_ollama(text[len(OLLAMA_PREFIX):])
    path = Path(path_or_repo).expanduser()
    if is_gguf(path):
        return path
    if not path.is_dir():  # a repo id, demo:NAME (a directory or a GGUF file), or an error
        path = resolve_model_dir(path_or_repo, revision)
    if path.is_dir() and not (path / CONFIG_FILE).exists():
        found = gguf_file_in(path)
        if found is not None:
            return found
    return path


def has_gguf_magic(path: Path) -> bool:
    """Whether a file starts with GGUF's magic (Ollama's blobs have no .gguf suffix)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def is_gguf(path: Path) -> bool:
    return path.is_file() and (path.suffix == GGUF_SUFFIX or has_gguf_magic(path))


def open_checkpoint(path_or_repo: str | Path, revision: str | None = None):
    """The checkpoint a reference names, opened (config read and checked, headers not yet)."""
    if path_or_repo is None:
        raise ModelNotFoundError("no model given (None)")
    local = resolve_reference(path_or_repo, revision)
    if is_gguf(local):
        from .gguf.checkpoint import GGUFCheckpoint

        return GGUFCheckpoint(local)
    return SafetensorsCheckpoint(local)
