"""``mlx_zoo.save`` is atomic: the checkpoint is written into a directory beside the target and
swapped in once complete, so a failure at any point -- an unserialisable config, an error at the
third shard, a full disk -- leaves the target byte for byte as it was and no temporary directory
behind; saving over a model directory replaces its checkpoint (no stale shard or index) and keeps
its other files (tokenizer, README, ...)."""

from __future__ import annotations

import errno
import hashlib
import json
import os

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map

import mlx_zoo
from mlx_zoo import MlxZooError
from mlx_zoo.errors import SaveError

SMALL_SHARDS = 1024  # bytes: zoo_tiny's three tensors (2 KiB, 3 KiB, 2 KiB) give three shards
IDS = mx.array([[3, 1, 4, 1, 5]])
NON_CHECKPOINT_FILES = {"tokenizer.json": "{}", "tokenizer_config.json": "{}",
                        "generation_config.json": '{"eos_token_id": 2}', "README.md": "# tiny\n",
                        "chat_template.jinja": "{{ messages }}"}


def tree_digest(path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def siblings(path) -> list[str]:
    """What lies beside ``path`` apart from it: leftovers of a save would show here."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


@pytest.fixture
def sharded(tiny_checkpoint, tmp_path):
    """zoo_tiny saved in three shards with an index (the 'old' checkpoint), plus the model."""
    model, config = mlx_zoo.load(tiny_checkpoint)
    out = mlx_zoo.save(model, config, tmp_path / "out" / "model", max_shard_bytes=SMALL_SHARDS)
    assert len(list(out.glob("model-*-of-00003.safetensors"))) == 3
    return out, model, config


def other_model(tiny_checkpoint):
    """The same architecture with different weights (the 'new' checkpoint)."""
    model, config = mlx_zoo.load(tiny_checkpoint)
    model.update(tree_map(lambda v: v + 1, model.parameters()))
    return model, config


def test_single_file_over_sharded_replaces_everything(sharded, tiny_checkpoint):
    """Before: the old index stayed, and load read the OLD shards back."""
    path, _, _ = sharded
    model, config = other_model(tiny_checkpoint)
    mlx_zoo.save(model, config, path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    again, _ = mlx_zoo.load(path)
    np.testing.assert_array_equal(np.array(again(IDS)), np.array(model(IDS)))
    assert siblings(path) == []


def test_sharded_over_single_file(tiny_checkpoint, tmp_path):
    model, config = mlx_zoo.load(tiny_checkpoint)
    path = mlx_zoo.save(model, config, tmp_path / "m")
    new, _ = other_model(tiny_checkpoint)
    mlx_zoo.save(new, config, path, max_shard_bytes=SMALL_SHARDS)
    assert not (path / "model.safetensors").exists()
    again, _ = mlx_zoo.load(path)
    np.testing.assert_array_equal(np.array(again(IDS)), np.array(new(IDS)))


def test_failure_at_the_third_shard_leaves_the_old_checkpoint(sharded, tiny_checkpoint,
                                                              monkeypatch):
    """Before: shards 1-2 new, shard 3 old -- a mixed checkpoint."""
    path, old_model, _ = sharded
    before = tree_digest(path)
    real, calls = mx.save_safetensors, []

    def failing(file, *args, **kwargs):
        calls.append(file)
        if len(calls) == 3:
            raise RuntimeError("[save_safetensors] injected failure")
        return real(file, *args, **kwargs)

    monkeypatch.setattr(mx, "save_safetensors", failing)
    model, config = other_model(tiny_checkpoint)
    with pytest.raises(SaveError, match=r"model: could not write the checkpoint \(RuntimeError: "
                                        r".*injected failure\); the previous contents are "
                                        r"unchanged"):
        mlx_zoo.save(model, config, path, max_shard_bytes=SMALL_SHARDS)
    assert len(calls) == 3
    assert tree_digest(path) == before and siblings(path) == []
    monkeypatch.undo()
    again, _ = mlx_zoo.load(path)
    np.testing.assert_array_equal(np.array(again(IDS)), np.array(old_model(IDS)))


def test_disk_full_leaves_the_old_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    """Before: ENOSPC truncated the only copy of model.safetensors."""
    model, config = mlx_zoo.load(tiny_checkpoint)
    path = mlx_zoo.save(model, config, tmp_path / "out" / "m")
    before = tree_digest(path)

    def full(file, *args, **kwargs):
        with open(file, "wb") as f:  # a partial file, as a full disk leaves
            f.write(b"\0" * 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), file)

    monkeypatch.setattr(mx, "save_safetensors", full)
    new, _ = other_model(tiny_checkpoint)
    with pytest.raises(SaveError, match="No space left on device"):
        mlx_zoo.save(new, config, path)
    assert tree_digest(path) == before and siblings(path) == []


def test_unserialisable_config_fails_before_anything_is_written(sharded, tiny_checkpoint,
                                                                monkeypatch):
    """Before: the weights were overwritten, then json.dumps raised."""
    path, _, _ = sharded
    before = tree_digest(path)
    writes = []
    monkeypatch.setattr(mx, "save_safetensors", lambda *a, **k: writes.append(a))
    model, config = other_model(tiny_checkpoint)
    bad = {**config.to_dict(), "rope_scaling": {"factor": object()}}
    with pytest.raises(MlxZooError, match=r"config\.json cannot be written: key "
                                          r"'rope_scaling\.factor' \(object\) is not "
                                          r"JSON-serialisable"):
        mlx_zoo.save(model, bad, path)
    assert not writes and tree_digest(path) == before and siblings(path) == []


def test_non_checkpoint_files_are_carried_over(sharded, tiny_checkpoint):
    """Saving over a model directory keeps its tokenizer, README and the like; only the
    weights, the index and config.json are replaced."""
    path, _, _ = sharded
    for name, text in NON_CHECKPOINT_FILES.items():
        (path / name).write_text(text)
    (path / "extra").mkdir()
    (path / "extra" / "notes.txt").write_text("kept")
    model, config = other_model(tiny_checkpoint)
    mlx_zoo.save(model, config, path)
    for name, text in NON_CHECKPOINT_FILES.items():
        assert (path / name).read_text() == text
    assert (path / "extra" / "notes.txt").read_text() == "kept"
    assert not (path / "model.safetensors.index.json").exists()
    assert not list(path.glob("model-*.safetensors"))


def test_failed_save_keeps_the_files_too(sharded, tiny_checkpoint, monkeypatch):
    path, _, _ = sharded
    (path / "tokenizer.json").write_text("{}")
    before = tree_digest(path)
    monkeypatch.setattr(mx, "save_safetensors", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EIO, "I/O error")))
    model, config = other_model(tiny_checkpoint)
    with pytest.raises(SaveError):
        mlx_zoo.save(model, config, path)
    assert tree_digest(path) == before


def test_missing_parents_are_created(tiny_checkpoint, tmp_path):
    model, config = mlx_zoo.load(tiny_checkpoint)
    path = mlx_zoo.save(model, config, tmp_path / "a" / "b" / "c")
    assert (path / "model.safetensors").is_file()
    assert siblings(path) == []


def test_target_that_is_a_file_is_refused(tiny_checkpoint, tmp_path):
    model, config = mlx_zoo.load(tiny_checkpoint)
    target = tmp_path / "file"
    target.write_text("not a directory")
    with pytest.raises(SaveError, match=r"file: exists and is not a directory"):
        mlx_zoo.save(model, config, target)
    assert target.read_text() == "not a directory"


def test_parent_that_is_a_file_is_refused(tiny_checkpoint, tmp_path):
    """A path under a regular file: its parent cannot be created (the portable stand-in for a
    read-only parent, which root -- the test runner -- could write anyway)."""
    model, config = mlx_zoo.load(tiny_checkpoint)
    (tmp_path / "somefile").write_text("x")
    with pytest.raises(SaveError, match=r"somefile/sub: cannot create a directory beside it"):
        mlx_zoo.save(model, config, tmp_path / "somefile" / "sub")


def test_read_only_parent_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    """A parent that cannot be written (simulated: the tests may run as root)."""
    import tempfile

    model, config = mlx_zoo.load(tiny_checkpoint)
    path = mlx_zoo.save(model, config, tmp_path / "m")
    before = tree_digest(path)

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(SaveError, match=r"m: cannot create a directory beside it .*Permission "
                                        r"denied"):
        mlx_zoo.save(model, config, path)
    assert tree_digest(path) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores permission bits")
def test_really_read_only_parent_is_refused(tiny_checkpoint, tmp_path):
    model, config = mlx_zoo.load(tiny_checkpoint)
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(SaveError, match="ro/m"):
            mlx_zoo.save(model, config, parent / "m")
    finally:
        parent.chmod(0o755)


def test_failed_swap_puts_the_old_directory_back(sharded, tiny_checkpoint, monkeypatch):
    """The last rename (new directory -> target) failing: the old one is renamed back."""
    path, _, _ = sharded
    before = tree_digest(path)
    real = os.rename

    def rename(src, dst):
        if ".tmp-" in str(src) and str(dst) == str(path):
            raise OSError(errno.EXDEV, "injected")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    model, config = other_model(tiny_checkpoint)
    with pytest.raises(SaveError, match="injected"):
        mlx_zoo.save(model, config, path)
    assert tree_digest(path) == before and siblings(path) == []


def test_saved_checkpoint_is_complete_json(sharded):
    path, _, config = sharded
    assert json.loads((path / "config.json").read_text()) == config.to_dict()
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in path.glob("model-*")}


def test_saving_through_a_symlinked_directory_replaces_the_link(tiny_checkpoint, tmp_path):
    """A target that is a symlink to a directory (a Hugging Face snapshot, say) becomes a real
    directory; the directory it pointed to is left alone and nothing is left beside it."""
    model, config = mlx_zoo.load(tiny_checkpoint)
    real = mlx_zoo.save(model, config, tmp_path / "real")
    (real / "tokenizer.json").write_text("{}")
    before = tree_digest(real)
    link = tmp_path / "out" / "link"
    link.parent.mkdir()
    link.symlink_to(real, target_is_directory=True)
    new, _ = other_model(tiny_checkpoint)
    mlx_zoo.save(new, config, link)
    assert link.is_dir() and not link.is_symlink()
    assert (link / "tokenizer.json").read_text() == "{}"
    assert not (link / "tokenizer.json").samefile(real / "tokenizer.json")  # a copy, no alias
    assert tree_digest(real) == before and siblings(link) == []
