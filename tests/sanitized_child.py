"""A pytest plugin for the child pytest of tests/test_native_sanitizers.py (`-p sanitized_child`), which runs engine
tests with the ASan + UBSan build of libtrit (TRIT_LIBRARY) and the sanitizer runtimes preloaded.

- It loads the library before any test and refuses to run unless the file mapped into this process is TRIT_LIBRARY's,
  built with both sanitizers, and the AddressSanitizer runtime is mapped too; the summary line "sanitized libtrit:
  PATH" tells the parent so.
- It hands native code heap copies of the weights instead of views of the memory-mapped safetensors file: ASan puts a
  poisoned zone around each heap block, so a kernel reading past the end of a tensor is reported, where in the mapped
  file it would silently read the next tensor's bytes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from trit.engine.formats.safetensors_file import SafetensorsFile
from trit.engine.runtime import native

_mapped_array = SafetensorsFile.array


def _heap_array(self: SafetensorsFile, name: str) -> np.ndarray:
    return np.array(_mapped_array(self, name))  # np.array copies: its own malloc'd block


def _mapped_files() -> set[Path]:
    return {Path(line.split(None, 5)[5]) for line in Path("/proc/self/maps").read_text().splitlines()
            if len(line.split(None, 5)) == 6}


def pytest_configure(config):
    wanted = Path(os.environ["TRIT_LIBRARY"]).resolve()  # KeyError: the parent must set it
    native.lib()
    mapped = {p.resolve() for p in _mapped_files() if p.is_absolute() and p.exists()}
    if wanted not in mapped:
        raise pytest.UsageError(f"TRIT_LIBRARY={wanted} is not the libtrit mapped into this process")
    code = wanted.read_bytes()
    if b"__asan_report_load" not in code or b"__ubsan_handle_" not in code:
        raise pytest.UsageError(f"{wanted} is not built with -fsanitize=address,undefined (TRIT_SANITIZE=ON)")
    if not any(p.name.startswith("libasan.so") for p in mapped):
        raise pytest.UsageError("the AddressSanitizer runtime is not loaded (LD_PRELOAD)")
    config._sanitized_libtrit = wanted
    SafetensorsFile.array = _heap_array


def pytest_terminal_summary(terminalreporter, config):
    terminalreporter.write_line(f"sanitized libtrit: {config._sanitized_libtrit}")
