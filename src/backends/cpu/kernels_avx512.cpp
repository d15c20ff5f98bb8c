// AVX-512 kernels: not yet written; the AVX2 table serves these CPUs meanwhile.
#include "backends/cpu/kernels.h"

namespace mil::cpu {

const Kernels* avx512_kernels() { return nullptr; }

}  // namespace mil::cpu
