# Cross build for 64-bit Windows with Debian's MinGW-w64 (gcc-mingw-w64-x86-64-posix: the posix thread model, whose
# winpthreads gives the library its pthreads); wine runs the results (ctest, and native/tests/run-windows.sh).
#   cmake -S native -B /tmp/trit-windows -DCMAKE_TOOLCHAIN_FILE=native/cmake/x86_64-w64-mingw32.cmake -DTRIT_BUILD_TESTS=ON
# The build makes trit.dll (and its import library libtrit.dll.a) and test_kernels.exe in the build directory, linked
# statically against libgcc and winpthreads (CMakeLists.txt), so they run with no MinGW DLL beside them.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR AMD64)

set(TRIT_MINGW_TRIPLE x86_64-w64-mingw32 CACHE STRING "GNU triple of the cross compiler")
# -posix: the posix thread model; Debian's unsuffixed name is an alternative that may point at the win32 one
find_program(TRIT_MINGW_CC NAMES ${TRIT_MINGW_TRIPLE}-gcc-posix ${TRIT_MINGW_TRIPLE}-gcc REQUIRED)
set(CMAKE_C_COMPILER ${TRIT_MINGW_CC})
set(CMAKE_RC_COMPILER ${TRIT_MINGW_TRIPLE}-windres)
set(CMAKE_FIND_ROOT_PATH /usr/${TRIT_MINGW_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Debian's wine package puts wine on PATH; wine64 alone has only /usr/lib/wine/wine64
find_program(TRIT_WINE NAMES wine wine64 PATHS /usr/lib/wine)
if(TRIT_WINE)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${TRIT_WINE})
endif()
