#!/usr/bin/env bash
# Build the `trit` binary for the platform this runs on, from this checkout:
#   dist/trit/trit                       one folder: the program and its _internal/ folder (fast start)
#   dist/trit-<version>-<os>-<arch>      one file: unpacks itself into a temporary folder at every start
# An isolated virtual environment (build/packaging/venv) gets `pip install .` (CMake builds the native library, as
# for any user) and PyInstaller (packaging/requirements.txt); nothing outside the checkout is changed.
# Needs: Python >= 3.10 with venv, a C compiler, CMake >= 3.18. PYTHON picks the interpreter (default python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
work=$root/build/packaging
venv=$work/venv
# Windows (Git Bash or MSYS2, untested): a venv keeps its programs in Scripts/ and they end in .exe.
case "${OSTYPE:-}" in
    msys* | cygwin* | win32*) venv_python=$venv/Scripts/python.exe ;;
    *) venv_python=$venv/bin/python ;;
esac
start=$(date +%s)

if [[ ! -x $venv_python ]]; then
    "$python" -m venv "$venv"
fi
"$venv_python" -m pip install --quiet --upgrade pip
# Not editable: the binary is made from what `pip install .` installs, native library included.
"$venv_python" -m pip install --quiet -r packaging/requirements.txt "$root"
installed=$(date +%s)

rm -rf dist/trit dist/trit-*
# From outside the checkout, so that the analysis sees the installed packages, not the source folders.
(cd "$work" && "$venv_python" -m PyInstaller --noconfirm --log-level WARN \
    --distpath "$root/dist" --workpath "$work/pyinstaller" "$root/packaging/trit.spec")
done_at=$(date +%s)

onefile=$(ls dist/trit-* | head -n1)
echo
echo "built in $((done_at - start)) s (install $((installed - start)) s, PyInstaller $((done_at - installed)) s):"
echo "  one folder  dist/trit/   $(du -sh dist/trit | cut -f1) in $(find dist/trit -type f | wc -l) files"
echo "  one file    $onefile   $(du -h "$onefile" | cut -f1)"
if command -v objdump >/dev/null; then  # the newest glibc symbol any file of the bundle asks for
    glibc=$(find dist/trit -type f \( -name '*.so*' -o -name trit \) -exec objdump -T {} + 2>/dev/null |
        grep -o 'GLIBC_2\.[0-9.]*' | sort -V | tail -n1)
    echo "  runs on Linux with glibc >= ${glibc#GLIBC_} (this machine's: $(ldd --version | head -n1 | awk '{print $NF}'))"
fi
echo "smoke test:  $venv_python packaging/smoke_test.py"
