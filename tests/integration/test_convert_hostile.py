"""Hostile sources and interruptions for ``mlx-zoo convert`` (issue 29): symbolic links out of
the source folder, files a checkpoint does not need, SIGTERM in the middle of writing, stale
temporary folders of killed runs, ``--revision`` with a local folder, over-long paths."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import mlx_zoo
from mlx_zoo.convert import ConvertError, convert

SUPPORT = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}


def demo_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(mlx_zoo.resolve_model_dir("demo:qwen2"), src)
    return src


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_links_out_of_the_source_are_skipped_with_a_warning(tmp_path):
    src = demo_copy(tmp_path)
    secret = tmp_path / "private.txt"
    secret.write_text("do not publish")
    (src / "merges.txt").symlink_to(secret)  # a support file's name, pointing elsewhere
    (src / "sub").mkdir()
    (src / "sub" / "vocab.json").write_text("{}")
    (src / "vocab.json").symlink_to(src / "sub" / "vocab.json")  # inside the folder: fine
    (src / "notes.txt").write_text("training notes")  # not a file a checkpoint needs
    (src / "trainer_state.json").write_text("{}")
    with pytest.warns(UserWarning, match="merges.txt: a link to .*private.txt.* not copied"):
        out = convert(src, tmp_path / "out")
    assert names(out) == SUPPORT | {"vocab.json", "README.md", "config.json",
                                    "model.safetensors"}
    assert not (out / "vocab.json").is_symlink()
    assert all("do not publish" not in p.read_text(errors="replace") for p in out.iterdir()
               if p.suffix != ".safetensors")


def test_hugging_face_cache_links_are_followed(tmp_path):
    """A snapshot's files are links into the repository's ``blobs/``: copied, no warning."""
    demo = mlx_zoo.resolve_model_dir("demo:qwen2")
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(demo.iterdir())):
        shutil.copyfile(f, repo / "blobs" / f"blob{i}")
        (snapshot / f.name).symlink_to(f"../../blobs/blob{i}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = convert(snapshot, tmp_path / "out")
    assert SUPPORT <= names(out)
    assert (out / "tokenizer.json").read_bytes() == (demo / "tokenizer.json").read_bytes()


SLOW_CONVERT = textwrap.dedent("""
    import sys, time
    import mlx_zoo.convert as c
    def slow(source, target):
        print("writing", flush=True)
        time.sleep(60)
    c.copy_support_files = slow
    c.convert("demo:qwen2", sys.argv[1])
""")


def test_sigterm_while_converting_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, str(out)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "writing"
        assert any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        process.kill()
        process.wait()
    assert names(tmp_path) == set()


def test_stale_temporary_folders_are_removed(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(gone.stdout)
    stale = tmp_path / f".out.tmp-{dead}-abc123"
    alive = tmp_path / f".out.tmp-{os.getppid()}-def456"  # a running conversion's: kept
    other = tmp_path / ".other.tmp-1-xyz"  # another target's
    for folder in (stale, alive, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 16)
    convert("demo:qwen2", tmp_path / "out")
    assert names(tmp_path) == {"out", alive.name, other.name}


@pytest.mark.parametrize("source", ["local", "demo:qwen2"])
def test_revision_with_a_local_folder_is_refused(tmp_path, source):
    src = str(demo_copy(tmp_path)) if source == "local" else source
    with pytest.raises(ConvertError, match="--revision 'v1' applies to a Hugging Face") as info:
        convert(src, tmp_path / "out", revision="v1")
    assert info.value.flag == "--revision"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--hf-path", "--mlx-path"])
def test_overlong_path_is_an_error_not_a_traceback(tmp_path, flag):
    long = str(tmp_path / ("a" * 300))
    argv = {"--hf-path": ["--hf-path", long, "--mlx-path", str(tmp_path / "out")],
            "--mlx-path": ["--hf-path", "demo:qwen2", "--mlx-path", long]}[flag]
    done = subprocess.run([sys.executable, "-m", "mlx_zoo.cli", "convert", *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and flag in done.stderr
    assert "File name too long" in done.stderr


# -- fuzzing source folders ------------------------------------------------------------------

FUZZ = settings(max_examples=max(5, int(os.environ.get("MLX_ZOO_FUZZ_EXAMPLES", "25")) // 2),
                deadline=timedelta(seconds=30), derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
"""Half the fixed budget of tests/integration/test_fuzz_hostile.py (``MLX_ZOO_FUZZ_EXAMPLES``):
each example converts."""

NAMES = st.sampled_from(["merges.txt", "vocab.json", "notes.txt", "special_tokens_map.json",
                         "chat_template.jinja", "x.tiktoken", "modeling_x.py", ".hidden",
                         "added_tokens.json", "training_args.bin", "sub", "tokenizer.model"])
KINDS = st.sampled_from(["file", "link-inside", "link-outside", "link-dangling", "link-dir",
                         "dir"])
SECRET = "do not publish: 8f3a"


def _add(src: Path, outside: Path, name: str, kind: str) -> None:
    path = src / name
    if path.exists() or path.is_symlink():
        return
    if kind == "file":
        path.write_text("{}")
    elif kind == "dir":
        path.mkdir()
    elif kind == "link-inside":
        path.symlink_to(src / "config.json")
    elif kind == "link-outside":
        path.symlink_to(outside / "secret.txt")
    elif kind == "link-dangling":
        path.symlink_to(src / "nowhere")
    else:
        path.symlink_to(outside)


@FUZZ
@given(data=st.data())
def test_fuzzed_source_folders(tmp_path_factory, data):
    """Extra files, links (inside, outside, dangling, to folders) and folders in the source:
    the conversion succeeds or raises an MlxZooError; its output holds only support files
    (no link, nothing from outside), and the source is unchanged."""
    tmp = tmp_path_factory.mktemp("fuzz")
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    src = demo_copy(tmp)
    for name, kind in data.draw(st.lists(st.tuples(NAMES, KINDS), max_size=5)):
        _add(src, outside, name, kind)
    before = {p.name: (p.is_symlink(), p.is_file() and p.read_bytes())
              for p in src.iterdir() if not p.name.startswith("nowhere")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = convert(src, tmp / "out")
    except mlx_zoo.MlxZooError as e:
        event(f"refused: {type(e).__name__}")
        assert names(tmp) == {"outside", "src"}
        return
    event("converted")
    for p in out.iterdir():
        assert not p.is_symlink() and p.is_file(), p
        assert p.suffix == ".safetensors" or SECRET not in p.read_text(errors="replace"), p
        assert not p.name.endswith((".py", ".bin")) and not p.name.startswith("."), p
    assert {p.name: (p.is_symlink(), p.is_file() and p.read_bytes())
            for p in src.iterdir() if not p.name.startswith("nowhere")} == before
    assert names(tmp) == {"outside", "src", "out"}
