#!/usr/bin/env bash
# The C kernel test (native/tests/test_kernels.c) for 64-bit ARM, on this x86 machine:
#
#   native/tests/run-aarch64.sh [BUILD_DIR]            cross-build for aarch64 Linux, run under qemu-user three times:
#                                                        - qemu's "max" CPU (it has the dot product): the NEON kernel
#                                                          must be among those tested;
#                                                        - the same with TRIT_KERNEL=scalar (dispatch must obey it);
#                                                        - a Cortex-A72 (no dot product): NEON must report unsupported
#                                                          and the scalar kernel still pass.
#   native/tests/run-aarch64.sh --native [BUILD_DIR]   the same test built for this machine, run with ctest.
#
# BUILD_DIR defaults to ${TMPDIR:-/tmp}/trit-aarch64 (or trit-native-tests); it is reused, so a rerun only rebuilds
# what changed. CMAKE_BUILD_PARALLEL_LEVEL caps the build's jobs (default: the build tool's own). Needs cmake, a C
# compiler, and for aarch64 gcc-aarch64-linux-gnu and qemu-user (Debian/Ubuntu: apt-get install qemu-user
# gcc-aarch64-linux-gnu). Exits non-zero if a tool is missing or any check fails.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
native="$(dirname "$here")"
mode=aarch64
if [[ "${1:-}" == "--native" ]]; then
    mode=native
    shift
fi
build="${1:-${TMPDIR:-/tmp}/trit-$([[ $mode == native ]] && echo native-tests || echo aarch64)}"
sysroot="${TRIT_AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}"

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "run-aarch64.sh: $1 not found${2:+ — $2}" >&2
        exit 2
    fi
}
need cmake
if [[ $mode == aarch64 ]]; then
    need aarch64-linux-gnu-gcc "apt-get install gcc-aarch64-linux-gnu"
    need qemu-aarch64 "apt-get install qemu-user"
fi

configure=(cmake -S "$native" -B "$build" -DTRIT_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Release)
# Ninja when it runs, else CMake's default; a build dir keeps the generator it was first configured with.
if [[ ! -f "$build/CMakeCache.txt" ]] && ninja --version >/dev/null 2>&1; then configure+=(-G Ninja); fi
if [[ $mode == aarch64 ]]; then
    configure+=(-DCMAKE_TOOLCHAIN_FILE="$native/cmake/aarch64-linux-gnu.cmake" -DTRIT_AARCH64_SYSROOT="$sysroot")
fi

start=$SECONDS
echo "== configure and build ($mode) in $build"
mkdir -p "$build"
"${configure[@]}" >"$build/configure.log" 2>&1 || { cat "$build/configure.log" >&2; exit 1; }
cmake --build "$build" --parallel ${CMAKE_BUILD_PARALLEL_LEVEL:-}

if [[ $mode == native ]]; then
    echo "== ctest"
    (cd "$build" && ctest --output-on-failure -V)
    echo "== done in $((SECONDS - start)) s"
    exit 0
fi

status=0
# run NAME QEMU_CPU [VAR=VALUE...]: runs the test, keeps its output in $build/NAME.log, prints the lines that are not
# passing checks (or all of them for the first run), and checks the kernels it tested.
run() {
    local name="$1" cpu="$2" log="$build/$1.log" rc=0
    shift 2
    echo "== $name: qemu-aarch64 -cpu $cpu${*:+ with $*}"
    env "$@" qemu-aarch64 -cpu "$cpu" -L "$sysroot" "$build/test_kernels" >"$log" 2>&1 || rc=$?
    if [[ $name == max ]]; then cat "$log"; else grep -v '^ok ' "$log" || true; fi
    if ((rc != 0)); then
        echo "run-aarch64.sh: $name: test_kernels exited with $rc" >&2
        status=1
    fi
}
run max max
grep -q '^tested kernels:.* neon' "$build/max.log" ||
    { echo "run-aarch64.sh: the neon kernel was not tested on qemu's max CPU" >&2; status=1; }
run scalar max TRIT_KERNEL=scalar
grep -q '^ok .*dispatch: TRIT_KERNEL=scalar is the active kernel' "$build/scalar.log" ||
    { echo "run-aarch64.sh: TRIT_KERNEL=scalar was not obeyed" >&2; status=1; }
run no-dotprod cortex-a72
grep -q '^kernel neon: not supported' "$build/no-dotprod.log" ||
    { echo "run-aarch64.sh: the neon kernel claims support on a CPU without the dot product" >&2; status=1; }

echo "== aarch64: $([[ $status == 0 ]] && echo passed || echo FAILED) in $((SECONDS - start)) s"
exit $status
