"""Bad GGUF files and Ollama stores: each is an MlxZooError naming the file and what was expected,
raised before any tensor is read -- never a crash, a hang or gigabytes allocated."""

from __future__ import annotations

import hashlib
import json
import struct

import gguf
import numpy as np
import pytest

import mlx_zoo
from mlx_zoo.errors import GGUFError
from mlx_zoo.gguf.reader import read_gguf

Q = gguf.GGMLQuantizationType
HIDDEN, VOCAB, LAYERS, HEADS, KV, FF = 64, 96, 2, 4, 2, 128


def tiny_llama(writer, path, *, arch="llama", **meta_overrides):
    """A tiny random Llama-layout GGUF (Q8_0 matrices, float32 norms)."""
    rng = np.random.default_rng(0)
    head = HIDDEN // HEADS
    shapes = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        shapes.update({f"blk.{i}.attn_norm.weight": (HIDDEN,),
                       f"blk.{i}.attn_q.weight": (HIDDEN, HIDDEN),
                       f"blk.{i}.attn_k.weight": (KV * head, HIDDEN),
                       f"blk.{i}.attn_v.weight": (KV * head, HIDDEN),
                       f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN),
                       f"blk.{i}.ffn_norm.weight": (HIDDEN,),
                       f"blk.{i}.ffn_gate.weight": (FF, HIDDEN),
                       f"blk.{i}.ffn_up.weight": (FF, HIDDEN),
                       f"blk.{i}.ffn_down.weight": (HIDDEN, FF)})
    tensors = {name: (rng.standard_normal(shape).astype(np.float32) * 0.1,
                      Q.Q8_0 if len(shape) == 2 else Q.F32) for name, shape in shapes.items()}
    meta = {f"{arch}.block_count": LAYERS, f"{arch}.context_length": 128,
            f"{arch}.embedding_length": HIDDEN, f"{arch}.feed_forward_length": FF,
            f"{arch}.attention.head_count": HEADS, f"{arch}.attention.head_count_kv": KV,
            f"{arch}.rope.freq_base": 10000.0,
            f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": [f"t{i}" for i in range(VOCAB)],
            "tokenizer.ggml.merges": ["t 1"], "tokenizer.ggml.eos_token_id": 1}
    meta.update(meta_overrides)
    return writer(path, arch, meta, tensors)


@pytest.fixture
def good(tmp_path, gguf_writer):
    path = tiny_llama(gguf_writer, tmp_path / "good.gguf")
    mlx_zoo.load(path)  # the control: the unmodified file loads
    return path


def rewrite(path, data: bytes, name="bad.gguf"):
    out = path.parent / name
    out.write_bytes(data)
    return out


def refused(path, *match):
    with pytest.raises(mlx_zoo.MlxZooError) as info:
        mlx_zoo.load(path)
    text = str(info.value)
    assert str(path) in text or path.name in text, text
    for part in match:
        assert part in text, text
    return info.value


def test_truncated_anywhere(good):
    data = good.read_bytes()
    header_end = read_gguf(good).tensors["token_embd.weight"].offset
    for cut in (3, 10, 23, 40, 200, header_end // 2, header_end - 1, header_end + 100,
                len(data) - 1):
        refused(rewrite(good, data[:cut], f"cut{cut}.gguf"))


def test_wrong_magic_and_versions(good):
    data = good.read_bytes()
    refused(rewrite(good, b"GGML" + data[4:]), "not a GGUF file")
    refused(rewrite(good, data[:4] + struct.pack("<I", 1) + data[8:]), "version 1")
    refused(rewrite(good, data[:4] + struct.pack("<I", 99) + data[8:]), "version 99")
    refused(rewrite(good, data[:4] + struct.pack(">I", 3) + data[8:]), "big-endian")


def test_unknown_tensor_type(good):
    info = read_gguf(good)
    data = bytearray(good.read_bytes())
    name = b"token_embd.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * dims, 200)  # the ggml type field
    refused(rewrite(good, bytes(data)), "unknown ggml tensor type 200", "token_embd.weight")
    assert info.tensors  # the good file parses


def test_unknown_architecture_names_it(tmp_path, gguf_writer):
    path = tiny_llama(gguf_writer, tmp_path / "foo.gguf", arch="foo-arch")
    refused(path, "'foo-arch'", "no installed plugin maps it", "general.architecture")


@pytest.mark.parametrize("key,value,expected", [
    ("llama.block_count", 1000, "1000 layers"),
    ("llama.attention.head_count", 3, ""),
    ("llama.embedding_length", 32, ""),
    ("llama.attention.head_count_kv", 3, ""),
    ("llama.feed_forward_length", 96, ""),
])
def test_metadata_contradicting_tensors(tmp_path, gguf_writer, key, value, expected):
    path = tiny_llama(gguf_writer, tmp_path / "bad.gguf", **{key: value})
    refused(path, expected)


def test_metadata_of_the_wrong_type(tmp_path, gguf_writer):
    path = tiny_llama(gguf_writer, tmp_path / "bad.gguf",
                      **{"llama.attention.head_count": "four"})
    refused(path, "llama.attention.head_count", "integer")


def header(kvs: list[bytes], tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, len(kvs)) + b"".join(kvs)


def key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


def test_absurd_counts_and_lengths_allocate_nothing(tmp_path):
    arch = key("general.architecture") + struct.pack("<I", 8) + key("llama")
    cases = {
        "array": header([arch, key("x") + struct.pack("<IIQ", 9, 4, 1 << 40)]),
        "strings": header([arch, key("x") + struct.pack("<IIQ", 9, 8, 1 << 22)]),
        "string": header([key("x") + struct.pack("<IQ", 8, 1 << 60)]),
        "keys": b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 62),
        "tensors": b"GGUF" + struct.pack("<IQQ", 3, 1 << 62, 0),
        "nested": header([arch, key("x") + struct.pack("<IIQ", 9, 9, 1)
                          + struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1)]),
        "value type": header([key("x") + struct.pack("<I", 77) + b"\0" * 16]),
    }
    for name, data in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.gguf"
        path.write_bytes(data + b"\0" * 64)
        with pytest.raises(GGUFError):
            read_gguf(path)
        refused(path)


def test_duplicate_tensor_and_key(good):
    data = good.read_bytes()
    dup = data.replace(key("blk.1.attn_q.weight"), key("blk.0.attn_q.weight"), 1)
    refused(rewrite(good, dup, "dup_tensor.gguf"), "repeated", "blk.0.attn_q.weight")
    assert len("llama.context_length") == len("llama.rope.freq_base")
    twice = data.replace(key("llama.context_length"), key("llama.rope.freq_base"), 1)
    refused(rewrite(good, twice, "dup_key.gguf"), "repeated", "llama.rope.freq_base")


def test_data_outside_the_file_or_overlapping(good):
    data = good.read_bytes()
    info = read_gguf(good)
    last = max(info.tensors.values(), key=lambda t: t.offset)
    refused(rewrite(good, data[:last.offset + last.nbytes - 1]), "outside the file")
    first, second = sorted(info.tensors.values(), key=lambda t: t.offset)[:2]
    patched = bytearray(data)
    name = key(second.name)
    at = patched.index(name) + len(name)
    dims = struct.unpack_from("<I", patched, at)[0]
    assert struct.unpack_from("<Q", patched, at + 4 + 8 * dims + 4)[0] > 0
    struct.pack_into("<Q", patched, at + 4 + 8 * dims + 4, 0)  # the first tensor's offset
    refused(rewrite(good, bytes(patched), "overlap.gguf"), "overlaps")


def test_directory_with_two_models(good, tmp_path, gguf_writer):
    tiny_llama(gguf_writer, tmp_path / "other.gguf")
    with pytest.raises(GGUFError, match="name the file to load"):
        mlx_zoo.load(tmp_path)


def test_tokenizer_larger_than_the_embedding(tmp_path, gguf_writer):
    path = tiny_llama(gguf_writer, tmp_path / "vocab.gguf",
                      **{"tokenizer.ggml.tokens": [f"t{i}" for i in range(VOCAB + 5)]})
    with pytest.raises(mlx_zoo.TokenizerError, match="token_embd"):
        mlx_zoo.load_tokenizer(path)


def ollama_store(root, blob_bytes: bytes, *, size=None, digest=None):
    (root / "blobs").mkdir(parents=True)
    real = hashlib.sha256(blob_bytes).hexdigest()
    (root / "blobs" / f"sha256-{real}").write_bytes(blob_bytes)
    layer = {"mediaType": "application/vnd.ollama.image.model",
             "digest": f"sha256:{digest or real}", "size": len(blob_bytes) if size is None
             else size}
    path = root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))
    return path


@pytest.mark.parametrize("case", ["missing", "mismatch", "size", "no model layer", "not json"])
def test_ollama_store_refusals(good, tmp_path, monkeypatch, case):
    store = tmp_path / "store"
    data = good.read_bytes()
    if case == "missing":
        manifest = ollama_store(store, data, digest="0" * 64)
    elif case == "mismatch":  # right size, other content under the digest's name
        manifest = ollama_store(store, data)
        blob = next((store / "blobs").iterdir())
        blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif case == "size":
        manifest = ollama_store(store, data, size=len(data) + 1)
    elif case == "no model layer":
        manifest = ollama_store(store, data)
        manifest.write_text(json.dumps({"layers": []}))
    else:
        manifest = ollama_store(store, data)
        manifest.write_text("{not json")
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(GGUFError) as info:
        mlx_zoo.load("ollama:tiny")
    assert str(manifest) in str(info.value)


def test_ollama_good_store_and_names(good, tmp_path, monkeypatch):
    store = tmp_path / "store"
    ollama_store(store, good.read_bytes())
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mlx_zoo.load("ollama:tiny")
    mlx_zoo.load("ollama:library/tiny:latest")  # hashed once, remembered
    assert (tmp_path / "cache" / "mlx-zoo" / "ollama-verified.json").is_file()
    for bad in ("../../etc/passwd", "a/b/c/d", "tiny:..", ""):
        with pytest.raises(mlx_zoo.MlxZooError):
            mlx_zoo.load(f"ollama:{bad}")
