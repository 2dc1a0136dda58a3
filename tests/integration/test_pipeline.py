"""Pipeline and tensor parallelism over two processes (MLX's ring backend on loopback, CPU):
``mlx_zoo.load(ref, parallel="pipeline"|"tensor")`` gives the unsharded logits (whole prompt and
cached decoding in two pieces) and the same greedy text -- through the unchanged
``mlx_zoo.generate``, and with the pipeline's sampled-token broadcast -- for every plugin's demo
(qwen2, hunyuan, llama4), a Llama checkpoint (untied head, 3 layers: an uneven split) and
Tencent's HunYuan with Cross-Layer Attention (stages start only where a CLA run does);
``mlx-zoo generate --parallel ...`` under ``mlx.launch`` prints once, exactly what one process
prints; impossible combinations are a clear ShardingError before any weight is read. The stage
planner and the generic refusal run in-process."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

import mlx_zoo
from mlx_zoo.pipeline import plan_stages, stage_plan
from mlx_zoo.testing import TOLERANCE, write_tiny_checkpoint

SHARD_TOLERANCE = TOLERANCE / 10  # as tests/integration/test_shard.py
LAUNCH_TIMEOUT = 300
PROMPT = "hello there"
MAX_TOKENS = 12
BIN = Path(sys.executable).parent
LAUNCHER = BIN / "mlx.launch"
CLI = BIN / "mlx-zoo"

LLAMA = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             tie_word_embeddings=False)
# Tencent's format: CLA in runs of 2, MoE + shared MLP (as tests/conftest.py's HUNYUAN)
HUNYUAN_CLA = dict(
    vocab_size=300, hidden_size=64, intermediate_size=32, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
    max_position_embeddings=256, rope_scaling={"type": "dynamic", "alpha": 4.0, "factor": 1.0},
    use_qk_norm=True, use_cla=True, cla_share_factor=2, num_experts=4, moe_topk=[2, 1, 3, 2],
    moe_intermediate_size=[32, 64, 32, 64], use_mixed_mlp_moe=True,
    num_shared_expert=[1, 2, 1, 2], tie_word_embeddings=True)

# Gemma 2: embeddings scaled, logits soft-capped after the head, alternating sliding windows
GEMMA2 = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
              query_pre_attn_scalar=16, final_logit_softcapping=30.0, rope_theta=10000.0,
              max_position_embeddings=256)

SCRIPT = textwrap.dedent(f"""
    import os, sys
    import mlx_zoo  # before mlx.core: the fast BLAS
    import mlx.core as mx, numpy as np
    group = mx.distributed.init()
    ids = mx.array(np.random.default_rng(0).integers(0, 256, (1, 40)))
    for ref in sys.argv[1:]:
        single, _ = mlx_zoo.load(ref)
        full = np.array(single(ids))
        tok = mlx_zoo.load_tokenizer(ref)
        want = mlx_zoo.generate(single, tok, {PROMPT!r}, max_tokens={MAX_TOKENS}).text
        for parallel in os.environ.get("CHECK_MODES", "pipeline,tensor").split(","):
            model, _ = mlx_zoo.load(ref, parallel=parallel)
            whole = np.array(model(ids))
            cache = mlx_zoo.make_prompt_cache(model)
            pieces = [np.array(model(ids[:, :24], cache)), np.array(model(ids[:, 24:], cache))]
            cached = np.concatenate(pieces, axis=1)
            err = max(np.abs(whole - full).max(), np.abs(cached - full).max()) / np.abs(full).max()
            text = mlx_zoo.generate(model, tok, {PROMPT!r}, max_tokens={MAX_TOKENS}).text
            token_text = "-"
            if parallel == "pipeline":
                model.broadcast = "token"
                sampler = model.sampler(mlx_zoo.make_sampler(0.0))
                token_text = mlx_zoo.generate(model, tok, {PROMPT!r}, max_tokens={MAX_TOKENS},
                                              sampler=sampler).text
            name = ref.rsplit("/", 1)[-1]
            print(f"rank={{group.rank()}} model={{name}} parallel={{parallel}} "
                  f"layers={{len(model.layers)}} caches={{len(cache)}} err={{err:.2e}} "
                  f"same={{text == want}} token_same={{token_text in ('-', want)}}", flush=True)
""")


def launch(*command: str, n: int = 2, python: bool = False, env: Sequence[str] = ()
           ) -> subprocess.CompletedProcess:
    if not LAUNCHER.exists():
        pytest.skip("mlx.launch not installed")
    prefix = [str(LAUNCHER), "-n", str(n), "--backend", "ring"]
    for item in env:
        prefix += ["--env", item]
    if python:
        prefix += ["--python", sys.executable]
    return subprocess.run([*prefix, "--", *command], capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    return {
        "llama": write_tiny_checkpoint(root / "llama", "llama", LLAMA),
        "hunyuan_cla": write_tiny_checkpoint(root / "hunyuan_cla", "hunyuan", HUNYUAN_CLA),
        "gemma2": write_tiny_checkpoint(root / "gemma2", "gemma2", GEMMA2),
        "one_layer": write_tiny_checkpoint(root / "one_layer", "llama",
                                           {**LLAMA, "num_hidden_layers": 1}),
        "three_heads": write_tiny_checkpoint(root / "three_heads", "llama",
                                             {**LLAMA, "hidden_size": 48,
                                              "num_attention_heads": 3,
                                              "num_key_value_heads": 1}),
    }


def test_two_way_pipeline_and_tensor_match_single_process(checkpoints, tmp_path):
    script = tmp_path / "pipeline_check.py"
    script.write_text(SCRIPT)
    refs = ["demo:qwen2", "demo:hunyuan", "demo:llama4", str(checkpoints["llama"]),
            str(checkpoints["hunyuan_cla"]), str(checkpoints["gemma2"])]
    out = launch(str(script), *refs, python=True)
    rows = [dict(item.split("=", 1) for item in line.split())
            for line in out.stdout.splitlines() if line.startswith("rank=")]
    runs = {(r["rank"], r["model"], r["parallel"]): r for r in rows}
    names = [ref.rsplit("/", 1)[-1] for ref in refs]
    assert set(runs) == {(str(rank), name, parallel) for rank in (0, 1) for name in names
                         for parallel in ("pipeline", "tensor")}, out.stdout + out.stderr
    for (rank, name, parallel), r in runs.items():
        assert float(r["err"]) < SHARD_TOLERANCE, r
        assert r["same"] == "True" and r["token_same"] == "True", r
        if parallel == "pipeline":  # each rank holds and caches only its own layers
            layers = {"llama": ("2", "1"), "hunyuan_cla": ("2", "2")}.get(name, ("2", "2"))
            assert r["layers"] == layers[int(rank)], r
            caches = "1" if name == "hunyuan_cla" else r["layers"]  # one slot per CLA run
            assert r["caches"] == caches, r


@pytest.mark.parametrize("n", [2, 3])
def test_all_sum_transfer_matches_single_process(checkpoints, tmp_path, n):
    """The stage boundaries as all_sums (what CUDA/NCCL uses: no send/recv there), forced on
    the ring backend: same logits and text; with 3 ranks every rank joins both boundaries."""
    script = tmp_path / "pipeline_check.py"
    script.write_text(SCRIPT)
    refs = ["demo:qwen2", str(checkpoints["llama"])]
    out = launch(str(script), *refs, python=True, n=n,
                 env=["MLX_ZOO_PIPELINE_TRANSFER=all_sum", "CHECK_MODES=pipeline"])
    rows = [dict(item.split("=", 1) for item in line.split())
            for line in out.stdout.splitlines() if line.startswith("rank=")]
    assert len(rows) == n * len(refs), out.stdout + out.stderr
    for r in rows:
        assert float(r["err"]) < SHARD_TOLERANCE, r
        assert r["same"] == "True" and r["token_same"] == "True", r
        if n == 3 and r["model"] == "llama":
            assert r["layers"] == "1", r


def _generated_text(stdout: str) -> str:
    return stdout.split("=" * 10)[0]


@pytest.mark.parametrize("parallel", ["pipeline", "tensor", "auto"])
def test_cli_under_mlx_launch_prints_once_and_matches_one_process(parallel):
    args = ["generate", "--model", "demo:llama4", "--prompt", PROMPT, "-m", str(MAX_TOKENS)]
    single = subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr
    out = launch(str(CLI), *args, "--parallel", parallel)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("=" * 10) == 1 and out.stdout.count("Generation:") == 1, out.stdout
    assert _generated_text(out.stdout) == _generated_text(single.stdout)


def test_cli_through_python_m():
    """The form for launchers that need a Python file: --python PY -- -m mlx_zoo.cli ..."""
    out = launch("-m", "mlx_zoo.cli", "generate", "--model", "demo:qwen2", "--prompt", PROMPT,
                 "-m", "4", "--parallel", "pipeline", python=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("Generation:") == 1, out.stdout


def test_parallel_without_a_group_is_refused():
    out = subprocess.run([str(CLI), "generate", "--model", "demo:qwen2", "--parallel",
                          "pipeline"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "needs a distributed group of 2 or more processes" in out.stderr
    with pytest.raises(mlx_zoo.ShardingError, match="2 or more processes"):
        mlx_zoo.load("demo:qwen2", parallel="tensor")
    with pytest.raises(mlx_zoo.ShardingError, match="parallel must be one of"):
        mlx_zoo.load("demo:qwen2", parallel="data")


@pytest.mark.parametrize("case, parallel, message", [
    ("one_layer", "pipeline", "cannot split 1 layers into 2 pipeline stages"),
    ("three_heads", "tensor", "num_attention_heads = 3 heads cannot be split over 2"),
])
def test_bad_combinations_under_mlx_launch(checkpoints, case, parallel, message):
    path = checkpoints[case]
    (path / "model.safetensors").write_bytes(b"not read")  # refused before any weight is read
    out = launch(str(CLI), "generate", "--model", str(path), "--parallel", parallel, "-m", "2")
    # mlx.launch itself exits 0; it reports each rank's status
    assert re.search(r"rank [01] exited with code 2", out.stderr), out.stderr
    assert message in out.stderr and "ShardingError" not in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_auto_falls_back_to_tensor_when_layers_cannot_be_split():
    from mlx_zoo.pipeline import choose_parallel

    assert choose_parallel("auto", 4, 2) == "pipeline"
    assert choose_parallel("auto", 1, 2) == "tensor"
    assert choose_parallel("tensor", 4, 2) == "tensor"
    with pytest.raises(mlx_zoo.ShardingError, match="2 or more processes"):
        choose_parallel("auto", 4, 1)


# -- the stage planner, in-process --------------------------------------------------------------


def test_stages_balance_bytes_with_the_ends_counted():
    assert plan_stages([10] * 4, 2) == [(0, 2), (2, 4)]
    # a big embedding on rank 0 pushes layers to rank 1
    assert plan_stages([10] * 4, 2, first_extra=20) == [(0, 1), (1, 4)]
    assert plan_stages([10] * 4, 2, last_extra=20) == [(0, 3), (3, 4)]
    assert plan_stages([10] * 6, 3) == [(0, 2), (2, 4), (4, 6)]
    # boundaries: stages start only at 0 or 2 (CLA runs of two layers)
    assert plan_stages([10, 1, 1, 1], 2, boundaries=[0, 2]) == [(0, 2), (2, 4)]
    with pytest.raises(mlx_zoo.ShardingError, match="cannot split 4 layers into 3"):
        plan_stages([1] * 4, 3, boundaries=[0, 2])
    with pytest.raises(mlx_zoo.ShardingError, match="cannot split 2 layers into 3"):
        plan_stages([1] * 2, 3)


def test_demo_plans_and_the_generic_refusal():
    model, _ = mlx_zoo.load("demo:qwen2", lazy=True)
    assert stage_plan(model, 2) == [(0, 2), (2, 4)]  # tied: the embedding counts on both ends
    model.model.per_layer_flags = [True] * len(model.layers)  # unknown per-layer state
    with pytest.raises(mlx_zoo.ShardingError, match="PipelineStages"):
        stage_plan(model, 2)


def test_local_ranks_from_the_ring_hostfile(tmp_path, monkeypatch):
    """share_host_cpus counts the ranks on this host from mlx.launch's ring hostfile."""
    from mlx_zoo.pipeline import _local_ranks

    class Group:
        def __init__(self, rank, size):
            self._rank, self._size = rank, size

        def rank(self):
            return self._rank

        def size(self):
            return self._size

    hostfile = tmp_path / "hosts.json"
    hostfile.write_text('[["10.0.0.1:5000"], ["10.0.0.2:5001"], ["10.0.0.1:5002"]]')
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    assert _local_ranks(Group(2, 3)) == (1, 2)
    assert _local_ranks(Group(1, 3)) == (0, 1)
    assert _local_ranks(Group(0, 2)) is None  # the file lists 3 ranks, the group has 2
    monkeypatch.delenv("MLX_HOSTFILE")
    assert _local_ranks(Group(0, 2)) is None
