#!/usr/bin/env bash
# One device call: build the CUDA op tests (ops-only), check them against the CPU backend,
# time MIL's kernels (tests/cuda/perf_test.cpp) and the PyTorch baselines
# (bench_torch_decode.py) on the same GPU. Logs and JSON go to $OUT (default out-gpu/).
# Usage: scripts/gpu/run_kernel_bench.sh [torch sections, default sdpa,plain,steps,ttft,compiled]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out-gpu}
BUILD=${BUILD:-build-gpu}
SECTIONS=${1:-sdpa,plain,steps,ttft,compiled}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv | tee "$OUT/device.txt"
t0=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DMIL_CUDA=ON -DMIL_OPS_ONLY=ON -DCMAKE_BUILD_TYPE=Release >/dev/null 2>&1
cmake --build "$BUILD" -j "$(nproc)" --target test_cuda_ops >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
T="$BUILD/tests/test_cuda_ops"
timeout 240 "$T" --gtest_brief=1 2>&1 | tee "$OUT/test.log" | tail -25
timeout 100 compute-sanitizer --tool memcheck --error-exitcode 3 "$T" --gtest_brief=1 \
  --gtest_filter='Grid/CudaAttention.MatchesCpu/prefill_long_d128_g8:Grid/CudaAttention.MatchesCpu/decode_d64_splits7:Grid/CudaAttention.MatchesCpu/decode_d128_g8_b256:Grid/CudaMatmul.MatchesCpu/Q8_0_n8_k1536_lt_gemv:Grid/CudaMatmul.MatchesCpu/BF16_n3_k1536_lt_gemv:Grid/CudaMatmul.MatchesCpu/Q4_1_n3_k512_lt_gemv' \
  >"$OUT/memcheck.log" 2>&1; echo "memcheck rc=$?"; tail -3 "$OUT/memcheck.log"
rm -f "$OUT/mil_kernels.jsonl"
MIL_PERF_JSON="$OUT/mil_kernels.jsonl" timeout 200 "$T" --gtest_also_run_disabled_tests \
  --gtest_filter='CudaPerf.*' >"$OUT/perf.log" 2>&1; echo "perf rc=$?"
grep PERF "$OUT/perf.log" | grep -v "matmul" 
grep PERF "$OUT/perf.log" | grep "matmul" | grep -E "n=1 |n=8 " 
echo "elapsed: $(( $(date +%s) - t0 )) s"
if [ -n "$SECTIONS" ]; then
  PYTHONUNBUFFERED=1 timeout ${TORCH_TIMEOUT:-280} python3 scripts/gpu/bench_torch_decode.py \
    --out "$OUT/torch.json" --sections "$SECTIONS" >"$OUT/torch.log" 2>&1; echo "torch rc=$?"
  grep -v "^\s" "$OUT/torch.log" | grep -E "^\[|Error" | cut -c1-300 | tail -40
fi
echo "total: $(( $(date +%s) - t0 )) s"
