"""Host overhead of batch-1 decode on MLX's CUDA backend: where it goes, and what cuts it.

A probe for issue 17 item 2 (not the benchmark table). In one process per setting, on random
in-memory weights of a Qwen2 shape:

* ``kernel``: host cost per quantized product (x of one row, 4-bit, group 64) -- time to *build*
  N products in Python and wall time to evaluate them, over a weight small enough to stay in L2,
  so the figures are host work: MLX's ``quantized_matmul``; ``mlx_zoo.kernels`` through
  ``mx.fast.cuda_kernel`` as committed (no reshape ops); the same with the two reshape ops the
  previous version added. (``mx.fast.precompiled_cuda_kernel``, which skips the per-call source
  string, needs the kernel's PTX: MLX 0.32 does not write custom kernels' PTX to its cache, so
  that variant would need our own NVRTC call -- not done.)
* ``decode``: one decode step split into graph construction (Python) and evaluation, and decode
  tokens/s of mlx-zoo plain, compiled (``compile_step``), with ``use_fast_kernels`` (quantized
  models) and mlx-lm on the same weights, alternated.
* ``decode`` also counts the ops of one decode step by primitive (``mx.export_to_dot``; on a
  GPU the ``mx.fast`` ops are one primitive each, on the CPU they expand) and, with
  ``--logits FILE``, saves the logits of a prefill and 4 greedy steps (``.npy``), so that two
  versions of the code can be checked for the same values on the same device.
* ``table``: decode tok/s of mlx-zoo and mlx-lm on the same weights and their share of the
  H200's bandwidth bound (weights read per token; a mixture of experts reads its active ones).
* ``sweep``: the ``decode`` figures in child processes under MLX's CUDA graph settings
  (``MLX_MAX_OPS_PER_BUFFER``, ``MLX_MAX_MB_PER_BUFFER``, ``MLX_USE_CUDA_GRAPHS``), which MLX
  reads once per process.

    python bench/probe_host.py kernel
    python bench/probe_host.py decode --shape qwen2-0.5b --fmt bf16
    python bench/probe_host.py sweep --shape qwen2-0.5b --fmt bf16
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlx_zoo  # noqa: E402, I001
import shapes  # noqa: E402
from probe_decode import decode_tps, step_split  # noqa: E402

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from mlx_zoo import kernels  # noqa: E402
from mlx_zoo.kernels import cuda_qmv  # noqa: E402

GROUP, BITS = 64, 4  # the quantization probed: mlx-lm's default 4-bit, group 64


# -- kernel: host cost per product ----

NOOP = 'extern "C" __global__ void mlx_zoo_noop(const unsigned short* x, unsigned short* out) {}'


def noop(x):
    """A precompiled kernel that does nothing (the smallest cubin): the floor of host cost."""
    from mlx_zoo.kernels.nvrtc import compile_cubin

    cubin = compile_cubin(NOOP, "mlx_zoo_noop", cuda_qmv.architecture())
    return mx.fast.precompiled_cuda_kernel(
        name="mlx_zoo_noop", compiled_source=cubin, inputs=[x], output_shapes=[(1,)],
        output_dtypes=[x.dtype], scalars=[], grid=(32, 1, 1), threadgroup=(32, 1, 1))[0]


@mx.compile
def compiled_qmv(x, w, s, b):
    return cuda_qmv.qmv(x, w, s, b, GROUP, BITS)


def kernel(records: dict, n: int = 400) -> None:
    variants = {
        "mlx quantized_matmul": lambda x, q: mx.quantized_matmul(
            x, *q, transpose=True, group_size=GROUP, bits=BITS),
        "zoo precompiled (NVRTC)": lambda x, q: cuda_qmv.qmv(x, *q, GROUP, BITS),
        "precompiled no-op kernel": lambda x, q: noop(x),
        "zoo precompiled, in mx.compile": lambda x, q: compiled_qmv(x, *q),
        "mlx x @ W.T (bf16)": None,
    }
    for name, out_dims, in_dims in (("0.5B q/o", 896, 896), ("7B q/o", 3584, 3584)):
        w = (mx.random.normal((out_dims, in_dims)) * 0.02).astype(mx.bfloat16)
        q = mx.quantize(w, group_size=GROUP, bits=BITS)
        x = mx.random.normal((1, 1, in_dims)).astype(mx.bfloat16)
        mx.eval(w, q, x)
        for vname, fn in variants.items():
            f = (lambda x, q, w=w: x @ w.T) if fn is None else fn
            try:
                mx.eval(f(x, q))  # compile / warm up
            except Exception as e:  # noqa: BLE001 (report, go on with the others)
                print(f"  {name:9s} {vname:30s} failed: {type(e).__name__}: {e}", flush=True)
                continue
            builds, totals = [], []
            for _ in range(5):
                t0 = time.perf_counter()
                outs = [f(x, q) for _ in range(n)]
                t1 = time.perf_counter()
                mx.eval(outs)
                t2 = time.perf_counter()
                builds.append((t1 - t0) / n * 1e6)
                totals.append((t2 - t0) / n * 1e6)
            b, t = sorted(builds)[2], sorted(totals)[2]
            records.setdefault("kernel", []).append(
                {"shape": name, "variant": vname, "build_us": b, "total_us": t})
            print(f"  {name:9s} {vname:30s} build {b:6.2f} us/op  build+eval {t:6.2f} us/op",
                  flush=True)


# -- decode ----


def build(config: dict, fmt: str):
    from mlx_zoo import registry

    arch = registry.resolve(config["model_type"])
    args = arch.config_class.from_dict(dict(config), Path("<probe>"))
    model = arch.model_class(args)
    model.set_dtype(mx.bfloat16)
    if fmt in ("4bit", "8bit"):
        mlx_zoo.quantize(model, args, bits=int(fmt[0]), group_size=GROUP)
    mlx_zoo.fuse_projections(model)
    mx.eval(model.parameters())
    return model


def _shallow_clone(module):
    """The same module tree with new module objects (so classes can be switched) sharing arrays."""
    if isinstance(module, nn.Module):
        clone = module.__class__.__new__(module.__class__)
        clone.__dict__.update(module.__dict__)
        dict.update(clone, {k: _shallow_clone(v) for k, v in module.items()})
        return clone
    if isinstance(module, list):
        return [_shallow_clone(v) for v in module]
    if isinstance(module, dict):
        return {k: _shallow_clone(v) for k, v in module.items()}
    return module


def mlx_lm_twin(config: dict, model, fmt: str):
    from mlx_lm.utils import _get_classes

    from mlx_zoo.fusion import checkpoint_parameters

    model_class, args_class = _get_classes(config)
    lm = model_class(args_class.from_dict(config))
    # mlx-lm's Llama 4 is the multimodal wrapper: the text model's names under language_model.
    prefix = "language_model." if "language_model" in lm else ""
    weights = [(prefix + name, value) for name, value in checkpoint_parameters(model)]
    if fmt in ("4bit", "8bit"):  # the layers mlx-zoo quantized (e.g. not a MoE router)
        quantized = {n.removesuffix(".scales") for n, _ in weights if n.endswith(".scales")}
        nn.quantize(lm, group_size=GROUP, bits=int(fmt[0]),
                    class_predicate=lambda path, _: path in quantized)
    lm.load_weights(weights, strict=True)
    mx.eval(lm.parameters())
    return lm


def loop_split(model, prompt, n: int = 64) -> dict:
    """A pipelined greedy loop as ``generate_step`` runs it (queue step n + 1, then read token n),
    timed in three parts per token: building the graph (Python), ``mx.async_eval`` (MLX encodes
    the graph's kernels on this thread) and ``.item()`` (waiting for the device)."""
    cache = mlx_zoo.make_prompt_cache(model)
    logits = model(prompt[None], cache=cache)[:, -1, :]
    y = mx.argmax(logits, axis=-1)
    mx.eval(y)
    build = encode = wait = 0.0
    for i in range(n + 8):
        t0 = time.perf_counter()
        nxt = mx.argmax(model(y[None], cache=cache)[:, -1, :], axis=-1)
        t1 = time.perf_counter()
        mx.async_eval(nxt)
        t2 = time.perf_counter()
        y.item()
        t3 = time.perf_counter()
        y = nxt
        if i >= 8:  # warm-up steps left out
            build, encode, wait = build + t1 - t0, encode + t2 - t1, wait + t3 - t2
    total = build + encode + wait
    return {"build_ms": build / n * 1e3, "async_eval_ms": encode / n * 1e3,
            "item_wait_ms": wait / n * 1e3, "tok_per_s": n / total}


def op_counts(model, prompt) -> dict[str, int]:
    """The ops of one decode step after ``prompt``, by primitive name (``mx.export_to_dot``)."""
    cache = mlx_zoo.make_prompt_cache(model)
    mx.eval(model(prompt[None], cache=cache))
    out = model(mx.array([[1]], dtype=mx.uint32), cache=cache)
    with tempfile.TemporaryDirectory() as tmp:
        dot = Path(tmp, "step.dot")
        mx.export_to_dot(str(dot), out)
        names = re.findall(r'label ?= ?"([A-Za-z_]+)"', dot.read_text())
    mx.eval(out)
    return dict(collections.Counter(names).most_common())


def greedy_logits(model, prompt, steps: int = 4):
    """float32 logits of the prompt's last position and of ``steps`` greedy steps after it."""
    import numpy as np

    cache = mlx_zoo.make_prompt_cache(model)
    logits = model(prompt[None], cache=cache)[:, -1, :]
    rows = [logits]
    for _ in range(steps):
        logits = model(mx.argmax(logits, axis=-1)[None], cache=cache)[:, -1, :]
        rows.append(logits)
    return np.array(mx.concatenate(rows).astype(mx.float32))


def decode(records: dict, shape: str, fmt: str, rounds: int, tokens: int, lite: bool,
           layers: int | None = None, prompt_tokens: int = 512,
           logits_path: str | None = None, no_compiled: bool = False) -> None:
    from mlx_lm.generate import generate_step as lm_generate_step

    config = shapes.FULL[shape]
    if layers:
        config = shapes.with_layers(config, layers)
    t0 = time.perf_counter()
    mx.random.seed(0)  # the same weights and prompt in every process (A/B runs compare logits)
    model = build(config, fmt)
    nbytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    prompt = mx.random.randint(0, config["vocab_size"], (prompt_tokens,)).astype(mx.uint32)
    print(f"  [{shape} {fmt}] weights {nbytes / 1e9:.2f} GB, built in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    ops = op_counts(model, prompt)
    records["ops"] = ops
    print(f"  ops per decode step: {sum(ops.values())} {json.dumps(ops)}", flush=True)
    if logits_path:
        import numpy as np

        np.save(logits_path, greedy_logits(model, prompt))
    split = step_split(model, prompt, n=30)
    records["step"] = split
    print(f"  one step: graph construction {split['build_ms']:.2f} ms, evaluation "
          f"{split['eval_ms']:.2f} ms", flush=True)
    loop = loop_split(model, prompt)
    records["loop"] = loop
    print(f"  pipelined loop per token: {json.dumps({k: round(v, 3) for k, v in loop.items()})}",
          flush=True)
    plain = partial(mlx_zoo.generate_step, compile_step=False)
    compiled = partial(mlx_zoo.generate_step, compile_step=True)
    runs = [("zoo plain", plain, model)]
    if not lite:
        if not no_compiled:
            runs.append(("zoo compiled", compiled, model))
        if fmt in ("4bit", "8bit"):
            fast = _shallow_clone(model)
            n = kernels.use_fast_kernels(fast)
            print(f"  fast kernels on {n} layers", flush=True)
            split_fast = step_split(fast, prompt, n=30)
            records["step_fast"] = split_fast
            loop = loop_split(fast, prompt)
            records["loop_fast"] = loop
            print(f"  pipelined loop per token, fast kernels: "
                  f"{json.dumps({k: round(v, 3) for k, v in loop.items()})}", flush=True)
            print(f"  one step with fast kernels: graph construction "
                  f"{split_fast['build_ms']:.2f} ms, evaluation {split_fast['eval_ms']:.2f} ms",
                  flush=True)
            runs += [("zoo fast kernels", plain, fast)]
        runs.append(("mlx-lm", lm_generate_step, mlx_lm_twin(config, model, fmt)))
    results: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(rounds):
        for name, fn, m in runs:
            try:
                tps = decode_tps(fn, m, prompt, tokens)[1]
            except Exception as e:  # noqa: BLE001 (report, go on)
                print(f"  {name}: failed: {type(e).__name__}: {e}", flush=True)
                continue
            results[name].append(tps)
            print(f"  {name:22s} decode {tps:7.1f} tok/s ({nbytes / 1e9 * tps:6.0f} GB/s)",
                  flush=True)
    records.update({"shape": shape, "fmt": fmt, "weights_bytes": nbytes, "decode": results})


H200_BANDWIDTH = 4.8e12
"""Bytes/s of an H200's HBM3e (NVIDIA's figure): batch-1 decode reads every weight once per
token, so this over the weights read per token bounds tokens/s."""


def bytes_per_token(model, config: dict) -> int:
    """The weight bytes one decode token reads: all of them, but of a mixture of experts only
    ``num_experts_per_tok`` of ``num_local_experts`` routed experts (arrays with a leading
    experts axis: ``...experts.*``, ``...switch_mlp.*``; not a shared expert)."""
    text = config.get("text_config", config)
    active = text.get("num_experts_per_tok", 1) / text.get("num_local_experts", 1)
    total = 0.0
    for name, value in tree_flatten(model.parameters()):
        routed = ".experts." in name or ".switch_mlp." in name
        total += value.nbytes * (active if routed else 1.0)
    return int(total)


def table(records: dict, shape: str, fmt: str, rounds: int, tokens: int,
          prompt_tokens: int = 512, layers: int | None = None, fast: bool = False) -> None:
    """Decode tok/s of mlx-zoo (as ``load`` leaves it: fused, plain step) and mlx-lm on the same
    weights, alternated, with the share of the bandwidth bound (issue 17 item 3); ``fast`` adds
    mlx-zoo with ``use_fast_kernels``."""
    from mlx_lm.generate import generate_step as lm_generate_step

    config = shapes.FULL[shape]
    if layers:
        config = shapes.with_layers(config, layers)
    mx.random.seed(0)
    model = build(config, fmt)
    read = bytes_per_token(model, config)
    prompt = mx.random.randint(0, 1000, (prompt_tokens,)).astype(mx.uint32)
    runs = [("mlx-zoo", mlx_zoo.generate_step, model)]
    if fast:
        twin = _shallow_clone(model)
        print(f"  fast kernels on {kernels.use_fast_kernels(twin)} layers", flush=True)
        runs.append(("mlx-zoo fast", mlx_zoo.generate_step, twin))
    try:
        runs.append(("mlx-lm", lm_generate_step, mlx_lm_twin(config, model, fmt)))
    except Exception as e:  # noqa: BLE001 (report, measure mlx-zoo alone)
        print(f"  mlx-lm twin: failed: {type(e).__name__}: {e}", flush=True)
    results: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(rounds):
        for name, fn, m in runs:
            results[name].append(decode_tps(fn, m, prompt, tokens)[1])
    bound = H200_BANDWIDTH / read
    line = {name: round(sorted(v)[len(v) // 2], 1) for name, v in results.items()}
    print(f"  {shape} {fmt}: {read / 1e9:.2f} GB/token, bound {bound:.0f} tok/s; median "
          f"{line} ({ {n: f'{100 * v / bound:.0f}%' for n, v in line.items()} } of the bound); "
          f"all {results}", flush=True)
    records.update({"shape": shape, "fmt": fmt, "bytes_per_token": read, "bound": bound,
                    "decode": results})


SWEEP = [
    {},
    {"MLX_MAX_OPS_PER_BUFFER": "400"},
    {"MLX_MAX_OPS_PER_BUFFER": "2000", "MLX_MAX_MB_PER_BUFFER": "20000"},
    {"MLX_MAX_OPS_PER_BUFFER": "30"},
    {"MLX_USE_CUDA_GRAPHS": "0"},
]


def sweep(records: dict, shape: str, fmt: str, tokens: int, layers: int | None = None) -> None:
    records["sweep"] = []
    for env in SWEEP:
        cmd = [sys.executable, __file__, "decode", "--shape", shape, "--fmt", fmt, "--lite",
               "--rounds", "2", "--tokens", str(tokens), "--json", "-"]
        if layers:
            cmd += ["--layers", str(layers)]
        try:
            p = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                               timeout=120)
            out = json.loads(p.stdout.strip().splitlines()[-1])
        except Exception as e:  # noqa: BLE001
            print(f"  {env or 'defaults'}: failed: {e}", flush=True)
            continue
        rec = {"env": env, "step": out.get("step"), "decode": out.get("decode", {})}
        records["sweep"].append(rec)
        best = max(out.get("decode", {}).get("zoo plain", [0]))
        print(f"  {json.dumps(env) if env else 'defaults':70s} step {out['step']} "
              f"decode best {best:.1f} tok/s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("kernel", "decode", "sweep", "table"))
    p.add_argument("--shape", default="qwen2-0.5b")
    p.add_argument("--fmt", default="bf16", choices=("bf16", "4bit", "8bit"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--lite", action="store_true", help="plain step only (for the sweep)")
    p.add_argument("--layers", type=int, help="fewer layers (a quick check)")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--fast", action="store_true", help="table: add mlx-zoo + use_fast_kernels")
    p.add_argument("--no-compiled", action="store_true", help="decode: leave out compile_step")
    p.add_argument("--logits", help="decode: save the greedy logits here (.npy)")
    p.add_argument("--json", help="write the figures here ('-': last line of stdout)")
    args = p.parse_args()
    records: dict = {"mlx": mx.__version__, "device": str(mx.default_device()),
                     "cuda": cuda_qmv.on_cuda()}
    if not args.json == "-":
        print(json.dumps(records), flush=True)
    if not cuda_qmv.on_cuda() and not os.environ.get("PROBE_HOST_CPU_CHECK"):
        print("no CUDA default device: nothing to measure")
        return
    if args.what == "kernel":
        kernel(records)
    elif args.what == "decode":
        decode(records, args.shape, args.fmt, args.rounds, args.tokens, args.lite, args.layers,
               args.prompt_tokens, args.logits, args.no_compiled)
    elif args.what == "table":
        table(records, args.shape, args.fmt, args.rounds, args.tokens, args.prompt_tokens,
              args.layers, args.fast)
    else:
        sweep(records, args.shape, args.fmt, args.tokens, args.layers)
    if args.json == "-":
        print(json.dumps(records))
    elif args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
