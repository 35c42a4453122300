#!/usr/bin/env bash
# The C kernel test (native/tests/test_kernels.c) for 64-bit Windows, on this Linux machine:
#
#   native/tests/run-windows.sh [BUILD_DIR]   cross-build trit.dll and test_kernels.exe with MinGW-w64, check that they
#                                             need no MinGW DLL and that the DLL exports trit.h's functions and nothing
#                                             else, then run the test under wine:
#                                               - through ctest (the toolchain file's emulator): every kernel this CPU
#                                                 runs against the scalar one, and they must be those the CPU reports;
#                                               - once more for each of those kernels, forced with TRIT_KERNEL
#                                                 (dispatch must obey it).
#
# BUILD_DIR defaults to ${TMPDIR:-/tmp}/trit-windows; it is reused, so a rerun only rebuilds what changed.
# CMAKE_BUILD_PARALLEL_LEVEL caps the build's jobs. wine runs in a throwaway prefix under a temporary directory (its
# first start there takes a few seconds). Needs cmake, MinGW-w64 with the posix thread model and wine (Debian 12:
# apt-get install --no-install-recommends gcc-mingw-w64-x86-64-posix wine64 wine). Exits non-zero if a tool is
# missing or any check fails.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
native="$(dirname "$here")"
build="${1:-${TMPDIR:-/tmp}/trit-windows}"
triple=x86_64-w64-mingw32
install_hint="apt-get install --no-install-recommends gcc-mingw-w64-x86-64-posix wine64 wine"

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "run-windows.sh: $1 not found — $install_hint" >&2
        exit 2
    fi
}
need cmake
need $triple-gcc-posix
need $triple-objdump
# Debian's wine package puts wine and wineserver on PATH; wine64 alone has them only in /usr/lib/wine
export PATH="$PATH:/usr/lib/wine"
wine=$(command -v wine || command -v wine64 || true)
[[ -n "$wine" ]] || need wine

configure=(cmake -S "$native" -B "$build" -DTRIT_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_TOOLCHAIN_FILE="$native/cmake/$triple.cmake")
if [[ ! -f "$build/CMakeCache.txt" ]] && ninja --version >/dev/null 2>&1; then configure+=(-G Ninja); fi

start=$SECONDS
echo "== configure and build (windows, $triple) in $build"
mkdir -p "$build"
"${configure[@]}" >"$build/configure.log" 2>&1 || { cat "$build/configure.log" >&2; exit 1; }
cmake --build "$build" --parallel ${CMAKE_BUILD_PARALLEL_LEVEL:-}

status=0
fail() {
    echo "run-windows.sh: $*" >&2
    status=1
}

echo "== trit.dll and test_kernels.exe: imports and exports"
for f in trit.dll test_kernels.exe; do
    [[ -f "$build/$f" ]] || { fail "$build/$f was not built"; continue; }
    imports=$($triple-objdump -p "$build/$f" | sed -n 's/^\s*DLL Name: //p' | tr '\n' ' ')
    echo "$f imports: $imports"
    # Windows' own DLLs only: a MinGW runtime (libgcc_s_seh-1.dll, libwinpthread-1.dll ...) would have to ship beside
    for dll in $imports; do
        [[ "${dll,,}" =~ ^(kernel32|msvcrt|ucrtbase|advapi32|ntdll|user32|trit)\.dll$|^api-ms-win- ]] ||
            fail "$f needs $dll, which is not part of Windows"
    done
done
# exactly the TRIT_API functions of trit.h
want=$(sed -n 's/^TRIT_API[^(]*[ *]\(trit_[a-z0-9_]*\)(.*/\1/p' "$native/include/trit.h" | sort)
got=$($triple-objdump -p "$build/trit.dll" | sed -n '/\[Ordinal\/Name Pointer\] Table/,/^$/s/^\s*\[ *[0-9]*\] //p' | sort)
if [[ -n "$want" && "$want" == "$got" ]]; then
    echo "trit.dll exports the $(wc -l <<<"$want") functions of trit.h and nothing else"
else
    fail "trit.dll's exports differ from trit.h's TRIT_API functions:"
    diff <(echo "$want") <(echo "$got") | sed 's/^/  /' >&2 || true
fi

# A throwaway prefix: wine creates it on first start (no Mono or Gecko: the test needs neither)
prefix="$(mktemp -d "${TMPDIR:-/tmp}/trit-wine.XXXXXX")"
export WINEPREFIX="$prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
# stop this prefix's wineserver (it lingers a few seconds after the last program) before removing the prefix
trap '{ wineserver -k || wineserver64 -k; } >/dev/null 2>&1; rm -rf "$prefix"' EXIT

echo "== ctest: test_kernels.exe under $wine"
(cd "$build" && ctest --output-on-failure -V) >"$build/ctest.log" 2>&1 || fail "ctest failed"
sed 's/^1: //' "$build/ctest.log" | sed -n '/^trit /,/ passed, /p'
supported=$(sed -n 's/^1: kernel \([a-z0-9]*\): supported$/\1/p' "$build/ctest.log")
# the kernels the CPU itself reports (as tests/test_native_ops.py reads them): Windows must let the same ones run
if [[ -r /proc/cpuinfo ]]; then
    flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    has() { for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done; }
    expect="scalar"
    has avx2 fma f16c && expect="avx2 $expect"
    has avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512vbmi && expect="avx512vnni $expect"
    [[ "$(echo $supported)" == "$expect" ]] ||
        fail "under wine the supported kernels are '$(echo $supported)', the CPU reports '$expect'"
fi

# run NAME [VAR=VALUE...]: the test under wine, its output in $build/NAME.log; prints the lines that are not passing
# checks
run() {
    local name="$1" log="$build/$1.log" rc=0
    shift
    echo "== $name: wine test_kernels.exe${*:+ with $*}"
    (cd "$build" && env "$@" "$wine" ./test_kernels.exe) >"$log" 2>&1 || rc=$?
    grep -v '^ok ' "$log" || true
    ((rc == 0)) || fail "$name: test_kernels.exe exited with $rc"
}
for k in $supported; do
    run "kernel-$k" TRIT_KERNEL="$k"
    grep -q "^ok .*dispatch: TRIT_KERNEL=$k is the active kernel" "$build/kernel-$k.log" ||
        fail "TRIT_KERNEL=$k was not obeyed"
done

echo "== windows: $([[ $status == 0 ]] && echo passed || echo FAILED) in $((SECONDS - start)) s"
exit $status
