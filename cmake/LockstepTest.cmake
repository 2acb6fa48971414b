# lockstep_add_test(<name> SOURCES <src...> LIBS <lib...> [LABELS <label...>]
#                   [TIMEOUT <seconds>])
# Builds one GoogleTest binary and registers it with CTest.
function(lockstep_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest lockstep_gtest_main
                        GTest::gmock Threads::Threads)
  add_test(NAME ${name} COMMAND ${name})
  # A binary whose tests were all skipped (GTEST_SKIP) exits 77
  # (tests/testing/main/gtest_main.cc): CTest reports it as skipped.
  set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE 77
    ENVIRONMENT "LOCKSTEP_BUILD_DIR=${PROJECT_BINARY_DIR};LOCKSTEP_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  if(ARG_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}")
  endif()
  if(ARG_TIMEOUT)
    set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT})
  else()
    set_tests_properties(${name} PROPERTIES TIMEOUT 600)
  endif()
endfunction()
