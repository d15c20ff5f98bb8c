#!/usr/bin/env bash
# One device call: MIL end to end on a Llama-3-8B-shaped model with random bf16 weights.
#   1. scripts/gpu/llama8b_agreement.py builds the model with transformers on the GPU, saves it
#      (safetensors) and transformers' teacher-forced logits over 512 positions (background);
#   2. test_cuda_model (regression, decode graphs included) meanwhile;
#   3. mil bench --device cuda: batch-1 decode (graphs on/off), step times, TTFT, then the
#      agreement check against step 1's logits. Table on stdout, JSON in $OUT/bench.json.
# mil cannot be built there (no CLI11/spdlog/Boost/OpenSSL headers): $BIN holds mil and
# test_cuda_model built here (build-cuda, MIL_CUDA=ON, Release) with the shared libraries the
# machine lacks in $BIN/lib (scripts/gpu/device_env.sh). Carry ".gpubin" (or ".gpupack") and ".debs".
# Usage (device): OUT=$OUT scripts/gpu/run_e2e_bench.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out-gpu}
MODEL=${MODEL:-/tmp/llama3-8b-random}
REF=${REF:-/tmp/llama3-8b-ref}
mkdir -p "$OUT"
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv | tee "$OUT/device.txt"
source scripts/gpu/device_env.sh
export MIL_BIN=$BIN MIL_MODEL=$MODEL MIL_REF=$REF
ldd "$BIN/mil" | grep "not found"
PYTHONUNBUFFERED=1 timeout 330 python3 scripts/gpu/llama8b_agreement.py --model-dir "$MODEL" \
  --ref-dir "$REF" --fp32 >"$OUT/agreement_ref.log" 2>&1 &
ref_pid=$!
timeout 150 "$BIN/test_cuda_model" >"$OUT/test_cuda_model.log" 2>&1
echo "test_cuda_model rc=$? ($(( $(date +%s) - t0 )) s)"
grep -E '^\[graphs\]|FAILED|PASSED|Failure' "$OUT/test_cuda_model.log" | head -40
wait $ref_pid
echo "reference rc=$? ($(( $(date +%s) - t0 )) s)"
tail -3 "$OUT/agreement_ref.log"
cp "$REF/summary.json" "$OUT/agreement_ref.json" 2>/dev/null
suite=()
[[ "${SUITE:-1}" == 1 ]] || suite=(--no-suite)
timeout ${BENCH_TIMEOUT:-280} "$BIN/mil" bench --device cuda --model-id "$MODEL" --json "$OUT/bench.json" \
  --compare "$REF" "${suite[@]}" 2>&1 | tee "$OUT/bench.log"
# Against transformers in float32 (the bf16 noise floor is in agreement_ref.json).
timeout 120 "$BIN/mil" bench --device cuda --model-id "$MODEL" --compare "$REF" --no-suite \
  --reference logits_fp32.f32 2>&1 | grep -A3 "^agreement" | tee -a "$OUT/bench.log"
echo "total: $(( $(date +%s) - t0 )) s"
