"""The CUDA quantized matvec (mlx_zoo.kernels) against MLX's quantized_matmul, on the GPU.

* ``--ceiling``: the device-to-device bandwidth (``a * 2`` on 1 GiB: bytes read + written).
* matvec: for each projection shape of Qwen2-0.5B / Qwen2-7B (fused q/k/v and gate/up as
  ``mlx_zoo.load`` runs them) and an odd one, at M rows of x: GB/s of weights (packed weights +
  scales + biases) read per second by ``mlx_zoo.kernels`` and by ``mx.quantized_matmul``, and by
  a bf16 ``x @ W.T`` of the same shape. Each timing evaluates one graph of many products over
  distinct weight copies (more bytes than the L2 holds), median of repeats, so launch overhead is
  included, as in decode. ``--profile`` adds the kernels' own durations from CUPTI (through
  torch.profiler, in a child process) where that works.
* ``--e2e``: decode tok/s of a random 4-bit (group 64) Qwen2-7B checkpoint written with
  ``mlx_zoo.save``: ``mlx_zoo.load`` (fused) with and without ``use_fast_kernels``, and mlx-lm
  (``mlx_lm.utils.load_model``) with and without, alternated.

    python bench/bench_qmv.py --json out.json --e2e
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlx_zoo  # noqa: E402, I001
import shapes  # noqa: E402

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from mlx_zoo import kernels  # noqa: E402
from mlx_zoo.kernels import cuda_qmv  # noqa: E402

MATVEC_SHAPES = [  # (name, out, in)
    ("0.5B q/o", 896, 896), ("0.5B qkv (fused)", 1152, 896), ("0.5B gate_up (fused)", 9728, 896),
    ("0.5B down", 896, 4864), ("7B q/o", 3584, 3584), ("7B qkv (fused)", 4608, 3584),
    ("7B gate_up (fused)", 37888, 3584), ("7B down", 3584, 18944), ("7B lm_head", 152064, 3584),
    ("odd 1000x2880", 1000, 2880),
]
TARGET_BYTES = 384 << 20  # per timed graph: several times the L2 (50 MB on H100/H200)


def median_time(fn, repeat: int = 9, warmup: int = 2) -> float:
    for _ in range(warmup):
        mx.eval(fn())
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ceiling() -> float:
    a = mx.random.uniform(shape=(1 << 28,))
    mx.eval(a)
    t = median_time(lambda: a * 2.0, repeat=15)
    return 2 * a.nbytes / t / 1e9


def copies_of(arrays: list[mx.array], nbytes: int) -> list[list[mx.array]]:
    count = max(2, min(256, math.ceil(TARGET_BYTES / nbytes)))
    out = [arrays] + [[a + mx.array(0, a.dtype) for a in arrays] for _ in range(count - 1)]
    mx.eval(out)
    return out


def matvec(rows: list[int], quants: list[tuple[int, int]], records: list) -> None:
    for name, n, k in MATVEC_SHAPES:
        dense = (mx.random.normal((n, k)) * 0.02).astype(mx.bfloat16)
        mx.eval(dense)
        for m in rows:
            x = (mx.random.normal((m, k)) + 0.1).astype(mx.bfloat16)
            mx.eval(x)
            for bits, gs in quants:
                if k % gs:
                    continue
                q = list(mx.quantize(dense, group_size=gs, bits=bits))
                nbytes = sum(a.nbytes for a in q)
                sets = copies_of(q, nbytes)
                ours = median_time(lambda x=x, s=sets, g=gs, b=bits: [
                    cuda_qmv.qmv(x, *c, g, b) for c in s])
                theirs = median_time(lambda x=x, s=sets, g=gs, b=bits: [mx.quantized_matmul(
                    x, *c, transpose=True, group_size=g, bits=b) for c in s])
                ours, theirs = ours / len(sets), theirs / len(sets)
                rec = {"shape": name, "n": n, "k": k, "m": m, "bits": bits, "group_size": gs,
                       "bytes": nbytes, "copies": len(sets),
                       "ours_us": ours * 1e6, "mlx_us": theirs * 1e6,
                       "ours_gbs": nbytes / ours / 1e9, "mlx_gbs": nbytes / theirs / 1e9}
                records.append(rec)
                print(f"  {name:22s} m={m} {bits}-bit g{gs:<3d} {nbytes / 1e6:8.1f} MB  "
                      f"ours {rec['ours_us']:8.1f} us {rec['ours_gbs']:7.0f} GB/s   "
                      f"mlx {rec['mlx_us']:8.1f} us {rec['mlx_gbs']:7.0f} GB/s   "
                      f"x{theirs / ours:5.2f}", flush=True)
                del sets, q
            if m == 1:
                sets = copies_of([dense], dense.nbytes)
                t = median_time(lambda x=x, s=sets: [x @ c[0].T for c in s]) / len(sets)
                records.append({"shape": name, "n": n, "k": k, "m": m, "bits": 16,
                                "bytes": dense.nbytes, "bf16_us": t * 1e6,
                                "bf16_gbs": dense.nbytes / t / 1e9})
                print(f"  {name:22s} m={m} bf16       {dense.nbytes / 1e6:8.1f} MB  "
                      f"x @ W.T {t * 1e6:8.1f} us {dense.nbytes / t / 1e9:7.0f} GB/s", flush=True)
                del sets
        del dense
        mx.clear_cache()


PROFILE_CHILD = r"""
import sys, json, mlx.core as mx
sys.path.insert(0, "bench")
from mlx_zoo.kernels import cuda_qmv
import torch
from torch.profiler import profile, ProfilerActivity
res = {}
for name, n, k in [("7B q/o", 3584, 3584), ("7B gate_up (fused)", 37888, 3584),
                   ("7B down", 3584, 18944), ("7B lm_head", 152064, 3584), ("0.5B q/o", 896, 896)]:
    w = (mx.random.normal((n, k)) * 0.02).astype(mx.bfloat16)
    x = mx.random.normal((1, k)).astype(mx.bfloat16)
    q = mx.quantize(w, group_size=64, bits=4)
    nbytes = sum(a.nbytes for a in q)
    mx.eval(x, *q)
    for _ in range(3):
        mx.eval(cuda_qmv.qmv(x, *q, 64, 4),
                mx.quantized_matmul(x, *q, transpose=True, group_size=64, bits=4))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            mx.eval(cuda_qmv.qmv(x, *q, 64, 4))
            mx.eval(mx.quantized_matmul(x, *q, transpose=True, group_size=64, bits=4))
    per = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            per.setdefault(e.name, []).append(
                getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0))
    res[name] = {"bytes": nbytes,
                 "kernels": {k2: sorted(v)[len(v) // 2] for k2, v in per.items() if len(v) >= 10}}
print("PROFILE " + json.dumps(res))
"""


def profile() -> dict | None:
    try:
        out = subprocess.run([sys.executable, "-c", PROFILE_CHILD], capture_output=True,
                             text=True, timeout=180)
    except subprocess.TimeoutExpired:
        print("  profile: timed out")
        return None
    for line in out.stdout.splitlines():
        if line.startswith("PROFILE "):
            res = json.loads(line[8:])
            for name, r in res.items():
                for kname, us in r["kernels"].items():
                    print(f"  {name:22s} {kname[:60]:60s} {us:8.1f} us "
                          f"{r['bytes'] / (us * 1e-6) / 1e9 if us else 0:7.0f} GB/s")
            return res
    print("  profile: no result;", (out.stderr or "")[-800:])
    return None


# -- end to end -----------------------------------------------------------------------------------


def decode_tps(step_fn, model, prompt, tokens: int) -> tuple[float, float, list[int]]:
    for _ in step_fn(prompt, model, max_tokens=4):
        pass
    times, toks = [], []
    start = time.perf_counter()
    for tok, _ in step_fn(prompt, model, max_tokens=tokens):
        times.append(time.perf_counter())
        toks.append(int(tok))
    return prompt.size / (times[0] - start), (len(times) - 1) / (times[-1] - times[0]), toks


def e2e(records: dict, prompt_tokens: int, gen_tokens: int, rounds: int) -> None:
    from mlx_lm.generate import generate_step as lm_generate_step
    from mlx_lm.utils import load_model as lm_load_model

    from mlx_zoo import registry

    config = shapes.FULL["qwen2-7b"]
    workdir = Path(tempfile.mkdtemp(prefix="qmv-e2e-"))
    path = workdir / "qwen2-7b-4bit"
    t0 = time.perf_counter()
    arch = registry.resolve("qwen2")
    args = arch.config_class.from_dict(dict(config), path)
    model = arch.model_class(args)
    model.set_dtype(mx.bfloat16)
    mlx_zoo.quantize(model, args, bits=4, group_size=64)
    mx.eval(model.parameters())
    mlx_zoo.save(model, args, path)
    del model
    mx.clear_cache()
    print(f"  wrote {path} in {time.perf_counter() - t0:.1f} s", flush=True)

    zoo, _ = mlx_zoo.load(path)  # fused, stored dtypes on the GPU
    zoo_fast, _ = mlx_zoo.load(path)
    n_zoo = kernels.use_fast_kernels(zoo_fast)
    lm, _ = lm_load_model(path)
    lm_fast, _ = lm_load_model(path)
    n_lm = kernels.use_fast_kernels(lm_fast)
    nbytes = sum(v.nbytes for _, v in tree_flatten(zoo.parameters()))
    print(f"  weights {nbytes / 1e9:.2f} GB; use_fast_kernels switched {n_zoo} layers (mlx-zoo), "
          f"{n_lm} (mlx-lm)", flush=True)
    prompt = mx.random.randint(0, config["vocab_size"], (prompt_tokens,)).astype(mx.uint32)
    plain = partial(mlx_zoo.generate_step, compile_step=False)
    compiled = partial(mlx_zoo.generate_step, compile_step=True)
    runs = [("mlx-zoo", plain, zoo),
            ("mlx-zoo + use_fast_kernels", plain, zoo_fast),
            ("mlx-zoo compiled step", compiled, zoo),
            ("mlx-zoo compiled + fast", compiled, zoo_fast),
            ("mlx-lm", lm_generate_step, lm),
            ("mlx-lm + use_fast_kernels", lm_generate_step, lm_fast)]
    results: dict[str, list] = {name: [] for name, _, _ in runs}
    tokens: dict[str, list[int]] = {}
    for _ in range(rounds):
        for name, fn, m in runs:
            try:
                pre, dec, toks = decode_tps(fn, m, prompt, gen_tokens)
            except Exception as e:  # noqa: BLE001 (report, go on with the others)
                print(f"  {name}: failed: {type(e).__name__}: {e}", flush=True)
                continue
            tokens[name] = toks
            results[name].append((pre, dec))
            print(f"  {name:28s} prefill {pre:8.1f} tok/s  decode {dec:7.1f} tok/s  "
                  f"({nbytes / 1e9 * dec:.0f} GB/s of weights)", flush=True)
    base = tokens.get("mlx-zoo", [])
    for name, toks in tokens.items():
        same = sum(a == b for a, b in zip(base, toks, strict=False))
        print(f"  greedy tokens equal to mlx-zoo's: {name}: {same}/{len(base)}")
    records.update({"weights_bytes": nbytes, "prompt_tokens": prompt_tokens,
                    "gen_tokens": gen_tokens, "runs": results,
                    "switched": {"mlx-zoo": n_zoo, "mlx-lm": n_lm}})
    print("  best decode tok/s: " + ", ".join(
        f"{k} {max(d for _, d in v):.1f}" for k, v in results.items() if v))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--rows", default="1", help="rows of x for the matvec table, e.g. 1,4,8")
    p.add_argument("--quants", default="4:64,4:128,8:64", help="bits:group_size list")
    p.add_argument("--no-matvec", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--e2e", action="store_true")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    info = {"mlx": mx.__version__, "device": str(mx.default_device()),
            "device_info": {k: str(v) for k, v in mx.device_info().items()},
            "cuda": cuda_qmv.on_cuda(), "date": "2026-11-28"}
    print(json.dumps(info))
    if not cuda_qmv.on_cuda():
        print("no CUDA default device: nothing to measure")
        return
    out: dict = {"env": info}
    out["ceiling_gbs"] = ceiling()
    print(f"copy ceiling (a * 2, 1 GiB float32, read + write): {out['ceiling_gbs']:.0f} GB/s")
    if args.profile:
        out["profile"] = profile()
    if not args.no_matvec:
        out["matvec"] = []
        quants = [tuple(int(v) for v in q.split(":")) for q in args.quants.split(",")]
        matvec([int(r) for r in args.rows.split(",")], quants, out["matvec"])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if args.e2e:
        out["e2e"] = {}
        e2e(out["e2e"], args.prompt_tokens, args.gen_tokens, args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
