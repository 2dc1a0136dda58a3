"""The serve engine's start-up warm-up, measured: time to first token and loop-turn stalls the
first time the batch reaches a size, with and without ``--warmup``, and how many kernels MLX
compiles after it (on CUDA: NVRTC output, counted as files in ``MLX_PTX_CACHE_DIR``).

One case per process (MLX keeps compiled kernels in memory; give each case its own
``MLX_PTX_CACHE_DIR`` for a cold disk cache, or reuse one to see what a restart on the same
machine costs)::

    MLX_PTX_CACHE_DIR=/tmp/ptx-a python bench/probe_warmup.py --model DIR --no-warmup --json a.json
    MLX_PTX_CACHE_DIR=/tmp/ptx-b python bench/probe_warmup.py --model DIR --warmup --json b.json

In-process (no HTTP): rounds of C requests submitted at once (C = 1, 2, 4, 8, 16; random prompt
ids of 20-60 tokens, greedy, end of sequence banned, ``--max-tokens`` each), the same rounds
again, then rounds at sizes and prompt lengths the warm-up did not build (C = 3, 6, 12; prompts
of 100-300 tokens; answers long enough to cross the caches' 256-column growth). For each round:
the longest and median time to first token, the round's wall time, the longest loop turn, and
the kernels compiled during it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
from pathlib import Path

import mlx_zoo  # noqa: F401 (before mlx.core: the fast BLAS on a Linux CPU)
from mlx_zoo.serve.engine import Engine, SamplingParams, Seq


def ptx_files() -> int | None:
    directory = os.environ.get("MLX_PTX_CACHE_DIR")
    if not directory or not Path(directory).is_dir():
        return None
    return sum(1 for p in Path(directory).rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="as mlx-zoo serve's (the Linux CPU's fast BLAS; default 1)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    start = time.perf_counter()
    engine = Engine(args.model, max_concurrency=args.max_concurrency, warmup=args.warmup,
                    blas_threads=args.blas_threads)
    engine.start()
    engine.ready.wait()
    if engine.load_error is not None:
        raise engine.load_error
    record = {"warmup": args.warmup, "ready_s": round(time.perf_counter() - start, 3),
              "warmup_s": engine.warmup_s and round(engine.warmup_s, 3),
              "warmup_sizes": sorted(set(engine.warmup_sizes)), "ptx_after_start": ptx_files(),
              "batching": engine.batching, "rounds": []}
    print(json.dumps({k: v for k, v in record.items() if k != "rounds"}), flush=True)

    turns: list[tuple[float, int]] = []  # (seconds, batch size at its start)
    turn = engine._turn

    def timed_turn() -> None:
        size = len(engine._batch)
        t = time.perf_counter()
        turn()
        turns.append((time.perf_counter() - t, size))

    engine._turn = timed_turn
    eos = engine.tokenizer.eos_token_ids
    ban = {t: -1e9 for t in eos}
    vocab = engine.vocab_size or 1000
    rng = random.Random(0)

    def one_round(label: str, c: int, lengths: tuple[int, int], max_tokens: int) -> None:
        done = threading.Event()
        firsts: dict[int, float] = {}
        finished = []
        lock = threading.Lock()
        t0 = time.perf_counter()

        def sink_for(i: int):
            def sink(event):
                if event["type"] == "token" and i not in firsts:
                    firsts[i] = time.perf_counter() - t0
                if event["type"] in ("done", "error"):
                    with lock:
                        finished.append(event)
                        if len(finished) == c:
                            done.set()
            return sink

        prompts = [[rng.randrange(min(1000, vocab // 2), min(100_000, vocab))
                    for _ in range(rng.randint(*lengths))] for _ in range(c)]
        before_ptx, before_turns = ptx_files(), len(turns)
        engine.submit([Seq(p, SamplingParams(max_tokens=max_tokens, logit_bias=ban),
                           sink_for(i)) for i, p in enumerate(prompts)])
        done.wait(600)
        wall = time.perf_counter() - t0
        mine = turns[before_turns:]
        longest = max(mine, default=(0.0, 0))
        after_ptx = ptx_files()
        row = {"round": label, "C": c, "ttft_max_ms": round(max(firsts.values()) * 1e3, 1),
               "ttft_p50_ms": round(statistics.median(firsts.values()) * 1e3, 1),
               "wall_s": round(wall, 3), "turns": len(mine),
               "turn_p50_ms": round(statistics.median(t for t, _ in mine) * 1e3, 2),
               "turn_max_ms": round(longest[0] * 1e3, 1), "turn_max_batch": longest[1],
               "errors": sum(e["type"] == "error" for e in finished),
               "new_ptx": None if after_ptx is None else after_ptx - before_ptx}
        record["rounds"].append(row)
        print(json.dumps(row), flush=True)

    for label in ("first", "again"):
        for c in (1, 2, 4, 8, 16):
            if c <= args.max_concurrency:
                one_round(label, c, (20, 60), args.max_tokens)
    for c in (3, 6, 12):
        if c <= args.max_concurrency:
            one_round("other sizes, long", c, (100, 300), 300)
    engine.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
    os._exit(0)  # the engine thread's MLX state: no interpreter teardown


if __name__ == "__main__":
    main()
