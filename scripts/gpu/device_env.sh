# Sourced from the repository root by the scripts/gpu/run_*.sh device scripts: the GPU
# machine's side of running binaries built here. $BIN (default .gpubin) holds mil and the test
# binaries with the shared libraries the machine lacks in $BIN/lib, carried as is or packed as
# .gpupack/gpubin.tar.xz (to fit a call's 64 MiB); ICU/PCRE2 come from .debs/deps.tar.xz; the
# fixtures' path compiled into the tests is /work/main.
BIN=${BIN:-.gpubin}
if [[ -f .gpupack/gpubin.tar.xz ]]; then tar xJf .gpupack/gpubin.tar.xz; fi
if [[ -f .debs/deps.tar.xz ]]; then mkdir -p /tmp/dep && tar xJf .debs/deps.tar.xz -C /tmp/dep; fi
cublas_dir=$(dirname "$(find /usr/local /opt /usr/lib -name 'libcublasLt.so.13*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=$PWD/$BIN/lib:/tmp/dep/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:${cublas_dir}:${LD_LIBRARY_PATH:-}
[[ -e /work/main ]] || { mkdir -p /work && ln -s "$PWD" /work/main; }
