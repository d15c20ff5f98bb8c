#!/usr/bin/env bash
# Device: CUDA tests, GEMV perf (split-K vs row-warp), then batch-1 decode A/B of
# MIL_GEMV_SPLITK / MIL_FUSED_ROPE_KV on the 8B random model. Carry .gpubin and .debs.
set -uo pipefail
OUT=${OUT:-/tmp/out}; BIN=.gpubin; M=/tmp/llama3-8b-random
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
mkdir -p /tmp/dep && tar xJf .debs/deps.tar.xz -C /tmp/dep
cublas_dir=$(dirname "$(find /usr/local /opt /usr/lib -name 'libcublasLt.so.13*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=$PWD/$BIN/lib:/tmp/dep/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:${cublas_dir}:${LD_LIBRARY_PATH:-}
[[ -e /work/main ]] || { mkdir -p /work && ln -s "$PWD" /work/main; }
t0=$(date +%s)
timeout 200 python3 scripts/gpu/make_llama3_8b_random.py $M > $OUT/make.log 2>&1 &
mk=$!
timeout 120 $BIN/test_cuda_ops > $OUT/test_cuda_ops.log 2>&1; echo "test_cuda_ops rc=$? $(( $(date +%s)-t0 ))s"; grep -E "PASSED|FAILED|tests ran" $OUT/test_cuda_ops.log | head -20
timeout 150 $BIN/test_cuda_model > $OUT/test_cuda_model.log 2>&1; echo "test_cuda_model rc=$? $(( $(date +%s)-t0 ))s"; grep -E "PASSED|FAILED|tests ran" $OUT/test_cuda_model.log | head -20
MIL_PERF_JSON=$OUT/perf.json timeout 100 $BIN/test_cuda_ops --gtest_also_run_disabled_tests --gtest_filter='*MatmulLlama8B*' > $OUT/perf.log 2>&1; echo "perf rc=$?"; grep -E "BF16 .*(gemv|cublaslt) .*n=1 " $OUT/perf.log
wait $mk; echo "make rc=$? $(( $(date +%s)-t0 ))s"; tail -2 $OUT/make.log
i=0
for cfg in "0 0" "1 1" "0 0" "1 1" "1 0" "0 1"; do set -- $cfg; i=$((i+1))
  echo "=== MIL_GEMV_SPLITK=$1 MIL_FUSED_ROPE_KV=$2"
  MIL_GEMV_SPLITK=$1 MIL_FUSED_ROPE_KV=$2 timeout 90 $BIN/mil bench --device cuda --model-id $M --batches 1 --contexts 512 --ttft-prompts 128 --step-repeat 20 > $OUT/bench_${i}_$1$2.log 2>&1; echo "rc=$? $(( $(date +%s)-t0 ))s"
  grep -A3 -E "batch-1 greedy" $OUT/bench_${i}_$1$2.log; grep -A2 "decode step" $OUT/bench_${i}_$1$2.log | tail -1
done
echo "total $(( $(date +%s)-t0 ))s"
