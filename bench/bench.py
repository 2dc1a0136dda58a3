"""Benchmark mlx-zoo against mlx-lm on random-weight checkpoints of realistic shapes.

For each shape (``bench/shapes.py``) and each weight format (bf16, 4-bit):

1. write a random bf16 checkpoint in the Hub's layout, and its 4-bit conversions -- one by
   mlx-zoo (``mlx_zoo.quantize`` + ``save``), one by mlx-lm (its ``quantize_model`` +
   ``save_model``), each library loading its own (group size 64, affine, as both default to);
2. measure each library in a fresh process, alternating mlx-zoo / mlx-lm, ``--runs`` times:
   load time (``load`` until the weights are evaluated), prefill tokens/s (a random prompt of
   ``--prompt-tokens`` tokens: prompt length / time to the first new token), decode tokens/s
   (``--gen-tokens`` new tokens, greedy: (tokens - 1) / time after the first) and peak memory
   (``mx.get_peak_memory`` over the whole process, load included);
3. print one table of medians with the ratio mlx-zoo / mlx-lm per figure.

Each library runs through its own generation loop (``mlx_zoo.generate_step``,
``mlx_lm.generate.generate_step``) after one short warm-up generation (kernel compilation). mlx-zoo
loads with its default fast path (``dtype="auto", dequantize="auto"``: dense float32 on MLX's
Linux CPU backend when it fits in memory, the checkpoint as stored elsewhere; ``--zoo-load
stored`` turns it off) and fused projections as its CLI loads them (``fuse=True``: q/k/v and
gate/up as one matmul each, ``mlx_zoo.fusion``; ``--no-zoo-fuse`` turns it off); mlx-lm loads as
its users get it.

Quick CPU run (minutes):   python bench/bench.py --scale cpu --prompt-tokens 128 --gen-tokens 32
Full shapes (GPU):         python bench/bench.py --scale full
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import shapes  # noqa: E402

FORMATS = ("bf16", "4bit")
LIBS = ("zoo", "lm")
LIB_NAMES = {"zoo": "mlx-zoo", "lm": "mlx-lm"}
QUANT_BITS, QUANT_GROUP = 4, 64  # both libraries' defaults
WEIGHT_STD = 0.02  # std of the random matrices (as transformers' initializer_range)
SHARD_BYTES = 4 << 30
WARMUP_TOKENS = 4
GB = 1e9


# -- checkpoints -----------------------------------------------------------------------------------


def write_random_checkpoint(config: dict, path: Path, seed: int = 0) -> None:
    """A bf16 checkpoint of random weights in the Hub's layout, sharded as the Hub does."""
    import mlx.core as mx

    path.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    shard, shard_bytes, weight_map, index = {}, 0, {}, 0

    def flush():
        nonlocal shard, shard_bytes, index
        if shard:
            index += 1
            name = f"model-{index:05d}.safetensors"
            mx.save_safetensors(str(path / name), shard, metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            shard, shard_bytes = {}, 0

    for name, shape in shapes.tensor_layout(config).items():
        if len(shape) == 1:  # norms are ones, biases small
            w = mx.ones(shape) if "norm" in name else mx.random.normal(shape) * WEIGHT_STD
        else:
            w = mx.random.normal(shape) * WEIGHT_STD
        w = w.astype(mx.bfloat16)
        mx.eval(w)
        if shard_bytes + w.nbytes > SHARD_BYTES:
            flush()
        shard[name] = w
        shard_bytes += w.nbytes
    flush()
    total = sum((path / f).stat().st_size for f in set(weight_map.values()))
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (path / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16"}, indent=1))


def quantize_with(lib: str, src: Path, dst: Path) -> None:
    """Convert ``src`` to 4-bit with ``lib``'s own tools (run in a child process)."""
    if lib == "zoo":
        code = ("import mlx_zoo, sys; m, c = mlx_zoo.load(sys.argv[1], lazy=True);"
                f"mlx_zoo.quantize(m, c, bits={QUANT_BITS}, group_size={QUANT_GROUP});"
                "mlx_zoo.save(m, c, sys.argv[2])")
    else:
        code = ("import sys; from pathlib import Path;"
                "from mlx_lm.utils import load_model, quantize_model, save_model, save_config;"
                "m, c = load_model(Path(sys.argv[1]), lazy=True);"
                f"m, c = quantize_model(m, c, {QUANT_GROUP}, {QUANT_BITS});"
                "save_model(sys.argv[2], m); save_config(c, Path(sys.argv[2]) / 'config.json')")
    subprocess.run([sys.executable, "-c", code, str(src), str(dst)], check=True)


# -- one measurement, in its own process ---------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Load ``args.path`` with one library, generate, print one JSON line of figures."""
    if args.lib == "zoo":
        import mlx_zoo  # first: it picks the BLAS before mlx.core is loaded (Linux CPU)

        load_options = ({"dtype": "auto", "dequantize": "auto"} if args.zoo_load == "auto"
                        else {"dtype": None, "dequantize": False})
        load_options["fuse"] = args.zoo_fuse
        generate_step = mlx_zoo.generate_step
    else:
        from mlx_lm.generate import generate_step
    import mlx.core as mx

    config = json.loads((Path(args.path) / "config.json").read_text())
    vocab = shapes.text_config(config)["vocab_size"]
    start = time.perf_counter()
    if args.lib == "zoo":
        model, _ = mlx_zoo.load(args.path, **load_options)
    else:
        from mlx_lm.utils import load_model

        model, _ = load_model(Path(args.path))
    mx.eval(model.parameters())
    load_s = time.perf_counter() - start

    mx.random.seed(args.seed)
    prompt = mx.random.randint(0, vocab, (args.prompt_tokens,)).astype(mx.uint32)
    for _ in generate_step(prompt, model, max_tokens=WARMUP_TOKENS):
        pass

    times = []
    start = time.perf_counter()
    for _ in generate_step(prompt, model, max_tokens=args.gen_tokens):
        times.append(time.perf_counter())
    prefill_tps = args.prompt_tokens / (times[0] - start)
    decode_tps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    dtypes = sorted({str(p.dtype).removeprefix("mlx.core.") for p in _leaves(model.parameters())})
    print(json.dumps({"load_s": load_s, "prefill_tps": prefill_tps, "decode_tps": decode_tps,
                      "peak_gb": mx.get_peak_memory() / GB, "dtypes": dtypes}))


def _leaves(tree):
    from mlx.utils import tree_flatten

    return [v for _, v in tree_flatten(tree)]


def measure(lib: str, path: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--lib", lib,
           "--path", str(path), "--prompt-tokens", str(args.prompt_tokens),
           "--gen-tokens", str(args.gen_tokens), "--zoo-load", args.zoo_load,
           "--zoo-fuse" if args.zoo_fuse else "--no-zoo-fuse"]
    env = dict(os.environ)
    if lib == "lm" and args.lm_preload:
        env["LD_PRELOAD"] = args.lm_preload
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{LIB_NAMES[lib]} on {path} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the table -------------------------------------------------------------------------------------

FIGURES = (("load_s", "load s", "{:.2f}"), ("prefill_tps", "prefill tok/s", "{:.1f}"),
           ("decode_tps", "decode tok/s", "{:.2f}"), ("peak_gb", "peak GB", "{:.2f}"))


def _fmt(value: float, pattern: str) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return pattern.format(value)


def table(rows: list[dict]) -> str:
    head = ["shape", "layers", "params", "weights"]
    for _, title, _ in FIGURES:
        head += [f"{title} zoo", f"{title} lm", "zoo/lm"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["shape"], str(r["layers"]), f"{r['params'] / 1e9:.2f} B", r["format"]]
        for key, _, pattern in FIGURES:
            z, m = r["zoo"][key], r["lm"][key]
            cells += [_fmt(z, pattern), _fmt(m, pattern), f"{z / m:.2f}x" if m else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def median_figures(samples: list[dict]) -> dict:
    out = {key: statistics.median(s[key] for s in samples) for key, _, _ in FIGURES}
    out["runs"] = [{k: s[k] for k, _, _ in FIGURES} for s in samples]
    out["dtypes"] = samples[0]["dtypes"]
    return out


def run(args: argparse.Namespace) -> None:
    catalogue = shapes.FULL if args.scale == "full" else shapes.CPU
    names = args.shapes.split(",") if args.shapes else list(catalogue)
    formats = args.formats.split(",")
    work = Path(args.workdir)
    rows: list[dict] = []
    results_file = Path(args.json) if args.json else None
    for name in names:
        config = catalogue[name]
        if args.layers:
            config = shapes.with_layers(config, args.layers)
        layers = shapes.text_config(config)["num_hidden_layers"]
        base = work / f"{name}-{args.scale}-{layers}L"
        bf16 = base / "bf16"
        if not (bf16 / "config.json").exists():
            t = time.perf_counter()
            write_random_checkpoint(config, bf16)
            print(f"# wrote {bf16} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        paths = {"bf16": {"zoo": bf16, "lm": bf16}}
        if "4bit" in formats:
            paths["4bit"] = {}
            for lib in LIBS:
                q = base / f"4bit-{lib}"
                if not (q / "config.json").exists():
                    t = time.perf_counter()
                    quantize_with(lib, bf16, q)
                    print(f"# {LIB_NAMES[lib]} quantized {name} in {time.perf_counter() - t:.1f} s",
                          file=sys.stderr)
                paths["4bit"][lib] = q
        for fmt in formats:
            samples = {lib: [] for lib in LIBS}
            try:
                for i in range(args.runs):
                    order = LIBS if i % 2 == 0 else LIBS[::-1]
                    for lib in order:
                        samples[lib].append(measure(lib, paths[fmt][lib], args))
                        print(f"# {name} {fmt} {LIB_NAMES[lib]} run {i + 1}: "
                              f"{samples[lib][-1]}", file=sys.stderr, flush=True)
            except RuntimeError as e:  # report and go on with the next row
                print(f"# {name} {fmt} FAILED: {e}", file=sys.stderr, flush=True)
                continue
            row = {"shape": name, "layers": layers, "params": shapes.parameter_count(config),
                   "format": fmt, **{lib: median_figures(samples[lib]) for lib in LIBS}}
            rows.append(row)
            if results_file:
                results_file.write_text(json.dumps({"meta": meta(args), "rows": rows}, indent=1))
            print(table([row]).splitlines()[-1], flush=True)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"prompt {args.prompt_tokens} tokens, {args.gen_tokens} new tokens, batch 1, median of "
          f"{args.runs} runs; {meta(args)['device']}")
    print(table(rows))


def meta(args: argparse.Namespace) -> dict:
    import platform

    import mlx.core as mx

    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "device": str(mx.default_device()), "machine": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "args": {k: v for k, v in vars(args).items() if k != "worker"}}
    from importlib import metadata

    for dist in ("mlx", "mlx-cpu", "mlx-cuda-13", "mlx-lm", "mlx-zoo"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return info


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=("full", "cpu"), default="cpu",
                   help="full: the real shapes (GPU); cpu: real widths, fewer layers")
    p.add_argument("--shapes", help=f"comma-separated subset of: {', '.join(shapes.FULL)}")
    p.add_argument("--formats", default=",".join(FORMATS), help="bf16,4bit")
    p.add_argument("--layers", type=int, help="override every shape's layer count")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=3, help="runs per library (median reported)")
    p.add_argument("--workdir", default="/tmp/mlx-zoo-bench", help="where checkpoints go")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    p.add_argument("--json", help="write all figures (every run) to this file")
    p.add_argument("--zoo-load", choices=("auto", "stored"), default="auto",
                   help="mlx-zoo's load policy: auto (its default fast path) or as stored")
    p.add_argument("--zoo-fuse", action=argparse.BooleanOptionalAction, default=True,
                   help="mlx-zoo loads with fused q/k/v and gate/up projections (fuse=True)")
    p.add_argument("--lm-preload", default="",
                   help="LD_PRELOAD for the mlx-lm processes (e.g. an OpenBLAS library)")
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lib", choices=LIBS, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
