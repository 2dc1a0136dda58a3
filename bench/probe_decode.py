"""Where does batch-1 decode time go? A profiling probe (not the benchmark table).

In one process, with random in-memory weights (no checkpoint files) of a Qwen2 shape:

* matvec bandwidth: ``x @ W.T`` for each projection shape (bf16, and 4-bit quantized_matmul),
  the bound a decode step cannot beat;
* one decode step split into graph construction (Python) and evaluation (device + encoding);
* decode tokens/s through mlx-lm's ``generate_step`` and mlx-zoo's, plain and with the compiled
  decode step (``compile_step``), on the same weights; mlx-zoo's model has its projections fused
  (q/k/v, gate/up: ``mlx_zoo.fusion``, as ``mlx-zoo generate`` loads it), and "mlx-zoo unfused"
  is the same model with separate projections.

    python bench/probe_decode.py --shape qwen2-7b --formats bf16,4bit
    python bench/probe_decode.py --scale cpu --layers 4 --formats fp32   # Linux CPU (OpenBLAS)
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlx_zoo  # noqa: E402, I001  (first: BLAS choice on Linux CPU)
import shapes  # noqa: E402

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from mlx_zoo.fusion import checkpoint_parameters  # noqa: E402

DTYPES = {"bf16": mx.bfloat16, "4bit": mx.bfloat16, "fp32": mx.float32}
"""Weight dtype of each format (4bit: the dtype of its scales and of the other weights)."""


def timed(fn, repeat: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        mx.eval(fn())
    start = time.perf_counter()
    for _ in range(repeat):
        mx.eval(fn())
    return (time.perf_counter() - start) / repeat


def matvec_bandwidth(config: dict, fmt: str) -> None:
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    for out_dims, in_dims in ((hidden, hidden), (inter, hidden), (hidden, inter),
                              (config["vocab_size"], hidden)):
        w = (mx.random.normal((out_dims, in_dims)) * 0.02).astype(DTYPES[fmt])
        x = mx.random.normal((1, 1, in_dims)).astype(DTYPES[fmt])
        if fmt == "4bit":
            q = mx.quantize(w, group_size=64, bits=4)
            mx.eval(q, x)
            nbytes = sum(a.nbytes for a in q)
            s = timed(lambda q=q, x=x: mx.quantized_matmul(x, *q, transpose=True, group_size=64,
                                                             bits=4))
        else:
            mx.eval(w, x)
            nbytes = w.nbytes
            s = timed(lambda w=w, x=x: x @ w.T)
        print(f"  matvec {fmt} {out_dims}x{in_dims}: {s * 1e6:8.1f} us  "
              f"{nbytes / s / 1e9:7.1f} GB/s")


def build(config: dict, fmt: str, fuse: bool = True):
    from mlx_zoo import registry

    arch = registry.resolve(config["model_type"])
    args = arch.config_class.from_dict(dict(config), Path("<probe>"))
    model = arch.model_class(args)
    model.set_dtype(DTYPES[fmt])
    if fmt == "4bit":
        mlx_zoo.quantize(model, args, bits=4, group_size=64)
    if fuse:
        mlx_zoo.fuse_projections(model)
    mx.eval(model.parameters())
    return model, args


def unfused_twin(config: dict, zoo_model, fmt: str):
    """The same mlx-zoo model with separate projections: the fused model's weights, split."""
    model, _ = build(config, fmt, fuse=False)
    model.load_weights(checkpoint_parameters(zoo_model), strict=True)
    mx.eval(model.parameters())
    return model


def mlx_lm_twin(config: dict, zoo_model, fmt: str):
    """mlx-lm's model of the same checkpoint, sharing the weight arrays."""
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    if fmt == "4bit":
        nn.quantize(model, group_size=64, bits=4)
    model.load_weights(checkpoint_parameters(zoo_model), strict=True)
    return model


def decode_tps(step_fn, model, prompt, tokens: int) -> tuple[float, float]:
    for _ in step_fn(prompt, model, max_tokens=4):
        pass
    times = []
    start = time.perf_counter()
    for _ in step_fn(prompt, model, max_tokens=tokens):
        times.append(time.perf_counter())
    return prompt.size / (times[0] - start), (len(times) - 1) / (times[-1] - times[0])


def step_split(model, prompt, n: int = 20) -> dict:
    """Milliseconds to build one decode step's graph, and to evaluate a built one (mean of
    ``n`` steps after a prefill of ``prompt`` and 3 warm-up steps)."""
    cache = mlx_zoo.make_prompt_cache(model)
    mx.eval(model(prompt[None], cache=cache))
    y = mx.array([[1]], dtype=mx.uint32)
    for _ in range(3):
        mx.eval(model(y, cache=cache))
    build_s, eval_s = 0.0, 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        out = model(y, cache=cache)
        t1 = time.perf_counter()
        mx.eval(out)
        t2 = time.perf_counter()
        build_s += t1 - t0
        eval_s += t2 - t1
    return {"build_ms": build_s / n * 1e3, "eval_ms": eval_s / n * 1e3}


def report(name: str, prefill: float, decode: float, nbytes: int) -> None:
    print(f"  {name:16s} prefill {prefill:9.1f} tok/s  decode {decode:7.1f} tok/s  "
          f"({nbytes / 1e9 * decode:.0f} GB/s of weights)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen2-7b")
    p.add_argument("--scale", default="full", choices=("full", "cpu"))
    p.add_argument("--formats", default="bf16,4bit", help=f"of {', '.join(DTYPES)}")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--layers", type=int)
    p.add_argument("--rounds", type=int, default=2, help="alternations of the decode runs")
    p.add_argument("--no-mlx-lm", action="store_true", help="leave mlx-lm out of the decode runs")
    args = p.parse_args()
    config = (shapes.FULL if args.scale == "full" else shapes.CPU)[args.shape]
    if args.layers:
        config = shapes.with_layers(config, args.layers)
    print(f"mlx {mx.__version__} {mx.default_device()} shape {args.shape} "
          f"({shapes.parameter_count(config) / 1e9:.2f} B)")
    from mlx_lm.generate import generate_step as lm_generate_step

    for fmt in args.formats.split(","):
        print(f"[{fmt}]")
        matvec_bandwidth(config, fmt)
        model, _ = build(config, fmt)
        nbytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
        print(f"  weights {nbytes / 1e9:.2f} GB")
        prompt = mx.random.randint(0, config["vocab_size"], (args.prompt_tokens,)).astype(mx.uint32)
        split = step_split(model, prompt)
        print(f"  one step: graph construction {split['build_ms']:.2f} ms, evaluation "
              f"{split['eval_ms']:.2f} ms (serial: "
              f"{1e3 / (split['build_ms'] + split['eval_ms']):.1f} tok/s)")
        unfused = unfused_twin(config, model, fmt)
        plain = partial(mlx_zoo.generate_step, compile_step=False)
        compiled = partial(mlx_zoo.generate_step, compile_step=True)
        runs = [("mlx-zoo plain", plain, model), ("mlx-zoo unfused", plain, unfused),
                ("mlx-zoo compiled", compiled, model)]
        if not args.no_mlx_lm:
            runs.append(("mlx-lm", lm_generate_step, mlx_lm_twin(config, model, fmt)))
        for _ in range(args.rounds):  # alternated
            for name, fn, m in runs:
                report(name, *decode_tps(fn, m, prompt, args.gen_tokens), nbytes)
        del model, unfused, runs
        mx.clear_cache()


if __name__ == "__main__":
    main()
