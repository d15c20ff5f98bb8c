#!/usr/bin/env bash
# CPU benchmark of the default model: MIL's prefill and decode tokens/s at 1 and 2 threads,
# then llama.cpp's (llama-cpp-python, in .venv-bench) on the same GGUF and thread counts when
# that venv exists. Usage: bench_cpu.sh MODEL.gguf. Figures go to docs/PERFORMANCE.md by hand.
set -euo pipefail
model=$1
root=$(cd "$(dirname "$0")/.." && pwd)
for threads in 1 2; do
  "$root/build/src/mil" bench --model-id "$model" --threads "$threads" \
    --prompt-tokens 128 --new-tokens 128 --repeat 5
done
if [ -x "$root/.venv-bench/bin/python" ]; then
  "$root/.venv-bench/bin/python" "$root/scripts/bench_llamacpp.py" --model "$model" --threads 1,2 --runs 5
else
  echo "llama.cpp peer: create .venv-bench as scripts/bench_llamacpp.py describes" >&2
fi
