#!/usr/bin/env bash
# The GPU tests (on a machine with an H100/H200 and the CUDA toolkit): builds the CUDA op
# tests, runs them against the CPU backend, runs compute-sanitizer memcheck on a subset and
# prints quick timings. Logs go to $LOG_DIR (default: build-gpu/logs).
# Usage: scripts/gpu_test.sh [extra cmake flags]; BUILD=build-gpu, OPS_ONLY=ON (only core and
# the op backends: no tokenizer/server dependencies needed).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
LOG_DIR=${LOG_DIR:-$BUILD/logs}
OPS_ONLY=${OPS_ONLY:-ON}
mkdir -p "$LOG_DIR"
cmake -S . -B "$BUILD" -G Ninja -DMIL_CUDA=ON -DMIL_OPS_ONLY="$OPS_ONLY" -DMIL_BUILD_BENCH=OFF \
  -DCMAKE_BUILD_TYPE=Release "$@" >"$LOG_DIR/configure.log" 2>&1 || { cat "$LOG_DIR/configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" --target test_cuda_ops test_ops 2>&1 | tee "$LOG_DIR/build.log" | tail -3
status=0
"$BUILD/tests/test_cuda_ops" --gtest_brief=1 2>&1 | tee "$LOG_DIR/test_cuda_ops.log" | tail -40 || status=1
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 3 "$BUILD/tests/test_cuda_ops" --gtest_brief=1 \
    --gtest_filter='CudaRowwise.*:Grid/CudaMatmul.MatchesCpu/*n7*:Grid/CudaLora.*/5:Grid/CudaLora.*/9:Grid/CudaAttention.MatchesCpu/prefill_d128_g4_b16:Grid/CudaAttention.MatchesCpu/decode_d64_splits7:Grid/CudaAttention.MatchesCpu/decode_d128_g8_b256' \
    2>&1 | tee "$LOG_DIR/memcheck.log" | tail -8 || status=1
fi
"$BUILD/tests/test_cuda_ops" --gtest_also_run_disabled_tests --gtest_filter='CudaPerf.*' 2>&1 |
  tee "$LOG_DIR/perf.log" | grep PERF || status=1
exit $status
