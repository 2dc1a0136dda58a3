"""Serving throughput: ``mlx-zoo serve`` against ``mlx_lm.server`` on the same checkpoint.

For each concurrency C in 1, 2, 4, 8, 16, C client threads each send ``--requests-per-client``
streamed chat requests (greedy, ``max_tokens`` fixed, end-of-sequence banned through
``logit_bias`` so every answer has the same length) and the figures are: aggregate generated
tokens per second over the wall time of the round, and p50/p95 time to first token (first content
chunk). Each server runs as a subprocess on 127.0.0.1 and is stopped at the end. With
``--repeat N`` the whole sweep runs N times (the servers alternating) and the medians are printed
as a Markdown table, with the 1-minute load average before and after (the client threads share
the machine with the server: other load on it shows).

    python bench/bench_serve.py --model demo:qwen2            # both servers
    python bench/bench_serve.py --model synthetic:512x8 --repeat 3
    python bench/bench_serve.py --model DIR --only mlx-zoo

``synthetic:HxL`` writes (once, under the temporary directory) a qwen2 checkpoint with random
bfloat16 weights, hidden size H, L layers, intermediate size 3H, H/64 attention heads and 2
key/value heads, and the qwen2 demo's tokenizer (vocabulary 1024): a model where compute, not only
Python, counts, that both servers load. ``mlx_lm.server`` needs a directory mlx-lm can load
(``demo:NAME`` is resolved to its directory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = ["hello there", "what is a plugin?", "write a function that adds two numbers",
           "tell me about caches", "sort a list", "open a file and read it"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("server did not start")


def synthetic_checkpoint(spec: str) -> str:
    """The directory of ``synthetic:HxL`` (see the module docstring), written once."""
    hidden, layers = (int(x) for x in spec.split(":", 1)[1].lower().split("x"))
    directory = Path(tempfile.gettempdir()) / f"mlx-zoo-bench-qwen2-{hidden}x{layers}"
    if (directory / "model.safetensors").exists():
        return str(directory)
    import mlx_zoo  # noqa: I001 (before mlx.core: the fast BLAS)
    import mlx.core as mx
    from mlx_zoo.testing.helpers import write_tiny_checkpoint

    demo = mlx_zoo.resolve_model_dir("demo:qwen2")
    config = json.loads((demo / "config.json").read_text())
    config.pop("model_type")
    config.update(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=3 * hidden,
                  num_attention_heads=max(hidden // 64, 2), num_key_value_heads=2,
                  torch_dtype="bfloat16")
    write_tiny_checkpoint(directory, "qwen2", config)
    weights = mx.load(str(directory / "model.safetensors"))
    mx.save_safetensors(str(directory / "model.safetensors"),
                        {k: v.astype(mx.bfloat16) for k, v in weights.items()},
                        metadata={"format": "mlx"})
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(demo / name, directory / name)
    return str(directory)


def start(kind: str, model: str, port: int, concurrency: int) -> subprocess.Popen:
    if kind == "mlx-zoo":
        cmd = [sys.executable, "-m", "mlx_zoo.serve", "--model", model, "--port", str(port),
               "--max-concurrency", str(concurrency), "--log-level", "warning"]
    else:
        cmd = [sys.executable, "-m", "mlx_lm", "server", "--model", model, "--port", str(port),
               "--decode-concurrency", str(concurrency), "--log-level", "WARNING"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def one_request(url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, int, float]:
    """(time to first token, tokens, total time) of one streamed chat request."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "logit_bias": {"0": -100, "2": -100}}
    request = urllib.request.Request(f"{url}/v1/chat/completions",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    first, tokens = None, 0
    with urllib.request.urlopen(request, timeout=600) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            for choice in chunk.get("choices", []):
                if (choice.get("delta") or {}).get("content"):
                    tokens += 1
                    if first is None:
                        first = time.perf_counter() - start
    return first or 0.0, tokens, time.perf_counter() - start


def engine_ttft(url: str, requests: int) -> tuple[float, float] | None:
    """p50 and p95 of the server's own time to first token (submission to the engine -> first
    token handed out) over the last ``requests`` requests: ``/health``'s ``recent_ttft_ms``."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            recent = json.loads(response.read()).get("recent_ttft_ms") or []
    except OSError:
        return None
    values = sorted(v / 1000 for v in recent[-requests:])
    if not values:
        return None
    return statistics.median(values), values[min(len(values) - 1, int(0.95 * len(values)))]


def bench_round(url: str, model: str, concurrency: int, per_client: int,
                max_tokens: int) -> dict:
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(concurrency * per_client)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: one_request(url, model, p, max_tokens), jobs))
    wall = time.perf_counter() - start
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"concurrency": concurrency, "requests": len(jobs), "tokens": tokens,
            "tok_per_s": tokens / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))]}


def sweep(kind: str, name: str, levels: list[int], args: argparse.Namespace) -> list[dict]:
    """One server started, every concurrency level run against it, the server stopped."""
    port = free_port()
    process = start(kind, name, port, max(levels))
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        wait_up(url, process)
        one_request(url, name, "warm up", 8)
        if args.warmup:  # an unmeasured round per level: kernels built for every batch shape
            for c in levels:
                bench_round(url, name, c, 1, 8)
        for c in levels:
            try:
                row = {"server": kind, **bench_round(url, name, c, args.requests_per_client,
                                                     args.max_tokens)}
            except OSError as e:  # a server that dropped a connection: the round is left out
                print(f"{kind:8} C={c:<3} failed: {type(e).__name__}: {e}", flush=True)
                continue
            engine = engine_ttft(url, row["requests"]) if kind == "mlx-zoo" else None
            if engine:
                row["engine_ttft_p50"], row["engine_ttft_p95"] = engine
            rows.append(row)
            print(f"{kind:8} C={c:<3} {row['tok_per_s']:8.1f} tok/s  TTFT p50 "
                  f"{row['ttft_p50'] * 1000:7.1f} ms  p95 {row['ttft_p95'] * 1000:7.1f} ms  "
                  f"({row['requests']} requests, {row['tokens']} tokens)"
                  + (f"  engine TTFT p50 {engine[0] * 1000:.1f} / p95 {engine[1] * 1000:.1f} ms"
                     if engine else ""), flush=True)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    return rows


def median_table(rows: list[dict], kinds: list[str], levels: list[int]) -> str:
    """Medians over the repeats, one line per concurrency, the servers side by side."""
    def med(kind: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in rows
                                 if r["server"] == kind and r["concurrency"] == c)

    engine = any("engine_ttft_p95" in r for r in rows)
    head = "| C |" + "".join(f" {k} tok/s | {k} TTFT p50 / p95 ms |" for k in kinds)
    head += " mlx-zoo engine TTFT p50 / p95 ms |" if engine else ""
    lines = [head, "|---|" + "---|---|" * len(kinds) + ("---|" if engine else "")]
    for c in levels:
        cells = "".join(f" {med(k, c, 'tok_per_s'):.0f} | {med(k, c, 'ttft_p50') * 1000:.0f} / "
                        f"{med(k, c, 'ttft_p95') * 1000:.0f} |" for k in kinds)
        if engine:
            cells += (f" {med('mlx-zoo', c, 'engine_ttft_p50') * 1000:.0f} / "
                      f"{med('mlx-zoo', c, 'engine_ttft_p95') * 1000:.0f} |")
        lines.append(f"| {c} |{cells}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo:qwen2",
                        help="a directory, demo:NAME or synthetic:HxL")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="sweeps per server (medians)")
    parser.add_argument("--only", choices=["mlx-zoo", "mlx-lm"], default=None)
    parser.add_argument("--warmup", action="store_true",
                        help="first an unmeasured round at every level (on a GPU, MLX compiles "
                             "kernels the first time a batch shape appears)")
    parser.add_argument("--json", default=None, help="also write every row to this file")
    args = parser.parse_args()
    model = args.model
    if model.startswith("synthetic:"):
        model = synthetic_checkpoint(model)
    served = {}
    if model.startswith("demo:"):
        import mlx_zoo

        served["mlx-lm"] = str(mlx_zoo.resolve_model_dir(model))
    levels = [int(c) for c in args.concurrency.split(",")]
    kinds = [k for k in ("mlx-zoo", "mlx-lm") if not args.only or k == args.only]
    rows = []
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for r in range(args.repeat):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            rows += [{**row, "repeat": r} for row in sweep(kind, served.get(kind, model),
                                                            levels, args)]
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    print(median_table(rows, kinds, levels))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
