"""The start-up hook of the core's wheel (issue 32): what it costs a program that never imports
MLX, and what it gives one that imports ``mlx.core`` before ``mlx_zoo``.

Builds the wheels of the core and of mlx-qwen2 (``--plugin``) from clean copies of this checkout
(no build isolation), and two fresh virtual environments: *with* mlx-zoo (the wheels installed,
so the hook's ``.pth`` is in site-packages) and *without* it; in both the third-party packages
(mlx, mlx-lm, the OpenBLAS wheel, ...) are this environment's, through a plain path entry (its
own ``.pth`` files are not read). Then:

1. start-up: ``python -c pass`` in each environment -- without, with, with
   ``MLX_ZOO_BLAS_HOOK=0`` -- alternating, ``--startup-runs`` times each, wall time of the whole
   process (fork/exec included, the same for all); and ``-X importtime``'s figure for the hook
   module;
2. speed, in the *with* environment: ``mlx_zoo.load(path)`` with mlx_zoo imported first, with
   ``mlx.core`` imported first, and with ``mlx.core`` first and the hook off, alternating,
   ``--runs`` rounds (bench/bench_defaults.py's worker: prefill and decode tokens/s).

    python bench/bench_import_hook.py --runs 3 --json bench/results/cpu-import-hook.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_defaults import WARMUP_TOKENS, WORKER, ZOO_LOAD  # noqa: E402

ORDERS = {  # name: (prelude, extra environment)
    "mlx_zoo first": ("import mlx_zoo\n", {}),
    "mlx.core first": ("import mlx.core\nimport mlx_zoo\n", {}),
    "mlx.core first, hook off": ("import mlx.core\nimport mlx_zoo\n", {"MLX_ZOO_BLAS_HOOK": "0"}),
}


def build_wheel(project: Path, out: Path, tmp: Path) -> Path:
    source = tmp / project.name
    shutil.copytree(project, source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    name = project.name.replace("-", "_") if project.name != "core" else "mlx_zoo"
    return next(out.glob(f"{name}-*.whl"))


def make_venv(root: Path, wheels: list[Path]) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(root)],
                   check=True)
    python = root / "bin" / "python"
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                        "--quiet", "--no-deps", "--no-index", "--disable-pip-version-check",
                        *map(str, wheels)], check=True, capture_output=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    Path(purelib, "zz_bench_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLX_ZOO_BLAS_HOOK", "MLX_ZOO_BLAS", "PYTHONPATH", "LD_PRELOAD")}
    return {**env, **extra}


def startup(pythons: dict[str, tuple[Path, dict]], runs: int, cwd: Path) -> dict[str, list]:
    times: dict[str, list[float]] = {name: [] for name in pythons}
    for round_ in range(runs):
        order = list(pythons) if round_ % 2 == 0 else list(reversed(pythons))
        for name in order:
            python, env = pythons[name]
            start = time.perf_counter()
            subprocess.run([str(python), "-c", "pass"], check=True, env=env, cwd=cwd)
            times[name].append(time.perf_counter() - start)
    return times


def hook_import_us(python: Path, cwd: Path, runs: int = 9) -> list[int]:
    """``-X importtime``'s cumulative microseconds for ``_mlx_zoo_blas_hook``, per run."""
    figures = []
    for _ in range(runs):
        err = subprocess.run([str(python), "-X", "importtime", "-c", "pass"], check=True,
                             capture_output=True, text=True, env=clean_env(), cwd=cwd).stderr
        found = re.search(r"\|\s*(\d+)\s*\|\s*_mlx_zoo_blas_hook", err)
        figures.append(int(found.group(1)) if found else -1)
    return figures


def speed(python: Path, path: str, args: argparse.Namespace, cwd: Path) -> dict[str, list]:
    samples: dict[str, list[dict]] = {name: [] for name in ORDERS}
    code_load = ZOO_LOAD.format(options="{}")
    for round_ in range(args.runs):
        order = list(ORDERS) if round_ % 2 == 0 else list(reversed(ORDERS))
        for name in order:
            prelude, extra = ORDERS[name]
            code = WORKER.format(prelude=prelude, load=code_load, warmup=WARMUP_TOKENS)
            out = subprocess.run([str(python), "-c", code, path, str(args.prompt_tokens),
                                  str(args.gen_tokens)], capture_output=True, text=True,
                                 env=clean_env(**extra), cwd=cwd, timeout=600)
            if out.returncode:
                raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
            samples[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1} {name}: {samples[name][-1]}", flush=True)
    return samples


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="synthetic:512x8", help="synthetic:HxL or a directory")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3, help="speed rounds (0: start-up only)")
    p.add_argument("--startup-runs", type=int, default=40)
    p.add_argument("--json", help="write every figure to this file")
    p.add_argument("--plugin", action="append", default=None,
                   help="plugin distributions to install beside the core (default mlx-qwen2; "
                        "mlx-llama for SmolLM2)")
    args = p.parse_args(argv)
    args.plugin = args.plugin or ["mlx-qwen2"]

    with tempfile.TemporaryDirectory(prefix="mlx-zoo-hook-bench-") as tmp_name:
        tmp = Path(tmp_name)
        wheels = [build_wheel(REPO / "core", tmp / "dist", tmp)] + [
            build_wheel(REPO / "plugins" / plugin, tmp / "dist", tmp) for plugin in args.plugin]
        with_zoo = make_venv(tmp / "with", wheels)
        without = make_venv(tmp / "without", [])
        pythons = {"without mlx-zoo": (without, clean_env()),
                   "with mlx-zoo": (with_zoo, clean_env()),
                   "with mlx-zoo, MLX_ZOO_BLAS_HOOK=0": (with_zoo,
                                                         clean_env(MLX_ZOO_BLAS_HOOK="0"))}
        startup(pythons, 3, tmp)  # warm the page cache
        times = startup(pythons, args.startup_runs, tmp)
        print(f"start-up of `python -c pass`, {args.startup_runs} runs each, alternating "
              f"(load average {os.getloadavg()[0]:.1f}):")
        for name, t in times.items():
            q = statistics.quantiles(t, n=4)
            print(f"  {name}: median {statistics.median(t) * 1e3:.1f} ms "
                  f"(quartiles {q[0] * 1e3:.1f}-{q[2] * 1e3:.1f})")
        importtime = hook_import_us(with_zoo, tmp)
        print(f"  -X importtime, _mlx_zoo_blas_hook: {sorted(importtime)} us")
        samples = {}
        if args.runs:
            path = args.model
            if path.startswith("synthetic:"):
                from bench_serve import synthetic_checkpoint

                path = synthetic_checkpoint(path)
            samples = speed(with_zoo, path, args, tmp)
            first = {k: statistics.median(r[k] for r in samples["mlx_zoo first"])
                     for k in ("prefill_tps", "decode_tps")}
            print(f"\n{args.model}, load(path), prompt {args.prompt_tokens}, "
                  f"{args.gen_tokens} new tokens, median of {args.runs}")
            print("| import order | fast BLAS | dtypes | prefill tok/s | vs mlx_zoo first | "
                  "decode tok/s | vs mlx_zoo first |\n|---|---|---|---|---|---|---|")
            for name, runs in samples.items():
                pre = statistics.median(r["prefill_tps"] for r in runs)
                dec = statistics.median(r["decode_tps"] for r in runs)
                print(f"| {name} | {runs[0]['blas_fast']} | {','.join(runs[0]['dtypes'])} | "
                      f"{pre:.1f} | {pre / first['prefill_tps']:.2f}x | {dec:.2f} | "
                      f"{dec / first['decode_tps']:.2f}x |")
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "cpus": os.cpu_count(), "python": sys.version.split()[0],
                "loadavg": os.getloadavg(), "argv": sys.argv[1:]}
        Path(args.json).write_text(json.dumps({"meta": meta, "startup_s": times,
                                               "hook_importtime_us": importtime,
                                               "speed": samples}, indent=1))


if __name__ == "__main__":
    main()
