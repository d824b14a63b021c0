# Fails the build when one SIMD level's copy of the CPU kernels defines a
# global name outside its level's namespace (core/simd_level.h).
#
# The linker keeps one definition per global name for the whole library. An
# inline function or template instantiation that two level copies both define
# (say a std::vector<float> member) could then reach the AVX2 code from the
# AVX-512 copy, or the reverse, and crash a CPU that lacks the instructions.
# Names are checked mangled: the level's namespace appears in them as
# <length><name>, e.g. 6cpu_v3.
#
# -DNM=<nm> -DNAMESPACE=<cpu_v3> -DOBJECTS=<object files> -DSTAMP=<file>
string(LENGTH "${NAMESPACE}" _len)
set(_tag "${_len}${NAMESPACE}")
set(_bad "")
foreach(_obj IN LISTS OBJECTS)
  execute_process(COMMAND "${NM}" --defined-only "${_obj}"
                  OUTPUT_VARIABLE _out RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "nm failed on ${_obj}")
  endif()
  string(REGEX MATCHALL "[^\n]+" _lines "${_out}")
  foreach(_line IN LISTS _lines)
    # "<address> <type> <name>": upper-case types, u and i are global.
    # DW.ref.__gxx_personality_v0 is the exception personality's address,
    # the same in every object.
    if(_line MATCHES "^[0-9a-fA-F]* ([A-Zui]) ([^ ]+)$")
      set(_type "${CMAKE_MATCH_1}")
      set(_name "${CMAKE_MATCH_2}")
      string(FIND "${_name}" "${_tag}" _at)
      string(FIND "${_name}" "DW.ref." _personality)
      if(_at EQUAL -1 AND NOT _personality EQUAL 0)
        string(APPEND _bad "  ${_type} ${_name}\n")
      endif()
    endif()
  endforeach()
endforeach()
if(_bad)
  message(FATAL_ERROR "The ${NAMESPACE} copy of fastiou's CPU kernels defines global names outside "
                      "its namespace (c++filt names them); another level's copy could replace them:\n${_bad}"
                      "Keep every inline definition the kernels use in FASTIOU_LEVEL_BEGIN/END "
                      "(core/simd_level.h), and standard containers out of the kernels.")
endif()
file(WRITE "${STAMP}" "ok\n")
