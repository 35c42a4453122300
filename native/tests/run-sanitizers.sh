#!/usr/bin/env bash
# The C kernel test (native/tests/test_kernels.c) under AddressSanitizer and UndefinedBehaviorSanitizer:
#
#   native/tests/run-sanitizers.sh [BUILD_DIR]   build libtrit and test_kernels with TRIT_SANITIZE=ON, then run the
#                                                test once as dispatch chooses and once more for each kernel this CPU
#                                                runs, forced with TRIT_KERNEL. Any sanitizer report ends that run
#                                                with a non-zero status (-fno-sanitize-recover=all, halt_on_error).
#
# Last it prints the line "preload: LIBASAN LIBUBSAN": the runtimes of the compiler that built libtrit, which a program
# not built with the sanitizers (python) must preload to load BUILD_DIR/libtrit.so (tests/test_native_sanitizers.py
# runs the engine tests that way). BUILD_DIR defaults to ${TMPDIR:-/tmp}/trit-sanitizers; it is reused, so a rerun
# only rebuilds what changed. CMAKE_BUILD_PARALLEL_LEVEL caps the build's jobs. Needs cmake and GCC or Clang with the
# sanitizer runtimes (Debian: libasan and libubsan come with gcc). Exits 3 if the compiler cannot build with them,
# 2 if cmake is missing, 1 if any check fails.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
native="$(dirname "$here")"
build="${1:-${TMPDIR:-/tmp}/trit-sanitizers}"
flags=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g)

command -v cmake >/dev/null 2>&1 || { echo "run-sanitizers.sh: cmake not found — apt-get install cmake" >&2; exit 2; }
mkdir -p "$build"

# The compiler CMake would pick must link a sanitized program, or there is nothing to run
cc="${CC:-cc}"
echo 'int main(void) { return 0; }' >"$build/probe.c"
if ! "$cc" "${flags[@]}" "$build/probe.c" -o "$build/probe" >"$build/probe.log" 2>&1; then
    echo "run-sanitizers.sh: $cc cannot build with ${flags[0]}: $(head -c 300 "$build/probe.log")" >&2
    exit 3
fi

configure=(cmake -S "$native" -B "$build" -DTRIT_BUILD_TESTS=ON -DTRIT_SANITIZE=ON -DCMAKE_BUILD_TYPE=Release)
if [[ ! -f "$build/CMakeCache.txt" ]] && ninja --version >/dev/null 2>&1; then configure+=(-G Ninja); fi

start=$SECONDS
echo "== configure and build (sanitizers) in $build"
"${configure[@]}" >"$build/configure.log" 2>&1 || { cat "$build/configure.log" >&2; exit 1; }
cmake --build "$build" --parallel ${CMAKE_BUILD_PARALLEL_LEVEL:-}

# abort_on_error: a report ends in SIGABRT, never in an exit status a caller could mistake for a failed check
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1}" UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:abort_on_error=1}"
status=0
# run NAME [VAR=VALUE...]: the test, its output in $build/NAME.log; prints the lines that are not passing checks
run() {
    local name="$1" log="$build/$1.log" rc=0
    shift
    echo "== $name: test_kernels${*:+ with $*}"
    env "$@" "$build/test_kernels" >"$log" 2>&1 || rc=$?
    grep -v '^ok ' "$log" || true
    if ((rc != 0)); then
        echo "run-sanitizers.sh: $name: test_kernels exited with $rc" >&2
        status=1
    fi
}
run dispatch
for k in $(sed -n 's/^kernel \([a-z0-9]*\): supported$/\1/p' "$build/dispatch.log"); do
    run "kernel-$k" TRIT_KERNEL="$k"
    grep -q "^ok .*dispatch: TRIT_KERNEL=$k is the active kernel" "$build/kernel-$k.log" ||
        { echo "run-sanitizers.sh: TRIT_KERNEL=$k was not obeyed" >&2; status=1; }
done

compiler=$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
echo "preload: $("$compiler" -print-file-name=libasan.so) $("$compiler" -print-file-name=libubsan.so)"
echo "== sanitizers: $([[ $status == 0 ]] && echo passed || echo FAILED) in $((SECONDS - start)) s"
exit $status
