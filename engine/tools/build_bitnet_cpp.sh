#!/usr/bin/env bash
# Builds bitnet.cpp (Microsoft's BitNet inference framework) for `trit bench --vs bitnet.cpp` (issue 20).
#
#   bash build_bitnet_cpp.sh [DEST]        # DEST defaults to ./bitnet.cpp; the build lands in DEST/build
#
# microsoft/BitNet keeps its llama.cpp fork as a submodule whose commit is not public; ygqdan/BitNet-linux carries
# the fork in-tree, with the relu² graph of 2B4T (`bitnet-25`). BITNET_CPP_GIT may name a local (bare) copy of that
# repository instead of GitHub. Blobs missing from a partial copy (logos, vocab GGUFs) are skipped: the build needs
# none of them. Only the I2_S path is built (TL2 is not set up for 2B4T), with Debian's clang-19 as bitnet.cpp asks.
# About 5 minutes on two cores.
set -euo pipefail

DEST=$(realpath -m "${1:-bitnet.cpp}")
SRC=${BITNET_CPP_GIT:-https://github.com/ygqdan/BitNet-linux}
REV=${BITNET_CPP_REV:-6d113cd299af7ab14cb1aaf40d2b507c8cdb5402}
JOBS=${JOBS:-2}

if [ -d "$SRC" ]; then
    GIT_DIR=$(git -C "$SRC" rev-parse --absolute-git-dir)
else
    GIT_DIR="$DEST.git"
    [ -d "$GIT_DIR" ] || git clone --bare "$SRC" "$GIT_DIR"
fi

# Export the tree file by file (git archive stops at the first missing blob)
mkdir -p "$DEST"
git --git-dir="$GIT_DIR" ls-tree -r -z "$REV" | while IFS= read -r -d '' entry; do
    read -r mode type sha <<<"${entry%%$'\t'*}"
    path=${entry#*$'\t'}
    [ "$type" = blob ] || continue
    if ! git --git-dir="$GIT_DIR" cat-file -e "$sha" 2>/dev/null; then
        echo "skipped (not in this copy): $path" >&2
        continue
    fi
    mkdir -p "$DEST/$(dirname "$path")"
    rm -f "$DEST/$path"
    if [ "$mode" = 120000 ]; then
        ln -s "$(git --git-dir="$GIT_DIR" cat-file blob "$sha")" "$DEST/$path"
    else
        git --git-dir="$GIT_DIR" cat-file blob "$sha" >"$DEST/$path"
        if [ "$mode" = 100755 ]; then chmod +x "$DEST/$path"; fi
    fi
done

# The one CMake helper the copy lacks: common/CMakeLists.txt runs it to write build-info.cpp
mkdir -p "$DEST/3rdparty/llama.cpp/common/cmake"
cat >"$DEST/3rdparty/llama.cpp/common/cmake/build-info-gen-cpp.cmake" <<'EOF'
set(BUILD_NUMBER 0)
set(BUILD_COMMIT "ygqdan/BitNet-linux")
set(BUILD_COMPILER "${CMAKE_C_COMPILER_ID} ${CMAKE_C_COMPILER_VERSION}")
set(BUILD_TARGET "x86_64")
configure_file(common/build-info.cpp.in common/build-info.cpp)
EOF

if ! command -v clang-19 >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y clang-19
    else
        echo "bitnet.cpp builds with clang-19: sudo apt-get install clang-19" >&2
        exit 1
    fi
fi

cmake -S "$DEST" -B "$DEST/build" -DBITNET_X86_TL2=OFF -DCMAKE_C_COMPILER=clang-19 -DCMAKE_CXX_COMPILER=clang++-19 \
    -DCMAKE_BUILD_TYPE=Release
cmake --build "$DEST/build" -j"$JOBS" --target llama-bench llama-quantize llama-cli
echo "built: $DEST/build/bin/llama-bench and llama-quantize; trit bench --vs bitnet.cpp --bitnet-cpp $DEST/build"
