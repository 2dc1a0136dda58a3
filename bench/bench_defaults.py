"""``mlx_zoo.load(path)`` with no arguments against the best explicit settings, on this machine.

Writes a random bf16 Qwen2-shaped checkpoint (Qwen2-0.5B's widths, ``--layers`` layers, tied
embeddings, in the Hub's layout) and measures each configuration in its own process, alternating
configurations round by round, ``--runs`` rounds, median reported: prefill tokens/s (a random
prompt of ``--prompt-tokens``: prompt length / time to the first new token) and decode tokens/s
(``--gen-tokens`` greedy tokens: (tokens - 1) / time after the first), after a short warm-up,
through ``mlx_zoo.generate_step``.

Configurations:

- ``defaults``: ``import mlx_zoo; mlx_zoo.load(path)`` -- what a library user gets;
- ``best``: the fastest explicit settings on the Linux CPU (``dtype="float32",
  dequantize=True, fuse=True``; on a GPU or macOS pass ``--best stored-fused``);
- ``stored``: the checkpoint as stored, unfused (``dtype=None, dequantize=False,
  fuse=False``: ``load()``'s defaults before they became the fast ones);
- ``late-defaults``: ``import mlx.core`` before ``mlx_zoo``, then ``load(path)`` (MLX keeps its
  reference BLAS; "auto" keeps bf16);
- ``late-float32``: the same import order, forced to float32 (what "auto" used to pick there);
- ``mlx-lm`` (with ``--mlx-lm``): ``mlx_lm.utils.load_model``, for reference.

    python bench/bench_defaults.py --layers 4 --runs 3 --json bench/results/cpu-defaults.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WARMUP_TOKENS = 4
CONFIGS = {
    "defaults": ("", "{}"),
    "best": ("", "dict(dtype='float32', dequantize=True, fuse=True)"),
    "stored": ("", "dict(dtype=None, dequantize=False, fuse=False)"),
    "late-defaults": ("import mlx.core\n", "{}"),
    "late-float32": ("import mlx.core\n", "dict(dtype='float32', dequantize=True, fuse=True)"),
}
BEST_ELSEWHERE = "dict(dtype=None, dequantize=False, fuse=True)"

WORKER = """
import sys, time, json, warnings
warnings.simplefilter("ignore")
{prelude}import mlx.core as mx
from mlx.utils import tree_flatten
path, prompt_tokens, gen_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
{load}
vocab = json.load(open(path + "/config.json"))["vocab_size"]
mx.random.seed(0)
prompt = mx.random.randint(0, vocab, (prompt_tokens,)).astype(mx.uint32)
for _ in step(prompt, model, max_tokens={warmup}):
    pass
times = []
start = time.perf_counter()
for _ in step(prompt, model, max_tokens=gen_tokens):
    times.append(time.perf_counter())
leaves = tree_flatten(model.parameters())
dtypes = sorted({{str(a.dtype).removeprefix("mlx.core.") for _, a in leaves}})
print(json.dumps({{"prefill_tps": prompt_tokens / (times[0] - start),
                  "decode_tps": (len(times) - 1) / (times[-1] - times[0]), "dtypes": dtypes,
                  "blas_fast": fast}}))
"""

ZOO_LOAD = ("model, _ = mlx_zoo.load(path, **{options})\nstep = mlx_zoo.generate_step\n"
            "fast = mlx_zoo.blas.blas_status().fast")
LM_LOAD = ("fast = None\nfrom pathlib import Path\nfrom mlx_lm.utils import load_model\n"
           "from mlx_lm.generate import generate_step as step\n"
           "model, _ = load_model(Path(path))")


def measure(name: str, options: str | None, prelude: str, path: Path,
            args: argparse.Namespace) -> dict:
    load = LM_LOAD if options is None else ZOO_LOAD.format(options=options)
    if options is not None:  # mlx_zoo first, unless the prelude imports mlx.core before it
        prelude += "import mlx_zoo\n"
    code = WORKER.format(prelude=prelude, load=load, warmup=WARMUP_TOKENS)
    out = subprocess.run([sys.executable, "-c", code, str(path), str(args.prompt_tokens),
                          str(args.gen_tokens)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    import shapes

    import bench

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--best", choices=("float32-fused", "stored-fused"), default="float32-fused")
    p.add_argument("--mlx-lm", action="store_true", help="measure mlx-lm too")
    p.add_argument("--workdir", default="/tmp/mlx-zoo-bench-defaults")
    p.add_argument("--json", help="write every run's figures to this file")
    args = p.parse_args(argv)

    config = shapes.with_layers(shapes.QWEN2_05B, args.layers)
    path = Path(args.workdir) / f"qwen2-0.5b-{args.layers}l-bf16"
    if not (path / "config.json").exists():
        bench.write_random_checkpoint(config, path)
    configs = {name: (prelude, options) for name, (prelude, options) in CONFIGS.items()}
    if args.best == "stored-fused":
        configs["best"] = ("", BEST_ELSEWHERE)
    if args.mlx_lm:
        configs["mlx-lm"] = ("", None)
    samples: dict[str, list[dict]] = {name: [] for name in configs}
    for round_ in range(args.runs):
        order = list(configs) if round_ % 2 == 0 else list(reversed(configs))
        for name in order:
            prelude, options = configs[name]
            samples[name].append(measure(name, options, prelude, path, args))
            print(f"round {round_ + 1} {name}: {samples[name][-1]}", flush=True)

    best = {k: statistics.median(s[k] for s in samples["best"])
            for k in ("prefill_tps", "decode_tps")}
    print(f"\nqwen2-0.5b widths, {args.layers} layers, bf16 checkpoint, prompt "
          f"{args.prompt_tokens}, {args.gen_tokens} new tokens, median of {args.runs}")
    print("| load | dtypes | fast BLAS | prefill tok/s | vs best | decode tok/s | vs best |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in samples.items():
        prefill = statistics.median(r["prefill_tps"] for r in runs)
        decode = statistics.median(r["decode_tps"] for r in runs)
        print(f"| {name} | {','.join(runs[0]['dtypes'])} | {runs[0].get('blas_fast', '-')} | "
              f"{prefill:.1f} | {prefill / best['prefill_tps']:.2f}x | {decode:.2f} | "
              f"{decode / best['decode_tps']:.2f}x |")
    if args.json:
        meta = bench.meta(args)
        meta["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        Path(args.json).write_text(json.dumps({"meta": meta, "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
