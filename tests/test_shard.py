"""Tensor parallelism: Qwen2's `shard` over two processes (MLX's ring backend on loopback)
computes the same logits as the unsharded model, loaded as stored or with fused projections
(``fuse=True``: shard splits them again, each part by its own heads)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_qwen2 import write_reference

SCRIPT = textwrap.dedent("""
    import sys
    import mlx.core as mx, numpy as np, mlx_zoo
    group = mx.distributed.init()
    ids = mx.array([[5, 9, 1, 33, 7, 2, 64, 11]])
    full = None
    for fuse in (False, True):
        model, _ = mlx_zoo.load(sys.argv[1], fuse=fuse)
        if full is None:
            full = np.array(model(ids))
        model.shard(group)
        sharded = np.array(model(ids))
        heads = model.model.layers[0].self_attn.n_heads
        err = float(np.abs(sharded - full).max() / np.abs(full).max())
        print(f"rank={group.rank()} size={group.size()} fuse={fuse} heads={heads} err={err:.2e}")
""")


def test_two_way_tensor_parallel_matches_single_process(tmp_path):
    write_reference(tmp_path / "ckpt", tied=False)
    script = tmp_path / "shard_check.py"
    script.write_text(SCRIPT)
    launcher = Path(sys.executable).parent / "mlx.launch"
    if not launcher.exists():
        pytest.skip("mlx.launch not installed")
    out = subprocess.run([str(launcher), "-n", "2", "--backend", "ring", "--python",
                          sys.executable, str(script), str(tmp_path / "ckpt")],
                         capture_output=True, text=True, timeout=180)
    lines = sorted(line for line in out.stdout.splitlines() if line.startswith("rank="))
    assert len(lines) == 4, out.stdout + out.stderr
    for index, line in enumerate(lines):
        fields = dict(item.split("=") for item in line.split())
        assert fields["rank"] == str(index // 2) and fields["size"] == "2"
        assert fields["fuse"] == str(index % 2 == 1)
        assert fields["heads"] == "2"  # 4 attention heads split over 2 ranks
        assert float(fields["err"]) < 1e-5
