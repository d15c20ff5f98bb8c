#!/usr/bin/env bash
# The model and engine tests on CUDA (tests/cuda_model) plus the CUDA op tests, on the GPU
# machine. Builds with MIL_ENGINE_ONLY (no server libraries needed); PCRE2, ICU and
# nlohmann-json headers may come from DEPS_TAR (a tarball of Debian 12's libpcre2-dev,
# libicu-dev/libicu72 and nlohmann-json3-dev files, unpacked under /tmp/dep). The default
# model's tests run when MIL_DEFAULT_MODEL is set. Logs go to $LOG_DIR.
# Usage: [DEPS_TAR=.debs/deps.tar.xz] [MIL_DEFAULT_MODEL=...] scripts/gpu_model_test.sh [filter]
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu-model}
LOG_DIR=${LOG_DIR:-$BUILD/logs}
FILTER=${1:-*}
mkdir -p "$LOG_DIR"
extra=()
if [[ -n "${DEPS_TAR:-}" ]]; then
  mkdir -p /tmp/dep && tar xJf "$DEPS_TAR" -C /tmp/dep
  sed -i 's|^prefix *= */usr$|prefix=/tmp/dep/usr|' /tmp/dep/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
  export PKG_CONFIG_PATH=/tmp/dep/usr/lib/x86_64-linux-gnu/pkgconfig
  export LD_LIBRARY_PATH=/tmp/dep/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
  extra=(-DCMAKE_PREFIX_PATH=/tmp/dep/usr -DICU_ROOT=/tmp/dep/usr)
fi
if [[ ! -f "$BUILD/build.ninja" ]]; then
  cmake -S . -B "$BUILD" -G Ninja -DMIL_CUDA=ON -DMIL_ENGINE_ONLY=ON -DCMAKE_BUILD_TYPE=Release \
    "${extra[@]}" >"$LOG_DIR/configure.log" 2>&1 || { tail -40 "$LOG_DIR/configure.log"; exit 1; }
fi
cmake --build "$BUILD" -j "$(nproc)" --target test_cuda_ops test_cuda_model >"$LOG_DIR/build.log" 2>&1 ||
  { grep -E 'error|Error' -A3 "$LOG_DIR/build.log" | head -60; exit 1; }
status=0
"$BUILD/tests/test_cuda_model" --gtest_filter="$FILTER" 2>&1 | tee "$LOG_DIR/test_cuda_model.log" |
  grep -E '^\[(hf|gguf|lora|default)|^engine|^prompt|FAILED|PASSED|Failure|error' || true
grep -q '^\[  PASSED' "$LOG_DIR/test_cuda_model.log" && ! grep -q '^\[  FAILED' "$LOG_DIR/test_cuda_model.log" || status=1
exit $status
