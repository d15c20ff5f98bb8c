#!/usr/bin/env bash
# One device call: the CUDA tests (op tests, memcheck subset, model tests), then a batch-1
# decode A/B of kernel-policy switches (kernels.h KernelPolicy) on the Llama-3-8B-shaped
# random model, alternating the configurations REPEAT times, and optionally (NCU=1) an ncu
# per-kernel profile of eager decode steps under the last configuration.
# Carry .gpubin (mil and the test binaries built here) and .debs.
# BENCH_ARGS replaces the bench's suite options; TESTS=0 skips the tests; MIL_DEFAULT_MODEL
# (a GGUF on the device) makes test_cuda_model run its default-model tests; TEST_FILTER
# narrows test_cuda_model.
# Usage (device): OUT=$OUT CONFIGS="MIL_ROW_VEC=0,MIL_PDL=0 MIL_ROW_VEC=1,MIL_PDL=1" scripts/gpu/run_decode_ab.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; M=/tmp/llama3-8b-random
CONFIGS=${CONFIGS:-"MIL_PDL=0 MIL_PDL=1"}; REPEAT=${REPEAT:-2}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
source scripts/gpu/device_env.sh
t0=$(date +%s)
[[ -f $M/config.json ]] || { timeout 200 python3 scripts/gpu/make_llama3_8b_random.py $M > $OUT/make.log 2>&1 & }
if [[ "${TESTS:-1}" == 1 ]]; then
  timeout 150 $BIN/test_cuda_ops > $OUT/test_cuda_ops.log 2>&1; echo "test_cuda_ops rc=$? $(( $(date +%s)-t0 ))s"
  grep -E "PASSED|FAILED|tests ran" $OUT/test_cuda_ops.log | head -20
  timeout 200 $BIN/test_cuda_model --gtest_filter="${TEST_FILTER:-*}" > $OUT/test_cuda_model.log 2>&1
  echo "test_cuda_model rc=$? $(( $(date +%s)-t0 ))s"
  grep -E "PASSED|FAILED|tests ran|Failure|Expected|Which is|actual|warm-up:" -A1 $OUT/test_cuda_model.log | head -40
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $BIN/test_cuda_ops \
    --gtest_filter='CudaRowwise.*:CudaModelOps.*:Grid/CudaAttention.*:Grid/CudaMatmul.*' > $OUT/memcheck.log 2>&1
  echo "memcheck rc=$? $(( $(date +%s)-t0 ))s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -5
fi
wait; echo "model ready $(( $(date +%s)-t0 ))s"
B="$BIN/mil bench --device cuda --model-id $M ${BENCH_ARGS:---batches 1 --contexts 512,2048 --ttft-prompts 128 --step-repeat 30}"
for i in $(seq 1 "$REPEAT"); do for cfg in $CONFIGS; do
  tag=${cfg//[=,]/_}
  env ${cfg//,/ } timeout 100 $B > $OUT/bench_${tag}_$i.log 2>&1; echo "== $cfg run $i rc=$? $(( $(date +%s)-t0 ))s"
  grep -A2 "batch-1 greedy" $OUT/bench_${tag}_$i.log | tail -2; grep -A2 "decode step" $OUT/bench_${tag}_$i.log | tail -1
  grep "prompt " $OUT/bench_${tag}_$i.log
done; done
if [[ "${NCU:-0}" == 1 ]]; then
  last=${CONFIGS##* }
  env ${last//,/ } MIL_PDL=0 timeout 200 ncu --clock-control none --cache-control none --csv --page raw \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size \
    --launch-skip 4000 --launch-count 700 $B --decode-steps 8 > $OUT/ncu.csv 2> $OUT/ncu.err
  echo "ncu ($last, PDL off) rc=$? $(( $(date +%s)-t0 ))s"
  python3 scripts/gpu/ncu_summary.py $OUT/ncu.csv
fi
echo "total $(( $(date +%s)-t0 ))s"
