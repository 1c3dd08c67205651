# Kernel fingerprints: one hash per backend over the source files that make up its kernels, so
# that a receipt can say which kernels produced it and `flashlane status` can tell a receipt of
# the current kernels from a stale one (docs/RECEIPTS.md, "Kernel fingerprint").
#
# flashlane_kernel_fingerprints(<source dir> <output header>) writes a header defining
# FLASHLANE_KERNEL_FINGERPRINT_<BACKEND> for sm90, reference_cuda and reference_cpu, and
# FLASHLANE_KERNEL_FINGERPRINT_SM90_<FAMILY> for the sm90 kernel families FWD, BWD and DECODE.
# Each value is the first 16 hex digits of SHA-256 over "<path relative to the source
# dir>\n<SHA-256 of the file>\n" for every file of the set, in sorted path order. Only file
# contents and relative paths enter: the value is the same in every checkout, build folder and
# build configuration (head-dim filter, fast math and compiler are not part of it). Every hashed
# file is a configure dependency, so an edit re-runs the configure step and the header follows;
# the header is rewritten only when a value changes.
#
# A family is the backend's set without the other families' own files: src/sm90/fwd, bwd and
# decode and their entry points sm90_forward.cu, sm90_backward.cu and sm90_decode.cu (none of
# them includes another family's files; src/sm90/common and the backend's dispatch and build
# files belong to every family). An edit of the backward's files changes the sm90 and sm90 bwd
# fingerprints and leaves the forward's and the decode's as they were.
function(flashlane_kernel_fingerprints source_dir output)
  # set name -> globs (relative to source_dir); a glob starting with "!" removes its files
  set(_sm90 "src/sm90/*|src/dispatch/backends/sm90.cpp|cmake/sm90_kernels.cmake")
  set(_fwd "!src/sm90/fwd/*|!src/sm90/sm90_forward.cu")
  set(_bwd "!src/sm90/bwd/*|!src/sm90/sm90_backward.cu")
  set(_decode "!src/sm90/decode/*|!src/sm90/sm90_decode.cu")
  set(_sets
    "sm90|${_sm90}"
    "sm90_fwd|${_sm90}|${_bwd}|${_decode}"
    "sm90_bwd|${_sm90}|${_fwd}|${_decode}"
    "sm90_decode|${_sm90}|${_fwd}|${_bwd}"
    "reference_cuda|src/reference/reference_cuda.cu|src/reference/reference_cuda_kvcache.cu|src/dispatch/backends/reference_cuda.cpp"
    "reference_cpu|src/reference/reference_cpu.cpp|src/reference/reference_cpu_kvcache.cpp|src/dispatch/backends/reference_cpu.cpp")
  set(_content "// Generated at configure time by cmake/kernel_fingerprints.cmake; do not edit.\n#pragma once\n")
  foreach(_set IN LISTS _sets)
    string(REPLACE "|" ";" _parts "${_set}")
    list(POP_FRONT _parts _backend)
    set(_files)
    set(_removed)
    foreach(_glob IN LISTS _parts)
      set(_into _files)
      if(_glob MATCHES "^!(.*)$")
        set(_glob "${CMAKE_MATCH_1}")
        set(_into _removed)
      endif()
      file(GLOB_RECURSE _found LIST_DIRECTORIES false CONFIGURE_DEPENDS
           RELATIVE "${source_dir}" "${source_dir}/${_glob}")
      list(APPEND ${_into} ${_found})
    endforeach()
    list(REMOVE_DUPLICATES _files)
    if(_removed)
      list(REMOVE_ITEM _files ${_removed})
    endif()
    list(SORT _files)
    set(_manifest "")
    foreach(_f IN LISTS _files)
      file(SHA256 "${source_dir}/${_f}" _h)
      string(APPEND _manifest "${_f}\n${_h}\n")
      set_property(DIRECTORY "${source_dir}" APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${source_dir}/${_f}")
    endforeach()
    string(SHA256 _all "${_manifest}")
    string(SUBSTRING "${_all}" 0 16 _short)
    list(LENGTH _files _n)
    string(TOUPPER "${_backend}" _upper)
    string(APPEND _content "#define FLASHLANE_KERNEL_FINGERPRINT_${_upper} \"${_short}\"  // ${_n} files\n")
  endforeach()
  set(_old "")
  if(EXISTS "${output}")
    file(READ "${output}" _old)
  endif()
  if(NOT _old STREQUAL _content)
    file(WRITE "${output}" "${_content}")
  endif()
endfunction()
