# The CUDA build (MIL_CUDA=ON): compiler, toolkit libraries and the one architecture policy.
#
# MIL's kernels target Hopper only: sm_90a (H100/H200), real machine code, no PTX for other
# chips. This file is the only place that says so; targets never set their own
# CUDA_ARCHITECTURES. Override for experiments with -DMIL_CUDA_ARCHITECTURES=... .
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
set(MIL_CUDA_ARCHITECTURES "90a-real" CACHE STRING "CUDA architectures MIL's kernels are built for")
set(CMAKE_CUDA_ARCHITECTURES ${MIL_CUDA_ARCHITECTURES})
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_EXTENSIONS OFF)
if(CCACHE_PROGRAM)
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
endif()
find_package(CUDAToolkit REQUIRED)

# mil_cuda_warnings: mil_warnings for the C++ sources of a CUDA target (its flags are g++'s,
# so they must not reach nvcc), and nvcc's own set for .cu sources, host side included.
get_target_property(mil_cxx_warning_flags mil_warnings INTERFACE_COMPILE_OPTIONS)
add_library(mil_cuda_warnings INTERFACE)
target_compile_options(mil_cuda_warnings INTERFACE
  "$<$<COMPILE_LANGUAGE:CXX>:${mil_cxx_warning_flags}>"
  "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>")
if(MIL_WERROR)
  target_compile_options(mil_cuda_warnings INTERFACE
    "$<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings;-Xcompiler=-Werror>")
endif()
