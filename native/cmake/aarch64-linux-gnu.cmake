# Cross build for 64-bit ARM Linux with Debian's gcc-aarch64-linux-gnu; qemu-user runs the results (ctest, and
# native/tests/run-aarch64.sh). -cpu max gives qemu every extension it emulates, the dot product among them.
#   cmake -S native -B /tmp/trit-aarch64 -DCMAKE_TOOLCHAIN_FILE=native/cmake/aarch64-linux-gnu.cmake -DTRIT_BUILD_TESTS=ON
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(TRIT_AARCH64_TRIPLE aarch64-linux-gnu CACHE STRING "GNU triple of the cross compiler")
set(TRIT_AARCH64_SYSROOT /usr/${TRIT_AARCH64_TRIPLE} CACHE PATH "Where the target's libc lives (qemu -L)")

set(CMAKE_C_COMPILER ${TRIT_AARCH64_TRIPLE}-gcc)
set(CMAKE_FIND_ROOT_PATH ${TRIT_AARCH64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -cpu max -L ${TRIT_AARCH64_SYSROOT})
