# Dependencies of a MIL_OPS_ONLY build: core, the op backends and their tests need only these.
find_package(Threads REQUIRED)
find_package(OpenMP REQUIRED)
find_package(fmt REQUIRED)
if(MIL_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
