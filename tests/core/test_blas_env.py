"""mlx_zoo.blas in hostile environments: no ``$HOME`` and no passwd entry (containers), a
cache directory shared by machines of other architectures, a corrupt cached gemv shim. Each
case imports mlx_zoo in a fresh interpreter, since the BLAS is chosen once, at import."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mlx_zoo import blas

LINUX = sys.platform.startswith("linux")
CC = shutil.which(os.environ.get("CC", "cc"))
PIP_BLAS = blas._scipy_openblas32()
needs_shim = pytest.mark.skipif(not (LINUX and CC and PIP_BLAS),
                                reason="needs Linux, a C compiler and scipy-openblas32")

STATUS = ("import json, mlx_zoo, mlx.core as mx; mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8))); "
          "s = mlx_zoo.blas.blas_status(); "
          "print(json.dumps({'library': s.library, 'shim': s.shim, 'reason': s.reason}))")
ENV_DROPPED = ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "TMPDIR",
               blas.BLAS_ENV, blas.SHIM_ENV, "LD_PRELOAD")


def status_in_subprocess(env: dict[str, str], preexec_fn=None, prelude: str = "") -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
    out = subprocess.run([sys.executable, "-c", prelude + STATUS], capture_output=True, text=True,
                         env={**environ, **env}, preexec_fn=preexec_fn, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def unused_uid(start: int = 54321) -> int:
    uid = start
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


@pytest.fixture
def shared_tmp():
    """A world-writable sticky directory like /tmp, reachable by another uid (pytest's tmp_path
    is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="mlx_zoo_tmp_"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(not LINUX or os.geteuid() != 0, reason="needs root, to run as another uid")
def test_import_without_home_or_passwd_entry(shared_tmp):
    """Real uid without a passwd entry, no HOME or XDG variables: ``Path.home()`` raises. The
    effective uid stays root's: ``os.setuid`` would lock the child out of the interpreter itself
    where it lives under root's private home (``/root/.pyenv``)."""
    uid = unused_uid()

    def become_stranger() -> None:
        os.setreuid(uid, 0)

    probe = subprocess.run(
        [sys.executable, "-c", "from pathlib import Path; Path.home()"], capture_output=True,
        text=True, env={"PATH": os.environ.get("PATH", "")}, preexec_fn=become_stranger)
    assert probe.returncode != 0 and "RuntimeError" in probe.stderr  # the situation is real

    # glibc drops TMPDIR from the environment of a process whose uids differ: set it in Python
    status = status_in_subprocess({}, become_stranger,
                                  f"import tempfile; tempfile.tempdir = {str(shared_tmp)!r}; ")
    fallback = shared_tmp / "mlx_zoo-0"  # per effective uid: the owner of what it creates
    if CC and PIP_BLAS:  # the shim was built in the per-uid directory, closed to others
        assert status["shim"] and Path(status["shim"]).parent == fallback, status
        assert stat.S_IMODE(fallback.stat().st_mode) == blas.PRIVATE_DIR_MODE


def fake_home_error(monkeypatch) -> None:
    def no_home(cls):
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", classmethod(no_home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)


def test_cache_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert blas._shim_cache_dir() == (tmp_path / "xdg" / "mlx_zoo", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert blas._shim_cache_dir() == (tmp_path / "home" / ".cache" / "mlx_zoo", "")
    fake_home_error(monkeypatch)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert blas._shim_cache_dir() == (tmp_path / f"mlx_zoo-{os.geteuid()}", "")


def test_cache_dir_open_to_others_is_refused(monkeypatch, tmp_path):
    fake_home_error(monkeypatch)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"mlx_zoo-{os.geteuid()}"
    planted.mkdir()
    planted.chmod(0o777)  # anyone could have put a library there
    path, reason = blas._shim_cache_dir()
    assert path is None and "closed to other users" in reason and str(planted) in reason
    assert blas._load_gemv_shim("/no/such/libblas.so") == (None, reason)
    planted.rmdir()
    planted.symlink_to(tmp_path)
    assert blas._shim_cache_dir()[0] is None


def test_no_temporary_directory_either(monkeypatch, tmp_path):
    fake_home_error(monkeypatch)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing" / "deeper"))
    path, reason = blas._shim_cache_dir()
    assert path is None and "no home directory" in reason


def test_shim_file_name_names_the_machine_and_the_library(monkeypatch):
    name = blas.shim_file_name("/lib/libopenblas.so.0")
    assert name.startswith(f"gemv_shim-{platform.machine()}-") and name.endswith(".so")
    assert blas.shim_file_name("/other/libopenblas.so.0") != name
    other = "aarch64" if platform.machine() != "aarch64" else "x86_64"
    monkeypatch.setattr(platform, "machine", lambda: other)
    assert blas.shim_file_name("/lib/libopenblas.so.0") != name
    assert other in blas.shim_file_name("/lib/libopenblas.so.0")


@needs_shim
def test_shim_from_another_architecture_is_not_used(tmp_path, monkeypatch):
    """A cache directory shared with another machine: neither the old arch-less name nor
    another architecture's name is loaded; this machine's shim is built beside them."""
    cache = tmp_path / "mlx_zoo"
    cache.mkdir()
    digest = hashlib.sha256(blas.GEMV_SHIM_SOURCE.encode()).hexdigest()[:16]
    old_style = cache / f"gemv_shim-{digest}.so"  # the name before the architecture was in it
    other = "aarch64" if platform.machine() != "aarch64" else "x86_64"
    with monkeypatch.context() as m:
        m.setattr(platform, "machine", lambda: other)
        foreign = cache / blas.shim_file_name(PIP_BLAS[0])
    for planted in (old_style, foreign):
        planted.write_bytes(b"\x7fELF built for another machine")
    status = status_in_subprocess({"XDG_CACHE_HOME": str(tmp_path),
                                   blas.BLAS_ENV: PIP_BLAS[0]})
    assert status["shim"] == str(cache / blas.shim_file_name(PIP_BLAS[0])), status
    assert platform.machine() in Path(status["shim"]).name
    assert old_style.read_bytes() == foreign.read_bytes() == b"\x7fELF built for another machine"


@needs_shim
def test_corrupt_cached_shim_is_rebuilt(tmp_path):
    target = tmp_path / "mlx_zoo" / blas.shim_file_name(PIP_BLAS[0])
    target.parent.mkdir()
    target.write_bytes(b"garbage, not a shared library")
    status = status_in_subprocess({"XDG_CACHE_HOME": str(tmp_path),
                                   blas.BLAS_ENV: PIP_BLAS[0]})
    assert status["shim"] == str(target) and status["library"] == PIP_BLAS[0], status
    assert target.read_bytes().startswith(b"\x7fELF")


@needs_shim
def test_corrupt_cached_shim_without_a_compiler_falls_back_and_says_why(tmp_path):
    target = tmp_path / "mlx_zoo" / blas.shim_file_name(PIP_BLAS[0])
    target.parent.mkdir()
    target.write_bytes(b"garbage, not a shared library")
    status = status_in_subprocess({"XDG_CACHE_HOME": str(tmp_path), "CC": "no-such-cc",
                                   blas.BLAS_ENV: PIP_BLAS[0]})
    assert status["library"] is None and status["shim"] is None
    assert f"the gemv shim {target} did not load" in status["reason"]
    assert "needs a C compiler" in status["reason"]


def test_preload_never_raises(monkeypatch):
    monkeypatch.setattr(blas, "_status", None)
    monkeypatch.setattr(blas, "_preload", lambda: 1 / 0)
    status = blas.preload_fast_blas()
    assert not status.fast and "ZeroDivisionError" in status.reason
