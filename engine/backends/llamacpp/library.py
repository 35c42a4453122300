"""llama-cpp-python's C API (llama.h, mirrored by llama_cpp.llama_cpp), loaded when first needed, with llama.cpp's log
kept for error messages and never printed."""

from __future__ import annotations

import ctypes
import os
import threading

from trit.engine.errors import EngineError

INSTALL_HINT = 'pip install "trit[gguf]"'


class LlamaCppMissing(EngineError):
    """llama-cpp-python or gguf is not installed."""


class LlamaCppError(EngineError):
    """llama.cpp failed to load or run a model."""


_lib = None
_lib_lock = threading.Lock()


class _Log:
    """llama.cpp's log: nothing is printed; the last error lines are kept to explain a failure."""

    KEEP = 20

    def __init__(self):
        self.errors: list[tuple[int, str]] = []  # (sequence number, line)
        self.count = 0
        self._level = 0
        self._pending = ""

    def __call__(self, level: int, text: bytes, user_data) -> None:
        try:
            if level == 5:  # GGML_LOG_LEVEL_CONT: continues the previous message
                level = self._level
            self._level = level
            if level >= 4:  # GGML_LOG_LEVEL_ERROR (ggml's numbering here: 1 DEBUG, 2 INFO, 3 WARN, 4 ERROR)
                self._pending += (text or b"").decode("utf-8", errors="replace")
                *lines, self._pending = self._pending.split("\n")
                for line in lines:
                    if line.strip():
                        self.errors.append((self.count, line.strip()))
                        self.count += 1
                del self.errors[:-self.KEEP]
        except Exception:  # never raise into C
            pass

    def mark(self) -> int:
        return self.count

    def reason(self, since: int = 0) -> str:
        """The most telling error line logged since mark(): llama.cpp's 'error loading model: X' if there is one."""
        lines = [line for n, line in self.errors if n >= since]
        for line in reversed(lines):
            if "error loading model: " in line:
                return line.split("error loading model: ", 1)[1]
        return lines[-1].split(": ", 1)[-1] if lines else "no reason given"


log = _Log()
_log_callback = None  # the ctypes callback must live as long as the library may call it


def llama():
    """llama_cpp.llama_cpp (the C API), imported once with its log silenced and its backend initialised."""
    global _lib, _log_callback
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is None:
            try:
                from llama_cpp import llama_cpp as lib
            except ImportError:
                raise LlamaCppMissing(f"GGUF models run through llama-cpp-python, which is not installed: "
                                      f"{INSTALL_HINT}") from None
            except (OSError, RuntimeError) as e:  # the shared library is there but does not load
                raise LlamaCppMissing(f"llama-cpp-python is installed but its library does not load ({e}): "
                                      f"reinstall it with {INSTALL_HINT}") from None
            _log_callback = lib.llama_log_callback(log)
            lib.llama_log_set(_log_callback, ctypes.c_void_p(0))
            lib.llama_backend_init()
            _lib = lib
    return _lib


def llama_cpp_version() -> str | None:
    try:
        import importlib.metadata

        return importlib.metadata.version("llama-cpp-python")
    except Exception:
        return None


def default_threads() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:
        n = None
    return max(1, n or os.cpu_count() or 1)
