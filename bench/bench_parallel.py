"""One device vs pipeline vs tensor parallelism: prefill and decode tokens/s, and each rank's
peak memory while loading (process RSS and MLX's own peak), plus the cost of the two transfer
primitives (send/recv vs all_sum) and of the pipeline's two broadcasts (logits vs sampled token).

    # CPU, here (MLX's ring backend over loopback):
    python bench/bench_parallel.py --make-checkpoint /tmp/bench_pp --backend ring
    # two GPUs of one host (NCCL), later, unchanged:
    python bench/bench_parallel.py --model Qwen/Qwen2.5-7B-Instruct --backend nccl

The driver runs the one-process baseline itself, then ``mlx.launch -n N --backend B --python
<this python> bench/bench_parallel.py --worker ...`` once per parallel mode (each mode in fresh
processes, so each peak is that mode's own), and prints a markdown table plus the raw JSON.
``--make-checkpoint DIR`` writes a random Llama-shaped checkpoint first (default shape: ~170M
parameters, bf16 on disk: a few hundred MB), with the tiny byte-level tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULT_PREFIX = "BENCH_RESULT "
CHECKPOINT = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                  num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                  max_position_embeddings=4096, tie_word_embeddings=False)


def rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_checkpoint(path: Path) -> None:
    from mlx_zoo.testing import write_tiny_checkpoint  # noqa: I001 (mlx_zoo before mlx.core)

    import mlx.core as mx

    if (path / "config.json").exists():
        return
    write_tiny_checkpoint(path, "llama", CHECKPOINT)
    # store bf16 (what published checkpoints hold); "auto" loads float32 on the Linux CPU
    weights = mx.load(str(path / "model.safetensors"))
    mx.save_safetensors(str(path / "model.safetensors"),
                        {k: v.astype(mx.bfloat16) for k, v in weights.items()},
                        metadata={"format": "mlx"})


# -- worker: runs inside each process ----------------------------------------------------------


def comm_costs(group, hidden: int, vocab: int, repeats: int) -> dict:
    """Microseconds per transfer: a (1, 1, hidden) activation by send/recv (half a round trip)
    and by all_sum; the broadcast of (vocab,) logits vs one int32 token by all_sum."""
    import mlx.core as mx

    rank = group.rank()
    out = {}
    x = mx.ones((1, 1, hidden))
    mx.eval(mx.distributed.all_sum(mx.zeros(1), group=group))
    start = time.perf_counter()
    for _ in range(repeats):
        if rank == 0:
            mx.eval(mx.distributed.send(x, 1, group=group))
            mx.eval(mx.distributed.recv_like(x, 1, group=group))
        elif rank == 1:
            mx.eval(mx.distributed.recv_like(x, 0, group=group))
            mx.eval(mx.distributed.send(x, 0, group=group))
    out["sendrecv_activation_us"] = (time.perf_counter() - start) / (2 * repeats) * 1e6
    for name, arr in (("allsum_activation_us", x), ("allsum_logits_us", mx.ones((vocab,))),
                      ("allsum_token_us", mx.ones((1,), dtype=mx.int32))):
        mx.eval(mx.distributed.all_sum(arr, group=group))
        start = time.perf_counter()
        for _ in range(repeats):
            mx.eval(mx.distributed.all_sum(arr, group=group))
        out[name] = (time.perf_counter() - start) / repeats * 1e6
    return out


def worker(args: argparse.Namespace) -> None:
    import mlx.core as mx
    import numpy as np

    import mlx_zoo  # before mlx.core: the fast BLAS on the Linux CPU
    from mlx_zoo.generate import generate_step

    group = mx.distributed.init() if args.mode != "single" else None
    rank = group.rank() if group is not None else 0
    base_rss = current_rss_mb()
    mx.reset_peak_memory()
    start = time.perf_counter()
    if args.mode == "single":
        model, config = mlx_zoo.load(args.model)
    else:
        parallel = "pipeline" if args.mode.startswith("pipeline") else "tensor"
        model, config = mlx_zoo.load(args.model, parallel=parallel, group=group)
    load_s = time.perf_counter() - start
    result = {"mode": args.mode, "rank": rank, "size": group.size() if group else 1,
              "load_s": round(load_s, 2), "load_peak_rss_mb": round(rss_mb() - base_rss, 1),
              "load_mlx_peak_mb": round(mx.get_peak_memory() / 2**20, 1),
              "weights_mb": round(sum(v.nbytes for v in _arrays(model)) / 2**20, 1)}
    sampler = None
    if args.mode == "pipeline-token":
        model.broadcast = "token"
        sampler = model.sampler(mlx_zoo.make_sampler(0.0))
    vocab = int(config.vocab_size)
    rng = np.random.default_rng(0)
    prompt = mx.array(rng.integers(0, min(vocab, 256), (args.prompt_tokens,)), dtype=mx.uint32)

    # prefill: the whole prompt in one forward pass into fresh caches, logits of the last position
    times = []
    for _ in range(args.repeats):
        cache = mlx_zoo.make_prompt_cache(model)
        start = time.perf_counter()
        logits = model(prompt[None], cache=cache)[:, -1, :]
        mx.eval(logits, [c.state for c in cache])
        times.append(time.perf_counter() - start)
    result["prefill_tps"] = round(args.prompt_tokens / min(times), 1)

    # decode: generate_step (the loop mlx_zoo.generate runs), greedy, after a short prompt
    rates = []
    for _ in range(args.repeats):
        steps = generate_step(prompt[:16], model, max_tokens=args.decode_tokens + 1,
                              sampler=sampler)
        next(steps)  # the prompt
        start = time.perf_counter()
        n = sum(1 for _ in steps)
        rates.append(n / (time.perf_counter() - start))
    result["decode_tps"] = round(max(rates), 1)
    result["peak_rss_mb"] = round(rss_mb(), 1)
    if group is not None and args.comm and args.mode == "pipeline-logits":
        result.update({k: round(v, 1) for k, v in comm_costs(
            group, int(config.hidden_size), vocab, args.comm_repeats).items()})
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _arrays(model):
    from mlx.utils import tree_flatten

    return [v for _, v in tree_flatten(model.parameters())]


# -- driver ------------------------------------------------------------------------------------


def run_mode(args: argparse.Namespace, mode: str) -> list[dict]:
    common = ["--worker", "--mode", mode, "--model", str(args.model),
              "--prompt-tokens", str(args.prompt_tokens),
              "--decode-tokens", str(args.decode_tokens), "--repeats", str(args.repeats),
              "--comm-repeats", str(args.comm_repeats)] + (["--comm"] if args.comm else [])
    script = str(Path(__file__).resolve())
    if mode == "single":
        command = [sys.executable, script, *common]
    else:
        launcher = str(Path(sys.executable).parent / "mlx.launch")
        command = [launcher, "-n", str(args.n), "--backend", args.backend, "--python",
                   sys.executable, script, *common]
    out = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    rows = [json.loads(line.split(RESULT_PREFIX, 1)[1]) for line in out.stdout.splitlines()
            if RESULT_PREFIX in line]
    if not rows:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"{mode}: no result")
    return sorted(rows, key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory or Hugging Face repo id")
    parser.add_argument("--make-checkpoint", type=Path,
                        help="write a random Llama-shaped checkpoint here and use it")
    parser.add_argument("--backend", default="ring", help="mlx.launch backend: ring, nccl, ...")
    parser.add_argument("-n", type=int, default=2, help="processes for the parallel modes")
    parser.add_argument("--modes", default="single,pipeline-logits,pipeline-token,tensor")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--comm", action=argparse.BooleanOptionalAction, default=True,
                        help="also time send/recv vs all_sum (in the pipeline-logits run)")
    parser.add_argument("--comm-repeats", type=int, default=300)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mode")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.make_checkpoint:
        make_checkpoint(args.make_checkpoint)
        args.model = args.model or str(args.make_checkpoint)
    if not args.model:
        parser.error("--model or --make-checkpoint is needed")
    results = {mode: run_mode(args, mode) for mode in args.modes.split(",")}
    print("| mode | ranks | prefill tok/s | decode tok/s | load peak RSS per rank (MB) | "
          "MLX peak per rank (MB) | weights held per rank (MB) |")
    print("|---|---|---|---|---|---|---|")
    for mode, rows in results.items():
        print(f"| {mode} | {rows[0]['size']} | {rows[0]['prefill_tps']} | "
              f"{rows[0]['decode_tps']} | "
              f"{' / '.join(str(r['load_peak_rss_mb']) for r in rows)} | "
              f"{' / '.join(str(r['load_mlx_peak_mb']) for r in rows)} | "
              f"{' / '.join(str(r['weights_mb']) for r in rows)} |")
    comm = [r for rows in results.values() for r in rows if "sendrecv_activation_us" in r]
    for r in comm:
        print(f"rank {r['rank']}: send/recv activation {r['sendrecv_activation_us']} us, "
              f"all_sum activation {r['allsum_activation_us']} us, all_sum logits "
              f"{r['allsum_logits_us']} us, all_sum token {r['allsum_token_us']} us")
    text = json.dumps(results, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
