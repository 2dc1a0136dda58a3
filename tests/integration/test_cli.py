"""The installed `mlx-zoo` console script: list and info, as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MLX_ZOO = str(Path(sys.executable).parent / "mlx-zoo")


def run(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([MLX_ZOO, *args], capture_output=True, text=True, env=env)


def test_list_shows_model_types_with_distribution_and_version(testplugin):
    out = run("list")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0][:3] == ["MODEL", "TYPE", "DISTRIBUTION"]
    assert ["zoo_tiny", "mlx-zoo-testplugin", "0.0.1", "mlx_zoo_testplugin", "ok"] in rows
    assert ["qwen2", "mlx-qwen2", "0.1.0", "mlx_qwen2", "ok"] in rows


def test_list_marks_conflicts_and_broken_plugins(tmp_path, testplugin, fake_distribution):
    import os

    site = fake_distribution(tmp_path / "site", "mlx-zoo-rival",
                             {"zoo_tiny": "rival_plugin", "zoo_rival_broken": "rival_plugin"},
                             {"rival_plugin": "raise ImportError('no such thing')\n"})
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = run("list", env=env)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert ["zoo_tiny", "mlx-zoo-testplugin", "0.0.1", "mlx_zoo_testplugin", "conflict"] in rows
    assert ["zoo_rival_broken", "mlx-zoo-rival", "1.0", "rival_plugin", "broken"] in rows
    assert "no such thing" in out.stdout and "Conflicts: zoo_tiny" in out.stdout


def test_info_describes_a_checkpoint(tiny_checkpoint):
    out = run("info", str(tiny_checkpoint))
    assert out.returncode == 0, out.stderr
    assert "model_type:     zoo_tiny" in out.stdout and "plugin mlx-zoo-testplugin" in out.stdout
    assert "parameters:     1,792" in out.stdout  # 32*16 + 48*16 + 32*16
    assert "dtype:          float32" in out.stdout and "quantization:   none" in out.stdout
    assert "cache layout:   1 x TaggedKVCache" in out.stdout


def test_info_on_bad_checkpoint_is_a_clean_error(tmp_path):
    out = run("info", str(tmp_path))
    assert out.returncode == 2
    assert "mlx-zoo: error:" in out.stderr and "config.json: file not found" in out.stderr
    assert "Traceback" not in out.stderr
