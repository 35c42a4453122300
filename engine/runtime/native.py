"""The ctypes binding to the native library (native/include/trit.h): the only Python file that touches ctypes.

ctypes.CDLL releases the GIL for the length of every call, so a forward pass never blocks other Python threads.
"""

from __future__ import annotations

import ctypes as C
import operator
import os
import sys
from pathlib import Path

import numpy as np

from trit.engine.errors import InputError, NativeError

API_VERSION = 4
E_RANGE = -3
MAX_THREADS = 256  # trit.h's TRIT_MAX_THREADS
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1

LOGITS_NONE, LOGITS_LAST, LOGITS_ALL = 0, 1, 2
SCALE_MULTIPLY, SCALE_DIVIDE = 0, 1


class Config(C.Structure):
    _fields_ = [(name, C.c_int32) for name in (
        "hidden_size", "intermediate_size", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size",
        "max_positions")] + [("rope_theta", C.c_float), ("rms_eps", C.c_float), ("scale_mode", C.c_int32),
                             ("ternary_format", C.c_int32), ("block", C.c_int32)]


TERNARY_FORMATS = {"tq2": 0, "t5": 1}
BLOCKS = {"bitnet": 0, "llama": 1, "1bitllm": 2}  # engine.formats.checkpoint's FAMILY_* -> trit.h's TRIT_BLOCK_*


_f32p, _u8p, _u16p = C.POINTER(C.c_float), C.POINTER(C.c_uint8), C.POINTER(C.c_uint16)


class LayerWeights(C.Structure):
    _fields_ = [
        ("input_norm", _f32p), ("q", _u8p), ("k", _u8p), ("v", _u8p), ("o", _u8p),
        ("attn_sub_norm", _f32p), ("post_attn_norm", _f32p),
        ("gate", _u8p), ("up", _u8p), ("down", _u8p), ("ffn_sub_norm", _f32p),
    ] + [(f"{p}_scale", C.c_float) for p in ("q", "k", "v", "o", "gate", "up", "down")]


class Weights(C.Structure):
    _fields_ = [("embed", _u16p), ("final_norm", _f32p), ("layers", C.POINTER(LayerWeights)),
                ("head_type", C.c_int32), ("head", C.c_void_p), ("head_scales", C.c_void_p), ("output", _u16p)]


HEAD_TYPES = {"bf16": 0, "q8": 1, "q4": 2}
# The KV cache's element types (trit.h TRIT_KV_*): fp16, exact fp32, int8 with a scale per position and kv head.
KV_TYPES = {"f16": 0, "f32": 1, "q8": 2}
# q8 costs about what f16 costs against the exact f32 cache on the demo model's held-out text (`trit bench demo
# --kv-quality`: mean KL 3.1e-5 nats vs 1.7e-5, top-1 99.41% vs 99.51%, perplexity the same to 4 digits), in half the
# memory: a full 4096-token conversation of the 2B4T peaks ~170 MB lower, and decoding deep in the context reads half
# the cache's bytes.
DEFAULT_KV = "q8"


def library_filename() -> str:
    if sys.platform == "darwin":
        return "libtrit.dylib"
    if sys.platform == "win32":
        return "trit.dll"
    return "libtrit.so"


def _bind(lib: C.CDLL) -> C.CDLL:
    def fn(name, restype, *argtypes):
        f = getattr(lib, name)
        f.restype, f.argtypes = restype, list(argtypes)

    P = C.c_void_p
    fn("trit_version", C.c_char_p)
    fn("trit_api_version", C.c_int)
    fn("trit_last_error", C.c_char_p)
    fn("trit_kernel_count", C.c_int)
    fn("trit_kernel_name", C.c_char_p, C.c_int)
    fn("trit_kernel_supported", C.c_int, C.c_int)
    fn("trit_kernel_active", C.c_char_p)
    fn("trit_kernel_select", C.c_int, C.c_char_p)
    fn("trit_model_create", P, C.POINTER(Config), C.POINTER(Weights), C.c_int)
    fn("trit_model_free", None, P)
    fn("trit_model_threads", C.c_int, P)
    fn("trit_model_set_threads", C.c_int, P, C.c_int)
    fn("trit_find_invalid_code", C.c_int64, P, C.c_int64)
    fn("trit_t5_size", C.c_int64, C.c_int, C.c_int)
    fn("trit_convert_tq2_to_t5", C.c_int, P, P, C.c_int, C.c_int)
    fn("trit_kernel_preferred_format", C.c_int)
    fn("trit_find_invalid_t5", C.c_int64, P, C.c_int64)
    fn("trit_measure_read_bandwidth", C.c_double, P, C.c_int64, C.c_int)
    fn("trit_context_create", P, P, C.c_int, C.c_int)
    fn("trit_context_create_kv", P, P, C.c_int, C.c_int, C.c_int)
    fn("trit_context_kv_type", C.c_int, P)
    fn("trit_context_free", None, P)
    fn("trit_context_n_past", C.c_int, P)
    fn("trit_context_n_ctx", C.c_int, P)
    fn("trit_context_truncate", C.c_int, P, C.c_int)
    fn("trit_context_kv_row_bytes", C.c_int64, P)
    fn("trit_context_read_kv", C.c_int, P, C.c_int, C.c_int, P)
    fn("trit_context_write_kv", C.c_int, P, C.c_int, C.c_int, P)
    fn("trit_eval", C.c_int, P, P, C.c_int, P, C.c_int)
    fn("trit_op_rmsnorm", None, P, P, P, C.c_int, C.c_float)
    fn("trit_op_quantize", C.c_float, P, P, C.c_int)
    fn("trit_op_ternary_matmul", C.c_int, C.c_int, C.c_int, P, P, C.c_int, C.c_int, P, C.c_int)
    fn("trit_op_rope", None, P, C.c_int, C.c_int, C.c_int, C.c_float)
    fn("trit_op_attention", C.c_int, P, P, P, P, C.c_int, C.c_int, C.c_int, C.c_int, C.c_int)
    fn("trit_op_attention_kv", C.c_int, P, P, P, P, C.c_int, C.c_int, C.c_int, C.c_int, C.c_int, C.c_int, C.c_int)
    fn("trit_op_relu2_sums", None, P, P, C.c_float, P, C.c_float, C.c_int)
    fn("trit_op_silu_sums", None, P, P, C.c_float, P, C.c_float, C.c_int)
    fn("trit_op_to_f16", None, P, P, C.c_int)
    fn("trit_op_output_head", C.c_int, C.c_int, P, P, P, P, C.c_int, C.c_int)
    return lib


_lib: C.CDLL | None = None


def lib() -> C.CDLL:
    """The loaded library (once per process). TRIT_LIBRARY may point at another build of it."""
    global _lib
    if _lib is None:
        path = Path(os.environ.get("TRIT_LIBRARY") or Path(__file__).with_name(library_filename()))
        try:
            loaded = _bind(C.CDLL(str(path)))
        except OSError as e:
            raise NativeError(f"cannot load the native library {path}: {e} — reinstall Trit (pip install .)") from None
        if loaded.trit_api_version() != API_VERSION:
            raise NativeError(f"{path} speaks API {loaded.trit_api_version()}, this Python code {API_VERSION}: "
                              "reinstall Trit")
        forced = os.environ.get("TRIT_KERNEL")
        if forced and loaded.trit_kernel_select(forced.encode()) != 0:
            raise NativeError(f"TRIT_KERNEL={forced}: {last_error(loaded)}; this CPU runs: "
                              f"{', '.join(kernels(loaded))}")
        _lib = loaded
    return _lib


def last_error(handle: C.CDLL | None = None) -> str:
    return (handle or lib()).trit_last_error().decode(errors="replace")


def c_int(value, what: str) -> int:
    """value, checked to fit a C int before ctypes passes it: ctypes keeps only the low 32 bits, so 2^32 + 1 would
    arrive as 1."""
    value = operator.index(value)
    if not INT_MIN <= value <= INT_MAX:
        raise InputError(f"{what}: {value} is outside what the native library takes ({INT_MIN}..{INT_MAX})")
    return value


def c_threads(n) -> int:
    """A thread count for the native library: 0 for every core, at most MAX_THREADS (its own message past that)."""
    n = operator.index(n)
    if n > MAX_THREADS:
        raise InputError(f"threads: {n} is more than {MAX_THREADS}")
    return c_int(n, "threads")


def check(rc: int) -> None:
    if rc != 0:
        raise (InputError if rc == E_RANGE else NativeError)(last_error())


def kernels(handle: C.CDLL | None = None) -> list[str]:
    """Names of the kernels this CPU can run, best first."""
    h = handle or lib()
    return [h.trit_kernel_name(i).decode() for i in range(h.trit_kernel_count()) if h.trit_kernel_supported(i)]


def all_kernels() -> list[str]:
    h = lib()
    return [h.trit_kernel_name(i).decode() for i in range(h.trit_kernel_count())]


def active_kernel() -> str:
    return lib().trit_kernel_active().decode()


def select_kernel(name: str) -> None:
    check(lib().trit_kernel_select(name.encode()))


def ptr(a: np.ndarray) -> int:
    """The address of a C-contiguous array's first element (read-only maps included)."""
    if not a.flags.c_contiguous:
        raise ValueError("array must be C-contiguous")
    return a.ctypes.data


def find_invalid_code(packed: np.ndarray) -> int:
    """Offset of the first TQ2 byte holding the code 3, or -1."""
    return lib().trit_find_invalid_code(ptr(packed), packed.nbytes)


def find_invalid_t5(packed: np.ndarray) -> int:
    """Offset of the first T5 byte past 242, or -1."""
    return lib().trit_find_invalid_t5(ptr(packed), packed.nbytes)


# ---- single operations, for tests ---------------------------------------------------------------------------------

def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def op_rmsnorm(x, weight, eps: float) -> np.ndarray:
    x, weight = _f32(x), _f32(weight)
    out = np.empty_like(x)
    lib().trit_op_rmsnorm(ptr(out), ptr(x), ptr(weight), x.size, eps)
    return out


def op_quantize(x) -> tuple[np.ndarray, float]:
    x = _f32(x)
    xq = np.empty(x.shape, np.int8)
    s = lib().trit_op_quantize(ptr(xq), ptr(x), x.size)
    return xq, s


def preferred_ternary_format() -> str:
    """The ternary format the active kernel runs fastest: "t5" where it can decode base 3 quickly, else "tq2"."""
    return {v: k for k, v in TERNARY_FORMATS.items()}[lib().trit_kernel_preferred_format()]


def to_t5(packed: np.ndarray) -> np.ndarray:
    """A TQ2 (checkpoint) matrix uint8 [rows/4, cols] in T5: uint8 [ceil(rows/5), cols]."""
    packed = np.ascontiguousarray(packed, np.uint8)
    rows, cols = packed.shape[0] * 4, packed.shape[1]
    out = np.empty(((rows + 4) // 5, cols), np.uint8)
    check(lib().trit_convert_tq2_to_t5(ptr(out), ptr(packed), rows, cols))
    return out


def op_ternary_matmul(kernel: str, packed: np.ndarray, xq: np.ndarray, rows: int | None = None,
                      fmt: str = "tq2") -> np.ndarray:
    """int32 [n_tokens, rows] = xq [n_tokens, cols] . W^T, W packed in `fmt` (TQ2: uint8 [rows/4, cols])."""
    names = all_kernels()
    packed, xq = np.ascontiguousarray(packed, np.uint8), np.ascontiguousarray(xq, np.int8)
    rows = rows or packed.shape[0] * 4
    cols = packed.shape[1]
    out = np.empty((xq.shape[0], rows), np.int32)
    check(lib().trit_op_ternary_matmul(names.index(kernel), TERNARY_FORMATS[fmt], ptr(out), ptr(packed), rows, cols,
                                       ptr(xq), xq.shape[0]))
    return out


def op_rope(x, pos: int, theta: float) -> np.ndarray:
    """x [n_heads, head_dim] rotated for one position."""
    out = _f32(x).copy()
    lib().trit_op_rope(ptr(out), out.shape[0], out.shape[1], pos, theta)
    return out


def op_attention(q, k, v, pos0: int, n_heads: int, n_kv_heads: int, head_dim: int, kv: str = "f16",
                 split: int = 0) -> np.ndarray:
    """Attention of q's rows against k, v stored in a cache of type kv (fp16 unless asked, as trit_op_attention);
    split > 0 (one row): chunks of that many keys attended apart and combined, as decoding deep in the context is."""
    q, k, v = _f32(q), _f32(k), _f32(v)
    out = np.empty_like(q)
    check(lib().trit_op_attention_kv(ptr(out), ptr(q), ptr(k), ptr(v), q.shape[0], pos0, n_heads, n_kv_heads,
                                     head_dim, KV_TYPES[kv], split))
    return out


def op_relu2_sums(gate, fg: float, up, fu: float) -> np.ndarray:
    """relu(gate * fg)^2 * (up * fu) in float32 from the gate and up projections' int32 sums."""
    gate, up = np.ascontiguousarray(gate, np.int32), np.ascontiguousarray(up, np.int32)
    out = np.empty(gate.shape, np.float32)
    lib().trit_op_relu2_sums(ptr(out), ptr(gate), fg, ptr(up), fu, gate.size)
    return out


def op_silu_sums(gate, fg: float, up, fu: float) -> np.ndarray:
    """silu(gate * fg) * (up * fu) in float32 from the gate and up projections' int32 sums (the Llama block)."""
    gate, up = np.ascontiguousarray(gate, np.int32), np.ascontiguousarray(up, np.int32)
    out = np.empty(gate.shape, np.float32)
    lib().trit_op_silu_sums(ptr(out), ptr(gate), fg, ptr(up), fu, gate.size)
    return out


def op_to_f16(x) -> np.ndarray:
    x = _f32(x)
    out = np.empty(x.shape, np.uint16)
    lib().trit_op_to_f16(ptr(out), ptr(x), x.size)
    return out


def op_output_head(x, kind: str, head: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """Logits of one hidden state against a head: "bf16" (uint16 [vocab, hidden]), "q8" (int8 + scales), "q4"."""
    x = _f32(x)
    head = np.ascontiguousarray(head)
    out = np.empty(head.shape[0], np.float32)
    scales = np.ascontiguousarray(scales) if scales is not None else None
    scales_ptr = ptr(scales) if scales is not None else None
    check(lib().trit_op_output_head(HEAD_TYPES[kind], ptr(out), ptr(x), ptr(head), scales_ptr, head.shape[0], x.size))
    return out


class NativeObject:
    """Owns one native handle: freed by close(), at the end of a with block, or when collected."""

    _handle = None

    def _free(self, handle) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._handle:
            self._free(self._handle)
            self._handle = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def as_token_array(token_ids, vocab_size: int) -> np.ndarray:
    ids = np.asarray(token_ids)
    if ids.ndim != 1:
        ids = ids.reshape(-1)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"token ids must be integers, not {ids.dtype}")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        raise InputError(f"token id {int(ids[bad][0])} is outside the vocabulary (0..{vocab_size - 1})")
    return np.ascontiguousarray(ids, dtype=np.int32)
