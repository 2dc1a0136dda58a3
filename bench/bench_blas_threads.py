"""The Linux CPU fast path idle and under load (issue 30): mlx-zoo against mlx-lm, side by side.

For each load level (``--loads 0,1``: that many busy processes, each a Python loop that this
script starts before the level's runs and stops after them, and that stops itself after
``--busy-seconds`` whatever happens to this script), measures every configuration in its own
process, alternating the order round by round, ``--runs`` rounds, medians reported:

- ``zoo-defaults``: ``import mlx_zoo; mlx_zoo.load(path)``;
- ``zoo-cli``: the settings ``mlx-zoo generate`` loads with (``dtype="auto", dequantize="auto",
  fuse=True``; the same as the defaults on this machine, measured anyway);
- ``mlx-lm``: ``mlx_lm.utils.load_model``, its own ``generate_step``;

and each mlx-zoo configuration once per ``--variant NAME=ENV=VALUE[,ENV=VALUE]`` (extra
environment, e.g. ``t1=MLX_ZOO_BLAS_THREADS=1``; the default policy is the variant ``policy``).
Prefill tokens/s (a random prompt of ``--prompt-tokens``: length / time to the first token) and
decode tokens/s (``--gen-tokens`` greedy tokens: (tokens - 1) / time after the first) through
each library's ``generate_step`` after a short warm-up (bench/bench_defaults.py's worker).

The checkpoint: ``synthetic:HxL`` (bench/bench_serve.py; default 512x8, the qwen2 of 25M
parameters stored bfloat16 that issue 30 was measured on) or a directory.

    python bench/bench_blas_threads.py --runs 3 --json bench/results/cpu-blas-threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_defaults import LM_LOAD, WARMUP_TOKENS, WORKER, ZOO_LOAD  # noqa: E402

ZOO_CONFIGS = {"zoo-defaults": "{}",
               "zoo-cli": "dict(dtype='auto', dequantize='auto', fuse=True)"}
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
MAX_BUSY_SECONDS = 1800


def start_busy(count: int, seconds: float) -> list[subprocess.Popen]:
    """``count`` processes that each keep one core busy for at most ``seconds``."""
    code = BUSY.format(seconds=min(seconds, MAX_BUSY_SECONDS))
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def stop_busy(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        p.terminate()
    for p in processes:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def measure(options: str | None, env: dict[str, str], path: str,
            args: argparse.Namespace) -> dict:
    """One run in a fresh process (``options``: mlx_zoo.load's keywords; None: mlx-lm)."""
    load = LM_LOAD if options is None else ZOO_LOAD.format(options=options)
    prelude = "" if options is None else "import mlx_zoo\n"
    code = WORKER.format(prelude=prelude, load=load, warmup=WARMUP_TOKENS)
    out = subprocess.run([sys.executable, "-c", code, path, str(args.prompt_tokens),
                          str(args.gen_tokens)], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=args.run_timeout)
    if out.returncode:
        raise RuntimeError(f"run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition("=")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a)
    return name, env


def configurations(args: argparse.Namespace) -> dict[str, tuple[str | None, dict]]:
    variants = [("policy", {})] + [parse_variant(v) for v in args.variant]
    configs: dict[str, tuple[str | None, dict]] = {}
    for variant, env in variants:
        for name, options in ZOO_CONFIGS.items():
            if name in args.skip:
                continue
            configs[f"{name} [{variant}]"] = (options, env)
    configs["mlx-lm"] = (None, {})
    return configs


def run_level(busy: int, configs: dict, path: str, args: argparse.Namespace) -> dict:
    """Every configuration's runs with ``busy`` busy processes running."""
    processes = start_busy(busy, args.busy_seconds)
    samples: dict[str, list[dict]] = {name: [] for name in configs}
    loads = [os.getloadavg()[0]]
    try:
        time.sleep(1.0 if busy else 0.0)
        for round_ in range(args.runs):
            order = list(configs) if round_ % 2 == 0 else list(reversed(configs))
            for name in order:
                options, env = configs[name]
                samples[name].append(measure(options, env, path, args))
                print(f"busy={busy} round {round_ + 1} {name}: "
                      f"prefill {samples[name][-1]['prefill_tps']:.1f} "
                      f"decode {samples[name][-1]['decode_tps']:.2f}", flush=True)
            loads.append(os.getloadavg()[0])
    finally:
        stop_busy(processes)
    return {"busy": busy, "loadavg_1min": loads, "samples": samples}


def table(levels: list[dict]) -> str:
    lines = ["| busy processes | configuration | prefill tok/s | decode tok/s | prefill vs mlx-lm "
             "| decode vs mlx-lm |", "|---|---|---|---|---|---|"]
    for level in levels:
        medians = {name: {k: statistics.median(r[k] for r in runs)
                          for k in ("prefill_tps", "decode_tps")}
                   for name, runs in level["samples"].items()}
        lm = medians["mlx-lm"]
        for name, m in medians.items():
            lines.append(f"| {level['busy']} | {name} | {m['prefill_tps']:.1f} | "
                         f"{m['decode_tps']:.2f} | {m['prefill_tps'] / lm['prefill_tps']:.2f}x | "
                         f"{m['decode_tps'] / lm['decode_tps']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="synthetic:512x8", help="synthetic:HxL or a directory")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--loads", default="0,1", help="busy processes per level, comma-separated")
    p.add_argument("--busy-seconds", type=float, default=900,
                   help="each busy process stops itself after this long (at most 1800)")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=ENV=VALUE[,ENV=VALUE]: mlx-zoo again with this environment")
    p.add_argument("--skip", action="append", default=[], help="leave out a zoo configuration")
    p.add_argument("--run-timeout", type=float, default=600)
    p.add_argument("--json", help="write every run's figures to this file")
    args = p.parse_args(argv)

    path = args.model
    if path.startswith("synthetic:"):
        from bench_serve import synthetic_checkpoint

        path = synthetic_checkpoint(path)
    configs = configurations(args)
    levels = [run_level(int(b), configs, path, args) for b in args.loads.split(",")]
    print(f"\n{args.model}, prompt {args.prompt_tokens}, {args.gen_tokens} new tokens, "
          f"median of {args.runs}; loadavg per level: "
          + "; ".join(f"{lv['busy']}: {min(lv['loadavg_1min']):.1f}-"
                      f"{max(lv['loadavg_1min']):.1f}" for lv in levels))
    print(table(levels))
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "machine": platform.machine(), "cpus": os.cpu_count(),
                "affinity": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                "model": args.model, "argv": sys.argv[1:]}
        Path(args.json).write_text(json.dumps({"meta": meta, "levels": levels}, indent=1))


if __name__ == "__main__":
    main()
