#!/usr/bin/env bash
# The GPU session (device tool), after `source .gpu2/setup.sh` (see ../shared/gpu/README.md), with
# mlx-lm's wheel carried in .whl/. Stages, so that each fits one call:
#   bash bench/gpu.sh tests   # CUDA correctness tests, and bench/probe_decode.py (Qwen2 shapes)
#   bash bench/gpu.sh qwen    # the table's Qwen2-0.5B and Qwen2-7B rows
#   bash bench/gpu.sh rest    # the HunYuan and Llama-4 rows
# Everything is written under $OUT (the device tool brings it back).
set -o pipefail
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-lm \
  .whl/mlx_lm-*.whl && export PYTHONPATH=/tmp/site-lm:$PYTHONPATH
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
  *) echo "usage: bench/gpu.sh tests|qwen|rest" >&2; exit 2 ;;
esac
