"""Peak resident memory of ``mlx-zoo convert`` on a multi-GB checkpoint (docs/benchmarks.md,
"Converting big checkpoints").

Builds a random qwen2-shaped bfloat16 checkpoint of ~3.4 GB, shard by shard (so that building
it needs one shard of memory, not the model), then runs the conversion in a fresh process for
each case -- 4-bit affine quantization, and a cast to float16 -- and reads that process's peak
RSS from ``os.wait4``. The target: peak RSS <= 1.5 x the largest output shard + the largest
single tensor (+ what the interpreter, MLX and mlx-zoo hold before converting anything, measured
as the baseline).

    .venv/bin/python bench/convert_memory.py [--dir /tmp/convert-bench] [--max-shard-size 0.5]

Not part of the test suite (it writes ~8 GB and takes minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

GB = 1024**3
CONFIG = {  # qwen2-shaped: 20 layers of 2048 x 11008, GQA with 2 kv heads, untied head
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 2048,
    "intermediate_size": 11008, "num_attention_heads": 16, "num_key_value_heads": 2,
    "num_hidden_layers": 20, "vocab_size": 32000, "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
SOURCE_SHARD_BYTES = 512 * 1024**2

BUILD = r"""
import json, sys
import mlx.core as mx
from pathlib import Path
out, config, shard_bytes = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
h, i, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
d = h // heads
shapes = [("model.embed_tokens.weight", (config["vocab_size"], h))]
for l in range(n):
    p = f"model.layers.{l}."
    a = p + "self_attn."
    shapes += [(p + "input_layernorm.weight", (h,)),
               (p + "post_attention_layernorm.weight", (h,)),
               (a + "q_proj.weight", (heads * d, h)), (a + "q_proj.bias", (heads * d,)),
               (a + "k_proj.weight", (kv * d, h)), (a + "k_proj.bias", (kv * d,)),
               (a + "v_proj.weight", (kv * d, h)), (a + "v_proj.bias", (kv * d,)),
               (p + "self_attn.o_proj.weight", (h, heads * d)),
               (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
               (p + "mlp.down_proj.weight", (h, i))]
shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (config["vocab_size"], h))]
shards, size = [[]], 0
for name, shape in shapes:
    nbytes = 2 * (shape[0] * (shape[1] if len(shape) > 1 else 1))
    if shards[-1] and size + nbytes > shard_bytes:
        shards.append([]); size = 0
    shards[-1].append((name, shape)); size += nbytes
weight_map, total = {}, 0
for k, shard in enumerate(shards, 1):
    file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
    arrays = {}
    for name, shape in shard:
        arrays[name] = (mx.random.normal(shape) * 0.02).astype(mx.bfloat16)
        mx.eval(arrays[name])
        total += arrays[name].nbytes
        weight_map[name] = file
    mx.save_safetensors(str(out / file), arrays, metadata={"format": "pt"})
    del arrays
    mx.clear_cache()
(out / "model.safetensors.index.json").write_text(json.dumps(
    {"metadata": {"total_size": total}, "weight_map": weight_map}))
(out / "config.json").write_text(json.dumps(config))
"""

CONVERT = r"""
import argparse, sys
from mlx_zoo.convert import add_arguments, run
p = argparse.ArgumentParser(); add_arguments(p)
sys.exit(run(p.parse_args(sys.argv[1:])))
"""

BASELINE = "import mlx_zoo, mlx_qwen2, mlx.core as mx; mx.eval(mx.zeros(1))"


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """(peak resident GB, seconds) of ``cmd``, run as a child of its own."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd} failed with {proc.returncode}")
    return usage.ru_maxrss * 1024 / GB, time.perf_counter() - start  # ru_maxrss: KiB on Linux


def largest(path: Path) -> tuple[float, float]:
    """(largest shard GB, largest tensor GB) of a checkpoint, from the safetensors headers."""
    import struct

    shard = tensor = 0
    for f in path.glob("*.safetensors"):
        shard = max(shard, f.stat().st_size)
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, entry in header.items():
            if name != "__metadata__":
                begin, end = entry["data_offsets"]
                tensor = max(tensor, end - begin)
    return shard / GB, tensor / GB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/convert-bench")
    parser.add_argument("--max-shard-size", type=float, default=0.5, help="output shards, GB")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    args = parser.parse_args()
    root = Path(args.dir)
    src = root / "src"
    if not (src / "config.json").exists():
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        rss, secs = peak_rss([sys.executable, "-c", BUILD, str(src), json.dumps(CONFIG),
                              str(SOURCE_SHARD_BYTES)])
        print(f"built {src}: peak RSS {rss:.2f} GB, {secs:.0f} s")
    src_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    base, _ = peak_rss([sys.executable, "-c", BASELINE])
    _, tensor = largest(src)  # the largest input tensor: its conversion is computed at once
    print(f"source {src_bytes / GB:.2f} GB ({len(list(src.glob('*.safetensors')))} shards); "
          f"baseline process RSS {base:.2f} GB")
    cases = {"q4": ["-q", "--q-bits", "4", "--q-group-size", "64"],
             "float16": ["--dtype", "float16"]}
    for name, flags in cases.items():
        out = root / name
        cmd = [sys.executable, "-c", CONVERT, "--hf-path", str(src), "--mlx-path", str(out),
               "--force", "--max-shard-size", str(args.max_shard_size), *flags]
        rss, secs = peak_rss(cmd)
        shard, _ = largest(out)
        total = sum(f.stat().st_size for f in out.glob("*.safetensors")) / GB
        target = 1.5 * shard + tensor
        print(f"{name}: {' '.join(flags)}: output {total:.2f} GB, largest shard {shard:.2f} GB, "
              f"largest input tensor {tensor:.3f} GB; peak RSS {rss:.2f} GB (minus baseline "
              f"{rss - base:.2f} GB) vs target {target:.2f} GB "
              f"[{'ok' if rss - base <= target else 'OVER'}]; {secs:.0f} s")
        if not args.keep:
            shutil.rmtree(out)
    if not args.keep:
        shutil.rmtree(src)


if __name__ == "__main__":
    main()
