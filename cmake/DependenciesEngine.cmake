# Dependencies of a MIL_ENGINE_ONLY build: those of the op backends plus the tokenizer's.
# PCRE2 comes from pkg-config where there is one, else from a plain search (a GPU machine
# with the headers unpacked under CMAKE_PREFIX_PATH and no pkg-config).
include(${CMAKE_CURRENT_LIST_DIR}/DependenciesOps.cmake)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(PCRE2 QUIET IMPORTED_TARGET libpcre2-8)
endif()
if(NOT TARGET PkgConfig::PCRE2)
  find_path(MIL_PCRE2_INCLUDE_DIR pcre2.h REQUIRED)
  find_library(MIL_PCRE2_LIBRARY pcre2-8 REQUIRED)
  add_library(PkgConfig::PCRE2 UNKNOWN IMPORTED)
  set_target_properties(PkgConfig::PCRE2 PROPERTIES IMPORTED_LOCATION "${MIL_PCRE2_LIBRARY}"
                        INTERFACE_INCLUDE_DIRECTORIES "${MIL_PCRE2_INCLUDE_DIR}")
endif()
find_package(ICU REQUIRED COMPONENTS uc)
