# Writes the build-info header (version, git commit, compiled architectures) at every build, so
# receipts name the commit that was actually built, not the one present at configure time.
# Inputs: SOURCE_DIR, OUTPUT, VERSION, ARCHS; environment FLASHLANE_GIT_COMMIT overrides git.
# Rewrites OUTPUT only when its content changes.
execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY ${SOURCE_DIR}
                OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
execute_process(COMMAND git status --porcelain --untracked-files=no WORKING_DIRECTORY ${SOURCE_DIR}
                OUTPUT_VARIABLE dirty OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT commit)
  set(commit "unknown")
elseif(dirty)
  set(commit "${commit}-dirty")
endif()
# A build from a copy whose git metadata is not the source's (the GPU machine's copy of the work
# tree) is told the commit instead (scripts/device/python_pack.sh records it).
if(NOT "$ENV{FLASHLANE_GIT_COMMIT}" STREQUAL "")
  set(commit "$ENV{FLASHLANE_GIT_COMMIT}")
endif()
set(content "// Generated at build time by cmake/write_build_info.cmake.
#pragma once
#define FLASHLANE_VERSION_STRING \"${VERSION}\"
#define FLASHLANE_GIT_COMMIT \"${commit}\"
#define FLASHLANE_COMPILED_ARCHS \"${ARCHS}\"
")
set(old "")
if(EXISTS ${OUTPUT})
  file(READ ${OUTPUT} old)
endif()
if(NOT old STREQUAL content)
  file(WRITE ${OUTPUT} "${content}")
endif()
