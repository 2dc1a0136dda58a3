"""``ollama:NAME[:TAG]``: a model pulled by Ollama, read from its local store without running it.

Ollama's store (``$OLLAMA_MODELS``, default ``~/.ollama/models``) holds a JSON manifest per model
at ``manifests/<registry>/<namespace>/<name>/<tag>`` -- ``llama3.2`` is
``registry.ollama.ai/library/llama3.2/latest`` -- whose layers name content-addressed blobs
``blobs/sha256-<hex>``: the GGUF weights (media type ``application/vnd.ollama.image.model``),
the prompt template, the default parameters (JSON), the license. The model blob is checked
against its digest (size, then sha256; a verified blob is remembered by size and modification
time, so a 40 GB model is hashed once, not at every load). The template layer is Go
template syntax, which mlx-zoo does not run: the chat template comes from the GGUF metadata, as
llama.cpp reads it. From the parameters layer, ``stop`` strings that are single tokens become
stop ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import GGUFError, ModelNotFoundError

MODELS_ENV = "OLLAMA_MODELS"
DEFAULT_REGISTRY, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
MODEL_MEDIA = "application/vnd.ollama.image.model"
PARAMS_MEDIA = "application/vnd.ollama.image.params"
DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_MANIFEST_BYTES = 1 << 20
VERIFIED_FILE = "ollama-verified.json"


def models_dir() -> Path:
    return Path(os.environ.get(MODELS_ENV) or Path.home() / ".ollama" / "models").expanduser()


def manifest_path(name: str) -> Path:
    """``[registry/][namespace/]model[:tag]`` to its manifest file, each part checked (no path
    escapes the store)."""
    model, _, tag = name.partition(":")
    parts = model.split("/")
    if not 1 <= len(parts) <= 3:
        raise ModelNotFoundError(f"ollama:{name}: expected "
                                 "ollama:[REGISTRY/][NAMESPACE/]NAME[:TAG]")
    parts = [DEFAULT_REGISTRY, DEFAULT_NAMESPACE][:3 - len(parts)] + parts
    tag = tag or DEFAULT_TAG
    for part in [*parts, tag]:
        if not PART.match(part):
            raise ModelNotFoundError(f"ollama:{name}: {part!r} is not a valid Ollama name part")
    return models_dir() / "manifests" / Path(*parts) / tag


def read_manifest(name: str) -> tuple[Path, dict[str, Any]]:
    path = manifest_path(name)
    if not path.is_file():
        raise ModelNotFoundError(f"ollama:{name}: no manifest at {path} (is the model pulled? "
                                 f"`ollama pull {name}`; the store is ${MODELS_ENV} or "
                                 "~/.ollama/models)")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise GGUFError(path, f"a manifest of over {MAX_MANIFEST_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GGUFError(path, f"not a readable JSON manifest ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise GGUFError(path, "expected an object with a 'layers' list", "layers")
    return path, data


def _layer(path: Path, manifest: dict[str, Any], media: str) -> dict[str, Any] | None:
    found = [layer for layer in manifest["layers"]
             if isinstance(layer, dict) and layer.get("mediaType") == media]
    if len(found) > 1:
        raise GGUFError(path, f"{len(found)} layers of media type {media} (expected one)",
                        "layers")
    return found[0] if found else None


def _blob(path: Path, layer: dict[str, Any]) -> tuple[Path, str, int]:
    digest, size = layer.get("digest"), layer.get("size")
    match = DIGEST.match(digest) if isinstance(digest, str) else None
    if not match or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise GGUFError(path, f"a layer needs a 'sha256:<64 hex>' digest and a size, got "
                        f"{digest!r} / {size!r}", "layers")
    blob = models_dir() / "blobs" / f"sha256-{match.group(1)}"
    if not blob.is_file():
        raise GGUFError(path, f"its layer {digest} is missing from the store ({blob})", "layers")
    return blob, match.group(1), size


def _verified_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlx-zoo" / VERIFIED_FILE


def _verify(manifest: Path, blob: Path, hexdigest: str, size: int) -> None:
    """The blob holds ``size`` bytes hashing to ``hexdigest``; hashed once per (size, mtime)."""
    stat = blob.stat()
    if stat.st_size != size:
        raise GGUFError(manifest, f"the blob {blob.name} holds {stat.st_size} bytes, the "
                        f"manifest says {size}: a partial or replaced download", "layers")
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    cache = _verified_cache()
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and known.get(hexdigest) == stamp:
        return
    sha = hashlib.sha256()
    with open(blob, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            sha.update(chunk)
    if sha.hexdigest() != hexdigest:
        raise GGUFError(manifest, f"the blob {blob.name} does not hash to its digest (sha256 "
                        f"{sha.hexdigest()}): a corrupt or replaced file", "layers")
    known = known if isinstance(known, dict) else {}
    known[hexdigest] = stamp
    try:  # a cache only: a read-only home just means hashing again next time
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError:
        pass


def resolve_ollama(name: str) -> Path:
    """The verified GGUF blob of ``ollama:NAME[:TAG]``."""
    path, manifest = read_manifest(name)
    layer = _layer(path, manifest, MODEL_MEDIA)
    if layer is None:
        raise GGUFError(path, f"no layer of media type {MODEL_MEDIA} (the weights)", "layers")
    blob, hexdigest, size = _blob(path, layer)
    _verify(path, blob, hexdigest, size)
    return blob


def ollama_params(name: str) -> dict[str, Any]:
    """The model's default parameters (the params layer's JSON object), ``{}`` if none."""
    path, manifest = read_manifest(name)
    layer = _layer(path, manifest, PARAMS_MEDIA)
    if layer is None:
        return {}
    blob, _, size = _blob(path, layer)
    if size > MAX_MANIFEST_BYTES or blob.stat().st_size != size:
        raise GGUFError(path, f"the params layer {blob.name} is not the small JSON file "
                        f"expected ({blob.stat().st_size} bytes, manifest: {size})", "layers")
    try:
        data = json.loads(blob.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GGUFError(blob, f"the params layer is not JSON ({e})") from e
    return data if isinstance(data, dict) else {}


def stop_token_ids(name: str, hf_tokenizer: Any) -> set[int]:
    """The params layer's ``stop`` strings that are single tokens of the vocabulary, as ids."""
    stops = ollama_params(name).get("stop")
    stops = [stops] if isinstance(stops, str) else stops if isinstance(stops, list) else []
    vocab = hf_tokenizer.get_vocab()
    return {vocab[s] for s in stops if isinstance(s, str) and s in vocab}
