# mil_warnings: the warning set every MIL target uses.
add_library(mil_warnings INTERFACE)
target_compile_options(mil_warnings INTERFACE -Wall -Wextra -Wpedantic -Wshadow=local
                                              -Wnon-virtual-dtor)
if(MIL_WERROR)
  target_compile_options(mil_warnings INTERFACE -Werror)
endif()
