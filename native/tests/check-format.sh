#!/usr/bin/env bash
# Checks that every C file under native/ is formatted as native/.clang-format says:
#
#   native/tests/check-format.sh          lists the files clang-format would change; exits 1 if there are any
#   native/tests/check-format.sh --fix    formats them in place
#
# The tree is kept formatted with clang-format 14 (Debian 12's: apt-get install clang-format); another major version
# may format some lines differently. CLANG_FORMAT names the binary to use. Exits 2 if it is missing.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
native="$(dirname "$here")"
clang_format="${CLANG_FORMAT:-clang-format}"
fix=0
if [[ "${1:-}" == "--fix" ]]; then
    fix=1
    shift
fi

if ! command -v "$clang_format" >/dev/null 2>&1; then
    echo "check-format.sh: $clang_format not found — apt-get install clang-format" >&2
    exit 2
fi

# The C files git knows of (tracked, or new and not ignored), else every one under native/.
cd "$native"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.c' '*.h')
else
    mapfile -t files < <(find . -name '*.[ch]' -not -path './build*' | sort)
fi
if ((${#files[@]} == 0)); then
    echo "check-format.sh: no C files under $native" >&2
    exit 2
fi

if ((fix)); then
    "$clang_format" -i "${files[@]}"
    echo "check-format.sh: formatted ${#files[@]} files"
    exit 0
fi

bad=()
for f in "${files[@]}"; do
    "$clang_format" --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
version="$("$clang_format" --version)"
if ((${#bad[@]})); then
    echo "check-format.sh: not formatted (native/tests/check-format.sh --fix formats them):" >&2
    printf '  native/%s\n' "${bad[@]}" >&2
    if [[ ! "$version" =~ version\ 14\. ]]; then
        echo "check-format.sh: note: the tree is formatted with clang-format 14; this is $version" >&2
    fi
    exit 1
fi
echo "check-format.sh: ${#files[@]} files formatted ($version)"
