"""One device vs pipeline vs tensor parallelism on Qwen2 shapes (random weights): prefill and
decode tokens/s, per-rank peak memory, build/load time, a tensor-parallel latency-bound profile,
and a model larger than one device's memory run as a 2-stage pipeline.

    # two GPUs of one host (NCCL); after `source .gpu2/setup.sh` (mlx + this repo on PYTHONPATH):
    python3 bench/bench_parallel.py --out "$OUT" --backend nccl
    # CPU dry run (tiny shapes, every code path the GPU run takes; ring backend over loopback):
    .venv/bin/python bench/bench_parallel.py --out /tmp/bench_parallel_dry --backend ring --dry-run
    # CPU: why ring-backend decode on one host was slow (busy-polling + BLAS threads):
    .venv/bin/python bench/bench_parallel.py --out /tmp/bench_parallel_probe --backend ring \
        --cpu-probe

No ``mlx.launch`` needed: the driver starts each rank itself with the environment ``mlx.launch``
would set (MLX 0.32.4 ``mlx/_distributed_utils/launch.py``): NCCL -- ``MLX_RANK``,
``MLX_WORLD_SIZE``, ``NCCL_HOST_IP``, ``NCCL_PORT`` and ``CUDA_VISIBLE_DEVICES=<rank>`` (so each
rank sees exactly one GPU, as device 0); ring -- ``MLX_RANK`` and ``MLX_HOSTFILE`` (a JSON list
of ``ip:port`` per rank). That way every step has its own timeout and a hung rank is killed
with its peers. The 1-device baseline is one process (``CUDA_VISIBLE_DEVICES=0``).

Steps, most important first (each in fresh processes, so each peak is its own; each with a
timeout; a step is skipped when the remaining ``--budget`` is too small for it; if a
multi-process step fails before its group forms, the later ones are skipped). Measured on 2x H200
(2026-11-28): the whole run took 97 s (``bench/results/parallel_nccl_2xh200_2026-11-28.json``);
only the first 8 files under ``--out`` may come back from a device run: ``bench_parallel.log``,
``results.json`` and ``summary.md`` hold everything.

1. ``7b-single``, ``7b-pipeline``, ``7b-tensor``: Qwen2-7B shape (hidden 3584, 28 layers, 28/4
   heads, intermediate 18944, vocab 152064, untied, bf16). Prefill tok/s (one forward pass of
   ``--prompt`` tokens into fresh caches), decode tok/s (``generate_step``, greedy, batch 1, what
   ``mlx-zoo generate`` runs; the pipeline also with the token broadcast ``--parallel pipeline``
   uses), a bare forward-step loop (``model(token, cache)``), per-rank ``mx.get_peak_memory``
   after building and after the run, build time. The 7B tensor step also runs the
   **tensor-parallel bound profile**: the same decode step with every all_sum replaced by the
   identity (compute only, per rank), the latency of one all_sum of a ``(1, 1, hidden)`` bf16
   activation (a chain of dependent all_sums, evaluated once), and
   ``bound = compute + n_all_sums * latency`` next to the measured step; the pipeline step times
   its transfer primitives (send/recv vs all_sum).
2. ``32b-*``: the same on the Qwen2.5-32B shape (hidden 5120, 64 layers, 40/8 heads,
   intermediate 27648, vocab 152064, bf16, ~65.5 GB: fits one 80 GB card).
3. ``big-pipeline``: the 32B layer shape with as many layers as make the model ~1.2x one
   device's memory (from ``mx.device_info()``), run as a 2-stage pipeline: each rank holds ~0.6x.
4. ``ckpt-*`` (only when time is left): the 7B shape written once to ``--ckpt-dir`` (15 GB
   safetensors) and loaded through ``mlx_zoo.load(path, parallel=...)`` -- the real sharded
   loading path: load time and per-rank peak during load, then a short prefill/decode.

"Built in memory" follows ``load(parallel=...)`` (``mlx_zoo.loading.load_distributed``) step by
step with the weights' source swapped: the plugin's model class is instantiated (MLX initialises
parameters lazily: nothing is computed yet), cast to bf16 and fused (single, pipeline) lazily,
split (``mlx_zoo.pipeline.pipeline`` / the plugin's ``shard``), then evaluated layer by layer --
each rank materialises only its own stage/shard (plus, transiently, one layer's full float32
init when a shard is a slice of it).

Output under ``--out``: ``bench_parallel.log`` (every progress line, timestamped),
``results.json`` (rewritten after each step), ``steps/<step>.rank<r>.log`` / ``.json`` (each
rank's own output and result, written as it goes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "7b": dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
               vocab_size=152064, tie_word_embeddings=False, max_position_embeddings=32768,
               rope_theta=1000000.0, rms_norm_eps=1e-6),
    "32b": dict(model_type="qwen2", hidden_size=5120, num_hidden_layers=64,
                num_attention_heads=40, num_key_value_heads=8, intermediate_size=27648,
                vocab_size=152064, tie_word_embeddings=False, max_position_embeddings=32768,
                rope_theta=1000000.0, rms_norm_eps=1e-5),
}
TINY = {  # --dry-run: same structure, tiny sizes (heads and kv heads divisible by 2)
    "7b": dict(SHAPES["7b"], hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=256, vocab_size=1024),
    "32b": dict(SHAPES["32b"], hidden_size=160, num_hidden_layers=6, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=320, vocab_size=1024),
}
RESULT_PREFIX = "BENCH_RESULT "
T0 = time.time()


def log(msg: str, fh=None) -> None:
    line = f"[{time.strftime('%H:%M:%S', time.gmtime())} +{time.time() - T0:6.1f}s] {msg}"
    print(line, flush=True)
    if fh is not None:
        fh.write(line + "\n")
        fh.flush()


def param_bytes(shape: dict, layers: int | None = None, dtype_bytes: int = 2) -> int:
    h, i, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    hd = h // shape["num_attention_heads"]
    q, kv = shape["num_attention_heads"] * hd, shape["num_key_value_heads"] * hd
    layer = h * q + q + 2 * (h * kv + kv) + q * h + 3 * h * i + 2 * h
    ends = v * h * (1 if shape.get("tie_word_embeddings") else 2) + h
    n = shape["num_hidden_layers"] if layers is None else layers
    return (n * layer + ends) * dtype_bytes


def layer_bytes(shape: dict) -> int:
    return param_bytes(shape, 1) - param_bytes(shape, 0)


# -- worker: one rank ---------------------------------------------------------------------------


class Worker:
    def __init__(self, spec: dict):
        self.spec = spec
        self.rank = int(os.environ.get("MLX_RANK", "0"))
        self.result: dict = {"step": spec["step"], "mode": spec["mode"], "rank": self.rank}
        self.json_path = Path(spec["out"]) / "steps" / f"{spec['step']}.rank{self.rank}.json"

    def log(self, msg: str) -> None:
        log(f"{self.spec['step']} rank {self.rank}: {msg}")

    def save(self) -> None:
        self.json_path.write_text(json.dumps(self.result, indent=1))

    def record(self, **values) -> None:
        self.result.update(values)
        self.save()


def mem_gb() -> float:
    import mlx.core as mx

    return round(mx.get_peak_memory() / 1e9, 3)


def build_random(shape: dict, mode: str, group, dtype: str = "bfloat16"):
    """The model of ``shape`` with random bf16 weights, as ``load(..., parallel=mode)`` would
    hold it on this rank (see the module docstring): lazy init, cast, fuse (not for tensor),
    split, evaluate layer by layer."""
    import mlx.core as mx

    from mlx_zoo import registry
    from mlx_zoo.fusion import fuse_projections
    from mlx_zoo.loading import _evaluate_by_parts
    from mlx_zoo.pipeline import check_parallel, pipeline, same_random_state, share_host_cpus

    arch = registry.resolve(shape["model_type"])
    config = arch.config_class.from_dict(dict(shape), Path("<random>/config.json"))
    if mode != "single":
        check_parallel(mode, group.size(), config)
        share_host_cpus(group)  # as load(parallel=...) does
    mx.random.seed(1234)  # same weights on every rank: the shards of one model
    model = arch.model_class(config)  # parameters are lazy random arrays: nothing computed yet
    model.set_dtype(getattr(mx, dtype))
    if mode != "tensor":
        fuse_projections(model)  # load()'s default fuse=True (lazy; tensor: after sharding)
    if mode == "pipeline":
        model = pipeline(model, group)
    elif mode == "tensor":
        model.shard(group)
        fuse_projections(model)  # each rank's q/k/v and gate/up shards, as load() does
        same_random_state(group)
    _evaluate_by_parts(model)
    model.eval()
    return model, config


def held_gb(model) -> float:
    from mlx.utils import tree_flatten

    return round(sum(v.nbytes for _, v in tree_flatten(model.parameters())) / 1e9, 3)


def timed_forward_steps(model, steps: int, prompt) -> float:
    """Seconds per bare decode step: ``model(token, cache)`` evaluated each step, after a
    16-token prefill into fresh caches."""
    import mlx.core as mx

    from mlx_zoo import make_prompt_cache

    cache = make_prompt_cache(model)
    logits = model(prompt[None, :16], cache=cache)
    mx.eval(logits, [c.state for c in cache])
    token = mx.array([[1]], dtype=mx.uint32)
    for _ in range(3):
        mx.eval(model(token, cache=cache))
    start = time.perf_counter()
    for _ in range(steps):
        mx.eval(model(token, cache=cache))
    return (time.perf_counter() - start) / steps


def timed_prefill(model, prompt, repeats: int = 2) -> float:
    """Seconds for the prompt into fresh caches, caches evaluated (no output head), best of
    ``repeats`` after one warm-up."""
    import mlx.core as mx

    from mlx_zoo import make_prompt_cache

    best = float("inf")
    for i in range(repeats + 1):
        cache = make_prompt_cache(model)
        start = time.perf_counter()
        model(prompt[None], cache=cache)
        mx.eval([c.state for c in cache])
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def compute_only(model, on: bool) -> int:
    """Swap every ``ShardedToAllLinear`` of ``model`` to (``on``) / back from a subclass whose
    forward skips the all_sum; returns how many there are (the all_sums per forward pass)."""
    import mlx.core as mx
    from mlx.nn.layers.distributed import ShardedToAllLinear

    class LocalLinear(ShardedToAllLinear):
        def __call__(self, x: mx.array) -> mx.array:
            x = x @ self["weight"].T
            return x + self["bias"] if "bias" in self else x

    count = 0
    for _, module in model.named_modules():
        if isinstance(module, ShardedToAllLinear):
            count += 1
            module.__class__ = LocalLinear if on else ShardedToAllLinear
    return count


def allsum_latency(group, hidden: int, dtype, repeats: int, tokens: int = 1) -> dict:
    """Microseconds per all_sum of a (1, tokens, hidden) activation: a chain of ``repeats``
    dependent all_sums evaluated once (what a forward pass's graph looks like), and one
    all_sum evaluated per call (adds the eval round trip)."""
    import mlx.core as mx

    x = mx.ones((1, tokens, hidden), dtype=dtype)
    mx.eval(mx.distributed.all_sum(x, group=group))
    out = {}
    for _ in range(2):  # second pass measured
        start = time.perf_counter()
        y = x
        for _ in range(repeats):
            y = mx.distributed.all_sum(y, group=group) * 0.5
        mx.eval(y)
        out["allsum_chained_us"] = round((time.perf_counter() - start) / repeats * 1e6, 1)
    start = time.perf_counter()
    for _ in range(repeats):
        mx.eval(mx.distributed.all_sum(x, group=group))
    out["allsum_eval_each_us"] = round((time.perf_counter() - start) / repeats * 1e6, 1)
    return out


def sendrecv_latency(group, hidden: int, dtype, repeats: int) -> dict:
    """Microseconds per one-way (1, 1, hidden) activation transfer, from a send/recv ping-pong
    (half a round trip)."""
    import mlx.core as mx

    rank = group.rank()
    x = mx.ones((1, 1, hidden), dtype=dtype)
    mx.eval(mx.distributed.all_sum(mx.zeros(1), group=group))
    start = time.perf_counter()
    for _ in range(repeats):
        if rank == 0:
            mx.eval(mx.distributed.send(x, 1, group=group))
            mx.eval(mx.distributed.recv_like(x, 1, group=group))
        elif rank == 1:
            mx.eval(mx.distributed.recv_like(x, 0, group=group))
            mx.eval(mx.distributed.send(x, 0, group=group))
    return {"sendrecv_oneway_us": round((time.perf_counter() - start) / (2 * repeats) * 1e6, 1)}


def measure(w: Worker, model, config, group, spec: dict) -> None:
    import mlx.core as mx
    import numpy as np

    import mlx_zoo
    from mlx_zoo.generate import generate_step

    mode = spec["mode"]
    vocab = int(config.vocab_size)
    rng = np.random.default_rng(0)
    prompt = mx.array(rng.integers(0, vocab, (spec["prompt"],)), dtype=mx.uint32)

    # prefill as `generate` runs it (what a user waits for before the first token): the prompt
    # in `generate_step`'s chunks into fresh caches, evaluating the caches only (no output head
    # over the prompt's positions), then the last token's logits and the greedy first token (the
    # pipeline: drawn on the last rank and broadcast, as `generate --parallel` does, so every
    # rank's clock stops when the whole pipeline is done)
    greedy = mlx_zoo.make_sampler(0.0)
    if mode == "pipeline":
        model.broadcast = "token"
        greedy = model.sampler(greedy)
    mx.reset_peak_memory()
    times = []
    for i in range(spec["prefill_repeats"]):
        start = time.perf_counter()
        steps = generate_step(prompt, model, max_tokens=1, sampler=greedy)
        next(steps)
        times.append(round(time.perf_counter() - start, 4))
        steps.close()
        w.log(f"prefill {spec['prompt']} tokens #{i}: {times[-1]:.3f} s")
    if mode == "pipeline":
        model.broadcast = "logits"
    w.record(prefill_tokens=spec["prompt"], prefill_s=times,
             prefill_tps=round(spec["prompt"] / min(times), 1),
             prefill_peak_gb=mem_gb())

    def decode(sampler=None) -> tuple[float, list]:
        rates = []
        for _ in range(spec["decode_repeats"]):
            steps = generate_step(prompt[:16], model, max_tokens=spec["decode"] + 1,
                                  sampler=sampler)
            next(steps)  # the prompt
            start = time.perf_counter()
            n = sum(1 for _ in steps)
            rates.append(round(n / (time.perf_counter() - start), 2))
        return max(rates), rates

    mx.reset_peak_memory()
    best, rates = decode()
    w.log(f"decode {spec['decode']} tokens: {rates} tok/s")
    w.record(decode_tokens=spec["decode"], decode_tps=best, decode_tps_all=rates,
             decode_peak_gb=mem_gb())
    if mode == "pipeline":
        model.broadcast = "token"
        best, rates = decode(model.sampler(mlx_zoo.make_sampler(0.0)))
        model.broadcast = "logits"
        w.log(f"decode (token broadcast) {spec['decode']} tokens: {rates} tok/s")
        w.record(decode_token_bcast_tps=best, decode_token_bcast_tps_all=rates)
    step = timed_forward_steps(model, spec["forward_steps"], prompt)
    w.log(f"bare forward step: {step * 1e3:.2f} ms")
    w.record(forward_step_ms=round(step * 1e3, 3))

    hidden = int(config.hidden_size)
    if mode == "pipeline" and spec.get("comm"):
        if model.transfer == "send":  # NCCL has no send/recv (MLX 0.32): all_sum there
            w.record(**sendrecv_latency(group, hidden, mx.bfloat16, spec["comm_repeats"]))
        w.record(**{f"pp_{k}": v for k, v in allsum_latency(
            group, hidden, mx.bfloat16, spec["comm_repeats"]).items()})
        w.log(f"comm: {w.result}")
    if mode == "tensor" and spec.get("tp_profile"):
        n = compute_only(model, True)
        try:
            compute = timed_forward_steps(model, spec["forward_steps"], prompt)
        finally:
            compute_only(model, False)
        lat = allsum_latency(group, hidden, mx.bfloat16, spec["comm_repeats"])
        bound_ms = compute * 1e3 + n * lat["allsum_chained_us"] / 1e3
        w.record(tp_allsums_per_step=n, tp_compute_only_step_ms=round(compute * 1e3, 3),
                 **{f"tp_{k}": v for k, v in lat.items()},
                 tp_bound_step_ms=round(bound_ms, 3),
                 tp_measured_step_ms=round(step * 1e3, 3),
                 tp_measured_decode_ms=round(1e3 / w.result["decode_tps"], 3))
        w.log(f"TP profile: compute-only {compute * 1e3:.2f} ms + {n} x "
              f"{lat['allsum_chained_us']} us all_sum = bound {bound_ms:.2f} ms; measured "
              f"step {step * 1e3:.2f} ms, decode {1e3 / w.result['decode_tps']:.2f} ms/token")
        # the same for prefill: the prompt's forward pass (caches evaluated, no head) with and
        # without the all_sums, and one all_sum of the prompt's (1, tokens, hidden) activation
        with_sums = timed_prefill(model, prompt)
        compute_only(model, True)
        try:
            alone = timed_prefill(model, prompt)
        finally:
            compute_only(model, False)
        plat = allsum_latency(group, hidden, mx.bfloat16, 8, tokens=prompt.size)
        pbound = alone * 1e3 + n * plat["allsum_chained_us"] / 1e3
        w.record(tp_prefill_ms=round(with_sums * 1e3, 2),
                 tp_prefill_compute_only_ms=round(alone * 1e3, 2),
                 tp_prefill_allsum_chained_us=plat["allsum_chained_us"],
                 tp_prefill_bound_ms=round(pbound, 2))
        w.log(f"TP prefill profile ({prompt.size} tokens): compute-only {alone * 1e3:.2f} ms + "
              f"{n} x {plat['allsum_chained_us']} us all_sum = bound {pbound:.2f} ms; measured "
              f"{with_sums * 1e3:.2f} ms")
    if mode == "single" and spec.get("tp_profile"):
        w.record(single_prefill_ms=round(timed_prefill(model, prompt) * 1e3, 2))


def device_memory_bytes() -> int | None:
    import mlx.core as mx

    info = mx.device_info()
    for key in ("memory_size", "total_memory", "memory"):
        if isinstance(info.get(key), int) and info[key] > 2**30:
            return int(info[key])
    return None


def worker(spec: dict) -> None:
    import mlx_zoo  # noqa: I001 (before mlx.core: the fast BLAS on the Linux CPU)

    import mlx.core as mx

    w = Worker(spec)
    mode = spec["mode"]
    if mx.default_device() == mx.gpu:
        # freed init temporaries (one layer's float32) would otherwise sit in MLX's buffer cache
        mx.set_cache_limit(4 * 2**30)
    group = None
    if mode != "single":
        group = mx.distributed.init(strict=True, backend=spec["backend"])
        w.log(f"group of {group.size()} ({spec['backend']}), device {mx.default_device()}")
        mx.eval(mx.distributed.all_sum(mx.ones(1), group=group))  # connect now
    w.record(size=group.size() if group else 1, device=str(mx.default_device()),
             device_info={k: str(v) for k, v in mx.device_info().items()})
    shape = dict(spec["shape"])
    if spec.get("big"):
        memory = spec.get("device_memory") or device_memory_bytes() or 80 * 10**9
        ends = param_bytes(shape, 0)
        layers = math.ceil((spec["big"] * memory - ends) / layer_bytes(shape))
        shape["num_hidden_layers"] = layers
        w.record(device_memory_gb=round(memory / 1e9, 2), big_factor=spec["big"])
    total = param_bytes(shape)
    w.record(layers=shape["num_hidden_layers"], model_gb=round(total / 1e9, 3))
    w.log(f"{shape['num_hidden_layers']} layers, {total / 1e9:.2f} GB of bf16 weights in all")

    mx.reset_peak_memory()
    start = time.perf_counter()
    if spec.get("save") and (Path(spec["save"]) / "config.json").exists():
        w.record(saved=spec["save"], reused=True)
        w.log(f"checkpoint {spec['save']} already there: reused")
        print(RESULT_PREFIX + json.dumps(w.result), flush=True)
        return
    if spec.get("save"):  # write the checkpoint (one process)
        from mlx_zoo import save

        model, config = build_random(shape, "single", None)
        build = time.perf_counter() - start
        save(model, config, spec["save"])
        w.record(build_s=round(build, 2), save_s=round(time.perf_counter() - start - build, 2),
                 saved=spec["save"])
        w.log(f"checkpoint written to {spec['save']} in {w.result['save_s']} s")
        print(RESULT_PREFIX + json.dumps(w.result), flush=True)
        return
    if spec.get("checkpoint"):
        parallel = None if mode == "single" else mode
        model, config = mlx_zoo.load(spec["checkpoint"], parallel=parallel, group=group)
        w.record(load_s=round(time.perf_counter() - start, 2), load_peak_gb=mem_gb())
    else:
        model, config = build_random(shape, mode, group, spec.get("dtype", "bfloat16"))
        w.record(build_s=round(time.perf_counter() - start, 2), build_peak_gb=mem_gb())
    w.record(weights_held_gb=held_gb(model), active_gb=round(mx.get_active_memory() / 1e9, 3))
    if mode == "pipeline":
        w.record(stages=model.stages, transfer=model.transfer)
    w.log(f"model ready: {w.result}")
    measure(w, model, config, group, spec)
    if group is not None:
        mx.eval(mx.distributed.all_sum(mx.ones(1), group=group))  # leave together
    w.log("done")
    print(RESULT_PREFIX + json.dumps(w.result), flush=True)


# -- the ring backend on one CPU host: where a rank's time goes (docs/benchmarks.md, "Parallel") --

PROBE_SHAPE = dict(model_type="llama", hidden_size=1024, num_hidden_layers=8,
                   num_attention_heads=16, num_key_value_heads=4, intermediate_size=2816,
                   vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=4096)


def cpu_probe_worker() -> None:
    """Run under 2 ring ranks (``--cpu-probe`` starts them): the CPU a rank burns while it waits
    in a collective (busy-polling), an all_sum's latency alone and after compute, then decode
    tok/s of the pipeline and tensor modes of a float32 Llama shape built in memory."""
    import mlx_zoo  # noqa: I001 (before mlx.core: the fast BLAS on the Linux CPU)

    import mlx.core as mx
    from mlx_zoo.generate import generate_step

    group = mx.distributed.init(strict=True, backend="ring")
    rank = group.rank()
    tag = (f"rank={rank} share_cpus={os.environ.get('MLX_ZOO_SHARE_CPUS', '1')} "
           f"openblas_threads={os.environ.get('OPENBLAS_NUM_THREADS', 'default')}")

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    out = {}
    model, config = build_random(PROBE_SHAPE, "pipeline", group, dtype="float32")  # shares CPUs
    x = mx.ones((1, 1, 1024))
    mx.eval(mx.distributed.all_sum(x, group=group))
    c, t = cpu(), time.perf_counter()
    if rank == 1:
        time.sleep(2.0)
    mx.eval(mx.distributed.all_sum(x, group=group))
    out["wait_2s_in_all_sum_cpu_s"] = round(cpu() - c, 2)
    out["wait_wall_s"] = round(time.perf_counter() - t, 2)
    for _ in range(20):
        mx.eval(mx.distributed.all_sum(x, group=group))
    t = time.perf_counter()
    for _ in range(200):
        mx.eval(mx.distributed.all_sum(x, group=group))
    out["all_sum_alone_us"] = round((time.perf_counter() - t) / 200 * 1e6)
    weight, v = mx.random.normal((4096, 4096)), mx.random.normal((1, 4096))
    mx.eval(weight, v)

    def compute():
        y = v
        for _ in range(8):
            y = (y @ weight) * 1e-2
        return y

    for _ in range(3):
        mx.eval(compute())
    t = time.perf_counter()
    for _ in range(20):
        mx.eval(compute())
    alone = (time.perf_counter() - t) / 20
    t = time.perf_counter()
    for _ in range(20):
        mx.eval(mx.distributed.all_sum(compute(), group=group))
    both = (time.perf_counter() - t) / 20
    out.update(compute_ms=round(alone * 1e3, 1), compute_then_all_sum_ms=round(both * 1e3, 1))
    prompt = mx.array(list(range(1, 17)), dtype=mx.uint32)
    for mode in ("pipeline", "tensor"):
        if mode == "tensor":
            del model
            model, config = build_random(PROBE_SHAPE, "tensor", group, dtype="float32")
        sampler = None
        if mode == "pipeline":
            model.broadcast = "token"
            sampler = model.sampler(mlx_zoo.make_sampler(0.0))
        best = 0.0
        for _ in range(2):
            steps = generate_step(prompt, model, max_tokens=25, sampler=sampler)
            next(steps)
            t = time.perf_counter()
            best = max(best, sum(1 for _ in steps) / (time.perf_counter() - t))
        out[f"{mode}_decode_tps"] = round(best, 1)
    print(RESULT_PREFIX + json.dumps(dict(out, tag=tag)), flush=True)
    log(f"cpu-probe {tag}: {out}")


# -- driver -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = args.out
        (self.out / "steps").mkdir(parents=True, exist_ok=True)
        self.logf = open(self.out / "bench_parallel.log", "a")
        self.deadline = time.time() + args.budget
        self.group_broken = False  # a multi-process step failed before its group formed
        self.results: dict = {"meta": {
            "argv": sys.argv, "backend": args.backend, "dry_run": args.dry_run,
            "python": sys.executable, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                   time.gmtime()),
            "budget_s": args.budget}, "steps": {}}

    def log(self, msg: str) -> None:
        log(msg, self.logf)

    def remaining(self) -> float:
        return self.deadline - time.time()

    def write(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1))

    def step(self, name: str, spec: dict, ranks: int, timeout: float, minimum: float) -> list:
        if self.args.only and name not in self.args.only.split(","):
            return []
        left = self.remaining()
        if ranks > 1 and self.group_broken:
            self.log(f"SKIP {name}: an earlier {ranks}-process step never formed its group")
            self.results["steps"][name] = {"skipped": "the group never formed earlier"}
            self.write()
            return []
        if left < minimum:
            self.log(f"SKIP {name}: {left:.0f} s left of the budget, needs {minimum:.0f}")
            self.results["steps"][name] = {"skipped": f"{left:.0f} s left"}
            self.write()
            return []
        timeout = min(timeout, left - 5)
        spec = dict(spec, step=name, out=str(self.out), backend=self.args.backend)
        env_common = dict(os.environ, PYTHONUNBUFFERED="1")
        hostfile = None
        if ranks > 1 and self.args.backend == "ring":
            hostfile = self.out / "steps" / f"{name}.hostfile.json"
            hostfile.write_text(json.dumps([[f"127.0.0.1:{free_port()}"] for _ in range(ranks)]))
        port = free_port()
        procs, files = [], []
        self.log(f"START {name} ({ranks} process{'es' if ranks > 1 else ''}, timeout "
                 f"{timeout:.0f} s)")
        start = time.time()
        for rank in range(ranks):
            env = dict(env_common, MLX_RANK=str(rank))
            if self.args.backend == "nccl" or ranks == 1:
                env["CUDA_VISIBLE_DEVICES"] = str(rank)
            if ranks > 1:
                env["MLX_WORLD_SIZE"] = str(ranks)
                if self.args.backend == "nccl":
                    env.update(NCCL_HOST_IP="127.0.0.1", NCCL_PORT=str(port))
                else:
                    env["MLX_HOSTFILE"] = str(hostfile)
            if self.args.transfer:
                env["MLX_ZOO_PIPELINE_TRANSFER"] = self.args.transfer
            fh = open(self.out / "steps" / f"{name}.rank{rank}.log", "w")
            files.append(fh)
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        status = "ok"
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                if any(codes):
                    status = f"failed (exit codes {codes})"
                break
            if any(c not in (None, 0) for c in codes):
                status = f"failed (exit codes {codes}); peers killed"
                break
            if time.time() - start > timeout:
                status = f"TIMEOUT after {timeout:.0f} s"
                break
            time.sleep(0.5)
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, 9)
                except ProcessLookupError:
                    pass
                p.wait()
        for fh in files:
            fh.close()
        rows = []
        for rank in range(ranks):
            text = (self.out / "steps" / f"{name}.rank{rank}.log").read_text(errors="replace")
            found = [json.loads(line.split(RESULT_PREFIX, 1)[1]) for line in text.splitlines()
                     if line.startswith(RESULT_PREFIX)]
            partial = self.out / "steps" / f"{name}.rank{rank}.json"
            if found:
                rows.append(found[-1])
            elif partial.exists():
                rows.append(dict(json.loads(partial.read_text()), partial=True))
            self.logf.write(f"---- {name} rank {rank} output ----\n{text}\n")
        self.results["steps"][name] = {"status": status, "wall_s": round(time.time() - start, 1),
                                       "ranks": rows}
        if status != "ok" and ranks > 1 and not any("size" in r for r in rows):
            self.group_broken = True  # init failed or hung: later steps would too
        if status != "ok":
            tails = {r: (self.out / "steps" / f"{name}.rank{r}.log").read_text(
                errors="replace")[-1500:] for r in range(ranks)}
            self.results["steps"][name]["output_tails"] = tails
            self.log(f"{name} output tails: {json.dumps(tails)[:3000]}")
        self.write()
        self.log(f"END {name}: {status} in {time.time() - start:.1f} s")
        for r in rows:
            keys = ("build_s", "load_s", "weights_held_gb", "build_peak_gb", "load_peak_gb",
                    "prefill_tps", "decode_tps", "decode_token_bcast_tps", "forward_step_ms",
                    "prefill_peak_gb", "decode_peak_gb", "tp_compute_only_step_ms",
                    "tp_allsum_chained_us", "tp_bound_step_ms", "sendrecv_oneway_us")
            self.log(f"  rank {r.get('rank')}: " + ", ".join(
                f"{k}={r[k]}" for k in keys if k in r))
        return rows

    def cpu_probe(self) -> None:
        """The ring-backend probe with BLAS threads / CPU sharing varied, then one process's
        decode of the same shape for reference."""
        for name, env in (("default-threads-unshared", {"MLX_ZOO_SHARE_CPUS": "0"}),
                          ("one-blas-thread-unshared", {"MLX_ZOO_SHARE_CPUS": "0",
                                                        "OPENBLAS_NUM_THREADS": "1"}),
                          ("shared (mlx-zoo default)", {})):
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                self.step(f"cpu-probe {name}", dict(probe=True, mode="probe"), 2, 600, 1)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        self.step("cpu-probe one process", dict(shape=PROBE_SHAPE, mode="single",
                                                dtype="float32", prompt=128, decode=24,
                                                prefill_repeats=1, decode_repeats=2,
                                                forward_steps=8), 1, 300, 1)

    def run(self) -> None:
        a = self.args
        if a.cpu_probe:
            self.cpu_probe()
            return
        dry = a.dry_run
        shapes = TINY if dry else SHAPES
        self.log(f"bench_parallel: out={self.out} backend={a.backend} dry_run={dry} "
                 f"budget={a.budget} s python={sys.executable}")
        sizes = {
            "7b": dict(prompt=a.prompt, decode=a.decode, prefill_repeats=3, decode_repeats=3,
                       forward_steps=64, comm_repeats=200),
            "32b": dict(prompt=a.prompt, decode=a.decode // 2, prefill_repeats=3,
                        decode_repeats=3, forward_steps=32, comm_repeats=100),
            "big": dict(prompt=min(a.prompt, 512), decode=16, prefill_repeats=1,
                        decode_repeats=1, forward_steps=8, comm_repeats=0),
        }
        if dry:
            for s in sizes.values():
                s.update(prompt=32, decode=8, forward_steps=4, comm_repeats=20)
        # minimum seconds left to start a step: about what it takes (GPU guesses)
        t = dict(single=(90, 20), pipeline=(120, 25), tensor=(150, 30)) if not dry else \
            dict(single=(120, 1), pipeline=(180, 1), tensor=(180, 1))
        for mode in ("single", "pipeline", "tensor"):
            ranks = 1 if mode == "single" else a.n
            self.step(f"7b-{mode}", dict(sizes["7b"], shape=shapes["7b"], mode=mode,
                                         comm=True, tp_profile=True), ranks, *t[mode])
        t32 = dict(single=(150, 60), pipeline=(150, 60), tensor=(180, 70)) if not dry else t
        for mode in ("single", "pipeline", "tensor"):
            ranks = 1 if mode == "single" else a.n
            self.step(f"32b-{mode}", dict(sizes["32b"], shape=shapes["32b"], mode=mode,
                                          comm=False, tp_profile=True), ranks, *t32[mode])
        big = dict(sizes["big"], shape=shapes["32b"], mode="pipeline", big=a.big_factor)
        if dry:
            big["device_memory"] = 2 * param_bytes(shapes["32b"])  # pretend: 2 tiny 32b
        self.step("big-pipeline", big, a.n, *((200, 80) if not dry else (180, 1)))
        if a.ckpt_dir is not None:
            ckpt = a.ckpt_dir / ("qwen2-7b-random" if not dry else "qwen2-tiny-random")
            saved = self.step("ckpt-write", dict(sizes["7b"], shape=shapes["7b"],
                                                 mode="single", save=str(ckpt)),
                              1, *((120, 100) if not dry else (120, 1)))
            if saved:
                small = dict(sizes["7b"], prompt=min(a.prompt, 512), decode=32,
                             prefill_repeats=2, decode_repeats=2, forward_steps=16,
                             shape=shapes["7b"], checkpoint=str(ckpt))
                for mode in ("pipeline", "tensor", "single"):
                    ranks = 1 if mode == "single" else a.n
                    self.step(f"ckpt-{mode}", dict(small, mode=mode), ranks,
                              *((90, 40) if not dry else (180, 1)))
        self.summary()

    def summary(self) -> None:
        lines = ["| step | ranks | build/load s | weights held per rank GB | build/load peak "
                 "per rank GB | prefill peak GB | decode peak GB | prefill tok/s | decode tok/s "
                 "| forward step ms |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, step in self.results["steps"].items():
            rows = step.get("ranks") or []
            if not rows:
                lines.append(f"| {name} | - | {step.get('status', step.get('skipped'))} "
                             "| | | | | | | |")
                continue

            def per(key, rows=rows):
                return " / ".join(str(r.get(key, "-")) for r in rows)

            r0 = rows[0]
            decode = str(r0.get("decode_tps", "-"))
            if "decode_token_bcast_tps" in r0:
                decode += f" (token bcast {r0['decode_token_bcast_tps']})"
            lines.append(
                f"| {name} | {len(rows)} | {per('build_s') if 'build_s' in r0 else per('load_s')}"
                f" | {per('weights_held_gb')} | "
                f"{per('build_peak_gb') if 'build_peak_gb' in r0 else per('load_peak_gb')} | "
                f"{per('prefill_peak_gb')} | {per('decode_peak_gb')} | "
                f"{r0.get('prefill_tps', '-')} | {decode} | {r0.get('forward_step_ms', '-')} |")
        for name, step in self.results["steps"].items():
            for r in step.get("ranks") or []:
                if "tp_bound_step_ms" in r:
                    lines.append(
                        f"\n{name} rank {r['rank']}: TP decode step bound = compute-only "
                        f"{r['tp_compute_only_step_ms']} ms + {r['tp_allsums_per_step']} x "
                        f"all_sum {r['tp_allsum_chained_us']} us (chained; "
                        f"{r['tp_allsum_eval_each_us']} us evaluated one by one) = "
                        f"{r['tp_bound_step_ms']} ms; measured forward step "
                        f"{r['tp_measured_step_ms']} ms, generate_step "
                        f"{r['tp_measured_decode_ms']} ms/token")
                if "big_factor" in r:
                    lines.append(f"\n{name} rank {r['rank']}: model {r['model_gb']} GB "
                                 f"({r['layers']} layers) vs one device's "
                                 f"{r['device_memory_gb']} GB; this rank holds "
                                 f"{r.get('weights_held_gb')} GB, peak "
                                 f"{r.get('decode_peak_gb')} GB")
                if "save_s" in r:
                    lines.append(f"\n{name}: checkpoint built in {r['build_s']} s, written in "
                                 f"{r['save_s']} s")
                if "pp_allsum_chained_us" in r:
                    lines.append(f"\n{name} rank {r['rank']}: transfer {r.get('transfer')}; "
                                 f"send/recv one way {r.get('sendrecv_oneway_us', '-')} us, "
                                 "all_sum "
                                 f"{r.get('pp_allsum_chained_us')} us chained / "
                                 f"{r.get('pp_allsum_eval_each_us')} us each")
        text = "\n".join(lines)
        (self.out / "summary.md").write_text(text + "\n")
        self.log("summary:\n" + text)
        self.results["meta"]["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.write()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="directory for the log and the JSON")
    parser.add_argument("--backend", default="nccl", help="nccl (GPUs) or ring (CPU)")
    parser.add_argument("-n", type=int, default=2, help="processes for the parallel modes")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny shapes, a few tokens: proves every code path on a CPU")
    parser.add_argument("--prompt", type=int, default=2048, help="prefill prompt tokens")
    parser.add_argument("--decode", type=int, default=128,
                        help="decoded tokens (7B; half that for 32B)")
    parser.add_argument("--big-factor", type=float, default=1.2,
                        help="big-pipeline model size / one device's memory")
    parser.add_argument("--transfer", choices=("send", "all_sum"),
                        help="pipeline stage transfer (default: all_sum on CUDA -- NCCL has no "
                             "send/recv -- else send; --dry-run: all_sum, the GPU's path)")
    parser.add_argument("--budget", type=float, default=480,
                        help="seconds for the whole run; steps that would not fit are skipped")
    parser.add_argument("--ckpt-dir", type=Path, default=Path("/tmp/bench_parallel_ckpt"),
                        help="where the checkpoint step writes the 7B checkpoint (last step)")
    parser.add_argument("--no-ckpt", action="store_true", help="skip the checkpoint steps")
    parser.add_argument("--only", help="comma-separated step names to run (default: all)")
    parser.add_argument("--cpu-probe", action="store_true",
                        help="instead: why decode under the ring backend on one CPU host is slow "
                             "(busy-polling, BLAS threads; run with --backend ring)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        cpu_probe_worker() if spec.get("probe") else worker(spec)
        return
    if args.out is None:
        parser.error("--out DIR is needed")
    if args.no_ckpt:
        args.ckpt_dir = None
    if args.dry_run and args.transfer is None:
        args.transfer = "all_sum"
    Driver(args).run()


if __name__ == "__main__":
    main()
