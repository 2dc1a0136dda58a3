"""Which weight layout and grouping make batch-1 decode's matrix-vector products fastest?

A profiling probe (not the benchmark table). A decode step multiplies one activation row by every
weight matrix; how fast the backend's kernel streams a matrix depends on its layout and size. For
the projections of a shape (Qwen2-7B by default), with one copy per layer so that nothing stays in
cache, this times, each as a chain of ``layers`` products evaluated at once (as in a real step):

* ``x @ W.T`` with W stored (out, in) -- what ``nn.Linear`` does, the checkpoint layout;
* ``x @ Wt`` with Wt stored (in, out) contiguous -- the transposed layout;
* q/k/v and gate/up as separate products against one fused product of the stacked weights.

    python bench/probe_layout.py --shape qwen2-7b
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlx_zoo  # noqa: E402, F401, I001  (first: BLAS choice on Linux CPU)
import shapes  # noqa: E402
from probe_decode import timed  # noqa: E402

import mlx.core as mx  # noqa: E402

DTYPE = mx.bfloat16
INIT_STD = 0.02
REPEAT = 10  # timed evaluations of each chain


def weights(layers: int, out_dims: int, in_dims: int, transposed: bool) -> list[mx.array]:
    shape = (in_dims, out_dims) if transposed else (out_dims, in_dims)
    ws = [(mx.random.normal(shape) * INIT_STD).astype(DTYPE) for _ in range(layers)]
    mx.eval(ws)
    return ws


def chain(x: mx.array, ws: list[mx.array], transposed: bool) -> list[mx.array]:
    return [x @ w if transposed else x @ w.T for w in ws]


def report(name: str, seconds: float, nbytes: int, layers: int) -> None:
    per_layer_us, gb_per_s = seconds / layers * 1e6, nbytes / seconds / 1e9
    print(f"  {name:44s} {per_layer_us:8.1f} us/layer  {gb_per_s:7.1f} GB/s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen2-7b")
    p.add_argument("--layers", type=int, default=28)
    args = p.parse_args()
    c = shapes.FULL[args.shape]
    hidden, inter = c["hidden_size"], c["intermediate_size"]
    head_dim = hidden // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * head_dim
    n = args.layers
    print(f"mlx {mx.__version__} {mx.default_device()} shape {args.shape}, {n} layers")
    x = mx.random.normal((1, 1, hidden)).astype(DTYPE)
    xi = mx.random.normal((1, 1, inter)).astype(DTYPE)
    for name, out_dims, in_dims, inp in (("o_proj / q_proj", hidden, hidden, x),
                                         ("k_proj / v_proj", kv, hidden, x),
                                         ("gate_proj / up_proj", inter, hidden, x),
                                         ("down_proj", hidden, inter, xi)):
        for transposed in (False, True):
            ws = weights(n, out_dims, in_dims, transposed)
            s = timed(lambda ws=ws, t=transposed, inp=inp: chain(inp, ws, t), repeat=REPEAT)
            layout = "x @ Wt (in, out)" if transposed else "x @ W.T (out, in)"
            report(f"{name} {out_dims}x{in_dims} {layout}", s, sum(w.nbytes for w in ws), n)
            del ws
    # separate vs fused q/k/v and gate/up, checkpoint layout
    for name, parts in (("q, k, v", (hidden, kv, kv)), ("gate, up", (inter, inter))):
        sep = [weights(n, o, hidden, False) for o in parts]
        nbytes = sum(w.nbytes for ws in sep for w in ws)
        s = timed(lambda sep=sep: [x @ w.T for ws in sep for w in ws], repeat=REPEAT)
        report(f"{name} separate", s, nbytes, n)
        fused = [mx.concatenate([ws[i] for ws in sep], axis=0) for i in range(n)]
        del sep
        mx.eval(fused)
        s = timed(lambda fused=fused: chain(x, fused, False), repeat=REPEAT)
        report(f"{name} fused ({fused[0].shape[0]}x{hidden})", s, nbytes, n)
        del fused
        mx.clear_cache()


if __name__ == "__main__":
    main()
