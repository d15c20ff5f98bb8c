#!/usr/bin/env bash
# One device call for the closing figures of the CUDA backend (after a staging call that
# copied .gguf-parts/g40-00 and g40-01 to /tmp/stage, one per call: the default model's xz parts exceed one
# call's 64 MiB, so they travel in two calls to the same warm machine):
#   1. the default model from the parts (sha256 checked), the Llama-3-8B-shaped random model
#      and transformers' reference logits (llama8b_agreement.py, background);
#   2. test_cuda_ops, test_cuda_model (MIL_DEFAULT_MODEL set), memcheck on the op tests;
#   3. `mil serve --device cuda` end to end (serve_smoke.py) and `mil generate --device cuda`;
#   4. mil bench --device cuda: batch-1 decode, step grid, TTFT, agreement (bench.json);
#   5. MIL's kernel perf tests (decode attention, matmuls) and the PyTorch baselines
#      (bench_torch_decode.py: plain and compiled decode, TTFT, SDPA), same machine, same call.
# Carry .gguf-parts/g40-02, .gpupack (or .gpubin) and .debs (scripts/gpu/device_env.sh). Usage (device): OUT=$OUT scripts/gpu/run_final.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; M=/tmp/llama3-8b-random; REF=/tmp/llama3-8b-ref
GGUF=/tmp/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $OUT/device.txt
source scripts/gpu/device_env.sh
t0=$(date +%s); el() { echo "$(( $(date +%s)-t0 ))s"; }
cat /tmp/stage/g40-00 /tmp/stage/g40-01 .gguf-parts/g40-02 | xz -d > $GGUF
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $GGUF" | sha256sum -c || GGUF=
PYTHONUNBUFFERED=1 timeout 300 python3 scripts/gpu/llama8b_agreement.py --model-dir $M --ref-dir $REF \
  --fp32 > $OUT/agreement_ref.log 2>&1 &
ref=$!
timeout 150 $BIN/test_cuda_ops > $OUT/test_cuda_ops.log 2>&1; echo "test_cuda_ops rc=$? $(el)"
grep -E "^\[  (PASSED|FAILED|SKIPPED)" $OUT/test_cuda_ops.log | head -20
MIL_DEFAULT_MODEL=$GGUF timeout 200 $BIN/test_cuda_model > $OUT/test_cuda_model.log 2>&1; echo "test_cuda_model rc=$? $(el)"
grep -E "^\[  (PASSED|FAILED|SKIPPED)|^\[default|^engine" $OUT/test_cuda_model.log | head -20
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $BIN/test_cuda_ops \
  --gtest_filter='CudaRowwise.*:CudaModelOps.*:Grid/CudaAttention.*:Grid/CudaMatmul.*' > $OUT/memcheck.log 2>&1
echo "memcheck rc=$? $(el)"; grep -E "ERROR SUMMARY|^\[  (PASSED|FAILED)" $OUT/memcheck.log | head -5
if [[ -n "$GGUF" ]]; then
  timeout 150 python3 scripts/gpu/serve_smoke.py $BIN/mil $GGUF > $OUT/serve_smoke.log 2>&1; echo "serve_smoke rc=$? $(el)"
  grep -E "PASS|FAIL|equal|device|KV cache" $OUT/serve_smoke.log | head -30
  timeout 60 $BIN/mil generate --model-id $GGUF --device cuda --max-new-tokens 24 \
    --prompt "The capital of France is" > $OUT/generate.log 2>&1; echo "generate rc=$?"; tail -4 $OUT/generate.log
fi
wait $ref; echo "reference rc=$? $(el)"; tail -c 900 $OUT/agreement_ref.log; echo
timeout 200 $BIN/mil bench --device cuda --model-id $M --json $OUT/bench.json --compare $REF 2>&1 | tee $OUT/bench.log
echo "bench $(el)"
MIL_PERF_JSON=$OUT/mil_kernels.jsonl timeout 120 $BIN/test_cuda_ops --gtest_also_run_disabled_tests \
  --gtest_filter='CudaPerf.DISABLED_DecodeAttention:CudaPerf.DISABLED_MatmulLlama8B' > $OUT/mil_kernels.log 2>&1
echo "kernel perf rc=$? $(el)"; grep -E "decode|n=1 " $OUT/mil_kernels.log | head -30
PYTHONUNBUFFERED=1 timeout 240 python3 scripts/gpu/bench_torch_decode.py --model $M --out $OUT/torch.json \
  --sections sdpa,plain,ttft,compiled > $OUT/torch.log 2>&1; echo "torch rc=$? $(el)"; tail -25 $OUT/torch.log
echo "total $(el)"
