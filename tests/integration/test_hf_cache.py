"""Sharded checkpoints straight from the Hugging Face cache.

In the cache ``huggingface_hub`` writes, every file of a snapshot is a relative symlink into the
repo's ``blobs/`` folder -- outside the snapshot directory. The index's shard names are therefore
checked as written (relative, no ``..``, ``.safetensors``), not by where they resolve. The tests
build that exact layout, check that ``huggingface_hub.scan_cache_dir`` accepts it, and load a
sharded qwen2 checkpoint from it offline: by repo id, by snapshot path and through the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_zoo
from mlx_zoo import SafetensorsError
from mlx_zoo.demos import demo_dir

REPO_ID = "zoo-org/tiny-qwen2"
SHARD_BYTES = 1_000_000  # the qwen2 demo holds ~3.7 MB of weights: four shards
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
IDS = mx.array([[5, 17, 99, 3, 250]])
CLI_TOKENS = 8  # tokens generated through the CLI: enough to compare the text


def git_blob_sha1(data: bytes) -> str:
    """The etag the Hub gives a regular (non-LFS) file: its git blob id."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def build_hf_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """The layout ``huggingface_hub`` writes for a model repo downloaded at one commit::

        models--org--name/blobs/<sha256 (LFS files) or git blob sha1>
        models--org--name/refs/main                  (the commit hash, no newline)
        models--org--name/snapshots/<commit>/<file> -> ../../blobs/<hash>  (relative symlinks)

    Returns the snapshot directory."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()  # 40 hex digits, like a git commit
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in sorted(source.iterdir()):
        data = f.read_bytes()
        lfs = f.suffix == ".safetensors"
        blob = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        (repo / "blobs" / blob).write_bytes(data)
        os.symlink(f"../../blobs/{blob}", snapshot / f.name)
    return snapshot


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """``(cache, snapshot, plain directory)``: the qwen2 demo saved in four shards into a plain
    directory (plus its tokenizer), and the same files as a Hugging Face cache."""
    root = tmp_path_factory.mktemp("hf")
    model, config = mlx_zoo.load("demo:qwen2")
    plain = mlx_zoo.save(model, config, root / "plain", max_shard_bytes=SHARD_BYTES)
    for name in TOKENIZER_FILES:
        shutil.copy(demo_dir("qwen2") / name, plain / name)
    assert len(list(plain.glob("model-*-of-*.safetensors"))) >= 3
    snapshot = build_hf_cache(root / "cache", REPO_ID, plain)
    return root / "cache", snapshot, plain


@pytest.fixture
def offline(hf_cache, monkeypatch):
    """This process, offline, with ``hf_cache`` as its Hugging Face cache (huggingface_hub reads
    HF_HUB_CACHE and HF_HUB_OFFLINE when imported, hence its constants are patched too)."""
    import huggingface_hub.constants as constants

    cache = hf_cache[0]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hf_cache


def cli_env(cache: Path, home: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
            "HF_HOME": str(home)}


def logits(model) -> np.ndarray:
    return np.array(model(IDS))


def test_layout_is_what_huggingface_hub_scans(hf_cache):
    import huggingface_hub

    cache, snapshot, plain = hf_cache
    info = huggingface_hub.scan_cache_dir(cache)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO_ID and repo.repo_type == "model"
    (revision,) = repo.revisions
    assert revision.commit_hash == snapshot.name and revision.refs == frozenset({"main"})
    assert {f.file_name for f in revision.files} == {p.name for p in plain.iterdir()}
    shard = next(snapshot.glob("model-00001-*.safetensors"))
    assert shard.is_symlink() and os.readlink(shard).startswith("../../blobs/")
    assert snapshot.resolve() not in shard.resolve().parents  # outside the snapshot


def test_load_by_repo_id_offline(offline):
    """Before: the shards were refused as 'outside the model directory'."""
    _, snapshot, plain = offline
    assert mlx_zoo.resolve_model_dir(REPO_ID) == snapshot
    model, config = mlx_zoo.load(REPO_ID)
    reference, _ = mlx_zoo.load(plain)
    np.testing.assert_array_equal(logits(model), logits(reference))
    assert config.model_type == "qwen2"


def test_load_by_snapshot_path(hf_cache):
    _, snapshot, plain = hf_cache
    model, _ = mlx_zoo.load(snapshot)
    reference, _ = mlx_zoo.load(plain)
    np.testing.assert_array_equal(logits(model), logits(reference))


def test_tokenizer_by_repo_id_offline(offline):
    _, _, plain = offline
    tokenizer = mlx_zoo.load_tokenizer(REPO_ID)
    assert tokenizer.encode("def f():") == mlx_zoo.load_tokenizer(plain).encode("def f():")


def test_cli_info_by_repo_id(hf_cache, tmp_path):
    cache, snapshot, _ = hf_cache
    result = subprocess.run([sys.executable, "-m", "mlx_zoo.cli", "info", REPO_ID],
                            capture_output=True, text=True, timeout=300,
                            env=cli_env(cache, tmp_path / "home"))
    assert result.returncode == 0, result.stderr
    assert f"path:           {snapshot}" in result.stdout
    assert "model_type:     qwen2" in result.stdout and "layers:         4" in result.stdout


def test_cli_generate_by_repo_id_matches_the_plain_directory(hf_cache, tmp_path):
    cache, _, plain = hf_cache
    env = cli_env(cache, tmp_path / "home")

    def text(model: str) -> str:
        result = subprocess.run([sys.executable, "-m", "mlx_zoo.cli", "generate", "--model",
                                 model, "-p", "def ", "--no-chat-template", "-m",
                                 str(CLI_TOKENS)],
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.split("=" * 10)[0]  # the text, before the statistics

    generated = text(REPO_ID)
    assert generated.strip() and generated == text(str(plain))


def test_shard_outside_the_snapshot_by_name_is_still_refused(hf_cache, tmp_path):
    """Checking names, not targets, still refuses an index that names '../' paths."""
    _, snapshot, _ = hf_cache
    copy = tmp_path / "snap"
    shutil.copytree(snapshot, copy, symlinks=False)
    index = json.loads((copy / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../snap/" + index["weight_map"][first]
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SafetensorsError, match=r"'\.\./snap/model-00001.*' has an empty, '\.' "
                                               r"or '\.\.' component"):
        mlx_zoo.load(copy)


@pytest.mark.parametrize("name, problem", [
    ("/etc/model.safetensors", "is an absolute path"),
    ("a/../model.safetensors", r"'\.\.' component"),
    ("./model.safetensors", r"'\.' or"),
    ("shards//model.safetensors", "empty"),
    ("", "empty"),
    ("..\\model.safetensors", "backslash"),
    ("C:model.safetensors", "colon"),
    ("model.safetensors\0.txt", "NUL"),
    ("config.json", r"is not a \*\.safetensors file name"),
    (".safetensors", r"is not a \*\.safetensors file name"),
    (3, "is not a string"),
    (None, "is not a string"),
])
def test_index_names_are_checked_as_written(tiny_checkpoint, name, problem):
    index = {"weight_map": {"embed.weight": name}}
    (tiny_checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SafetensorsError, match=r"index\.json, tensor 'embed\.weight': "
                                               r"weight_map entry .*" + problem):
        mlx_zoo.load(tiny_checkpoint)


def test_shards_in_a_subfolder_are_accepted(tiny_checkpoint):
    weights = mx.load(str(tiny_checkpoint / "model.safetensors"))
    (tiny_checkpoint / "model.safetensors").rename(tiny_checkpoint / "all.safetensors")
    (tiny_checkpoint / "shards").mkdir()
    (tiny_checkpoint / "all.safetensors").rename(tiny_checkpoint / "shards" / "all.safetensors")
    index = {"weight_map": {k: "shards/all.safetensors" for k in weights}}
    (tiny_checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    model, _ = mlx_zoo.load(tiny_checkpoint)
    np.testing.assert_array_equal(np.array(model.embed.weight), np.array(weights["embed.weight"]))


def test_saving_over_a_snapshot_leaves_the_cache_blobs_alone(hf_cache, tmp_path):
    """The snapshot's tokenizer (a symlink to a blob) is copied, not hard-linked: editing the
    saved file later cannot change the cache."""
    _, _, plain = hf_cache
    snapshot = build_hf_cache(tmp_path / "cache", REPO_ID, plain)
    blobs = snapshot.parent.parent / "blobs"
    before = {p.name: p.read_bytes() for p in blobs.iterdir()}
    model, config = mlx_zoo.load(snapshot)
    mlx_zoo.save(model, config, snapshot)
    tokenizer = snapshot / "tokenizer.json"
    assert not tokenizer.is_symlink() and tokenizer.stat().st_nlink == 1
    assert tokenizer.read_bytes() == (plain / "tokenizer.json").read_bytes()
    assert {p.name: p.read_bytes() for p in blobs.iterdir()} == before
    again, _ = mlx_zoo.load(snapshot)
    np.testing.assert_array_equal(logits(again), logits(model))
