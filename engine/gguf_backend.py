"""Any GGUF model (Llama 3.2, Qwen, Gemma, …) through llama-cpp-python, behind the same chat interface as Trit's own
engine: `engine.load("model.gguf")` returns a GGUFModel with .chat / .default_params / .close like engine.Model.

    info = check_gguf("model.gguf")               # header only, no llama.cpp: architecture, context, vocabulary…
    with engine.load("model.gguf") as model:       # model.backend == "llama.cpp"
        for event in model.chat([{"role": "user", "content": "Hi"}], model.default_params(seed=1)):
            ...

One conversation engine for both backends: engine.chat.Chat drives a KV context through tokens / n_ctx /
max_batch / eval / truncate (engine.chat.KVContext); LlamaCppContext implements it on a llama_context, so prompt
fitting, KV reuse across turns, sampling (engine.sampling.Sampler on the last logits llama.cpp computes), stop
strings and cancelling are exactly the native engine's. What comes from the GGUF: the chat template
(`tokenizer.chat_template`, rendered by engine.tokenizer's jinja2 environment), BOS/EOS/EOT, the vocabulary
(llama.cpp tokenizes and detokenizes) and the sampling defaults (`general.sampling.*`).

Only the C API mirrored by llama_cpp.llama_cpp (llama.h) is used, not llama-cpp-python's Llama class: one
llama_model, and one llama_context per cached conversation (its KV cache and nothing else). llama.cpp's log goes to a
callback that keeps error lines for messages and prints nothing.

BitNet GGUFs are refused: llama.cpp's bitnet graph computes the FFN with SiLU where BitNet b1.58 uses relu², so
its text is wrong. Trit's own engine runs BitNet from the packed Hugging Face checkpoint.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .bench_llamacpp import INSTALL_HINT, LlamaCppError, LlamaCppMissing
from .errors import CheckpointError, InputError
from .model import NativeObject
from .tokenizer import Tokenizer, _jinja_environment, _one_line

BACKEND = "llama.cpp"
DEFAULT_N_CTX = 4096  # the conversation window when the model allows it (as the native engine's 2B4T)
DEFAULT_BATCH = 256  # prefill chunk: how often a long prefill notices a cancel
DEFAULT_CACHE_BUDGET = 1 << 30  # bytes of KV cache kept for recent conversations
MAX_SESSIONS = 4

BITNET_ARCHITECTURES = frozenset({"bitnet", "bitnet-b1.58", "bitnet-25"})
# Architectures llama.cpp loads that do not generate text: embedding and encoder-only models, vision projectors.
NOT_CHAT_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3",
                                    "neo-bert", "modern-bert", "t5encoder", "clip", "wavtokenizer-dec"})

# GGUF's general.file_type (llama_ftype) -> the usual name.
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
              12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
              19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
              26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
              36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4"}

# general.sampling.* (written by llama.cpp's converter from generation_config.json) -> SamplingParams field
SAMPLING_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_k": "top_k",
                 "general.sampling.top_p": "top_p", "general.sampling.min_p": "min_p",
                 "general.sampling.penalty_repeat": "repetition_penalty",
                 "general.sampling.penalty_last_n": "repetition_window"}

# Used when the GGUF has no chat template: plain turns, each closed by the EOS token.
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] | trim + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


class GGUFError(CheckpointError):
    """A GGUF file that is missing, not GGUF, truncated, or a model this backend does not run."""


def bitnet_refusal(path, architecture: str) -> str:
    return (f"{path}: a BitNet GGUF (architecture {architecture!r}) — llama.cpp's bitnet graph computes the FFN "
            "with SiLU where BitNet b1.58 uses relu², so its text is wrong; Trit runs BitNet with its own engine: "
            "`trit pull` the model, or `trit import` its packed Hugging Face checkpoint folder")


# ---------------------------------------------------------------------------------------------------------------
# The header, read without llama.cpp (for `trit import` and for clear errors before llama.cpp sees the file)

GGUF_MAGIC = b"GGUF"
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                   12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_KEEP_ARRAY = 1024  # arrays up to this long are kept in GGUFInfo.metadata; longer ones only counted
MAX_DIMS = 8


@dataclass(frozen=True)
class GGUFArray:
    """A long metadata array (a vocabulary, its scores and merges): its length and element type only."""
    length: int
    element_type: int


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file's header says. `metadata` maps keys to values; arrays longer than 1024 are GGUFArray."""

    path: Path
    version: int
    metadata: dict[str, Any]
    n_tensors: int
    file_size: int
    tensor_bytes: int | None = None  # None when the gguf package (for the types' sizes) is not installed
    backend: str = BACKEND

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def name(self) -> str | None:
        n = self.metadata.get("general.name")
        return n if isinstance(n, str) and n else None

    def arch_key(self, key: str, default=None):
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def context_length(self) -> int | None:
        n = self.arch_key("context_length")
        return int(n) if isinstance(n, int) else None

    @property
    def vocab_size(self) -> int | None:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        return tokens.length if isinstance(tokens, GGUFArray) else len(tokens) if isinstance(tokens, list) else None

    @property
    def tokenizer_model(self) -> str | None:
        t = self.metadata.get("tokenizer.ggml.model")
        return t if isinstance(t, str) else None

    @property
    def chat_template(self) -> str | None:
        t = self.metadata.get("tokenizer.chat_template")
        return t if isinstance(t, str) and t.strip() else None

    @property
    def file_type(self) -> str | None:
        """The quantization the converter chose, e.g. "Q4_K_M" (general.file_type)."""
        t = self.metadata.get("general.file_type")
        return FILE_TYPES.get(t, f"type {t}") if isinstance(t, int) else None

    @property
    def sampling(self) -> dict[str, Any]:
        """Sampling defaults the GGUF carries (general.sampling.*), as SamplingParams field names."""
        return {name: self.metadata[key] for key, name in SAMPLING_KEYS.items()
                if isinstance(self.metadata.get(key), (int, float)) and not isinstance(self.metadata[key], bool)}

    def summary(self) -> dict[str, Any]:
        """The figures a model list shows: JSON-ready."""
        return {"backend": self.backend, "architecture": self.architecture, "name": self.name,
                "file_type": self.file_type, "context_length": self.context_length, "vocab_size": self.vocab_size,
                "chat_template": self.chat_template is not None, "file_size": self.file_size,
                "path": str(self.path)}


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos = buf, size, 0

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise _Truncated
        self.pos = start + n
        return start

    def scalar(self, fmt: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        start = self.take(n)
        return bytes(self.buf[start:start + n]).decode("utf-8", errors="replace")

    def skip_strings(self, n: int) -> None:
        """Step over n strings (a vocabulary and its merges, 300k strings, in ~30 ms)."""
        pos, buf, size, length = self.pos, self.buf, self.size, _U64.unpack_from
        for _ in range(n):
            if pos + 8 > size:
                raise _Truncated
            pos += 8 + length(buf, pos)[0]
        if pos > size:
            raise _Truncated
        self.pos = pos

    def value(self, vtype: int, keep_array: bool = True):
        if vtype in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.scalar("<I"), self.scalar("<Q")
            keep = keep_array and n <= _KEEP_ARRAY
            if etype in _SCALAR_FORMATS:
                fmt = _SCALAR_FORMATS[etype]
                start = self.take(n * struct.calcsize(fmt))
                return list(struct.unpack_from(f"<{n}{fmt[1]}", self.buf, start)) if keep else GGUFArray(n, etype)
            if etype == _STRING:
                if keep:
                    return [self.string() for _ in range(n)]
                self.skip_strings(n)
                return GGUFArray(n, etype)
            if etype == _ARRAY:
                items = [self.value(_ARRAY, keep) for _ in range(n)]
                return items if keep else GGUFArray(n, etype)
            raise ValueError(f"an array of value type {etype}")
        raise ValueError(f"value type {vtype}")


def _type_sizes() -> dict[int, tuple[int, int]] | None:
    try:
        from gguf import GGML_QUANT_SIZES
    except ImportError:
        return None
    return {int(k): v for k, v in GGML_QUANT_SIZES.items()}


def read_gguf_info(path: str | os.PathLike) -> GGUFInfo:
    """Parse a GGUF file's header (metadata and tensor table) and check that the tensor data it announces is all in
    the file. GGUFError (one line) for a missing, non-GGUF or truncated file. Does not need llama.cpp."""
    path = Path(path)
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except FileNotFoundError:
        raise GGUFError(f"{path}: file not found") from None
    except OSError as e:
        raise GGUFError(f"{path}: not readable ({e.strerror or e})") from None
    with f:
        if size < 24:
            head = f.read(4)
            if head != GGUF_MAGIC:
                raise GGUFError(f"{path}: not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r})")
            raise GGUFError(f"{path}: truncated — a GGUF header needs 24 bytes, the file has {size}")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(path, buf, size)


def _parse(path: Path, buf, size: int) -> GGUFInfo:
    if buf[:4] != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (it starts with {bytes(buf[:4])!r}, not {GGUF_MAGIC!r})")
    r = _Reader(buf, size)
    r.take(4)
    version = r.scalar("<I")
    if version not in (2, 3):
        if version & 0xFFFF == 0 and struct.unpack(">I", struct.pack("<I", version))[0] in (2, 3):
            raise GGUFError(f"{path}: a big-endian GGUF — llama.cpp on this machine reads little-endian files")
        raise GGUFError(f"{path}: GGUF version {version} is not supported (versions 2 and 3 are)")
    n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
    metadata: dict[str, Any] = {}
    tensors: list[tuple[str, list[int], int, int]] = []
    try:
        for _ in range(n_kv):
            key = r.string()
            metadata[key] = r.value(r.scalar("<I"))
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.scalar("<I")
            if n_dims > MAX_DIMS:
                raise ValueError(f"tensor {name} has {n_dims} dimensions")
            dims = [r.scalar("<Q") for _ in range(n_dims)]
            tensors.append((name, dims, r.scalar("<I"), r.scalar("<Q")))
    except _Truncated:
        raise GGUFError(f"{path}: truncated — the file ends inside its header ({size} bytes)") from None
    except (ValueError, struct.error) as e:
        raise GGUFError(f"{path}: not a valid GGUF header ({e})") from None
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0:
        raise GGUFError(f"{path}: not a valid GGUF header (general.alignment {alignment!r})")
    data_start = -(-r.pos // alignment) * alignment
    sizes, total = _type_sizes(), None
    if sizes is not None:
        total = 0
        for name, dims, ttype, offset in tensors:
            if ttype not in sizes:
                arch = metadata.get("general.architecture")
                if arch in BITNET_ARCHITECTURES:  # bitnet.cpp's own I2_S type: say what matters
                    raise GGUFError(bitnet_refusal(path, arch))
                raise GGUFError(f"{path}: tensor {name} has the unknown ggml type {ttype}")
            block, type_size = sizes[ttype]
            n = int(np.prod(dims, dtype=np.uint64)) if dims else 1
            nbytes = n // block * type_size
            end = data_start + offset + nbytes
            if end > size:
                raise GGUFError(f"{path}: truncated — tensor {name} ends at byte {end}, the file has {size} "
                                "(an interrupted download?)")
            total += nbytes
    return GGUFInfo(path, version, metadata, n_tensors, size, total)


def gguf_architecture(path: str | os.PathLike) -> str | None:
    """general.architecture from the start of a GGUF file that may still be downloading; None when the bytes so far
    end before it (or the file is not GGUF). Converters write it first, so a few KB are enough."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError:
        return None
    if data[:4] != GGUF_MAGIC or len(data) < 24:
        return None
    r = _Reader(data, len(data))
    r.take(16)  # magic, version, tensor count
    n_kv = r.scalar("<Q")
    try:
        for _ in range(n_kv):
            key = r.string()
            value = r.value(r.scalar("<I"), keep_array=False)
            if key == "general.architecture":
                return value if isinstance(value, str) else None
    except (_Truncated, ValueError, struct.error):
        pass
    return None


def check_gguf(path: str | os.PathLike) -> GGUFInfo:
    """read_gguf_info, then refuse what this backend must not run: BitNet (llama.cpp computes it wrongly), models
    that do not generate text, files without a vocabulary. Whether llama.cpp knows the architecture is found out
    when it loads the file."""
    info = read_gguf_info(path)
    arch = info.architecture
    if not arch:
        raise GGUFError(f"{info.path}: the GGUF does not name its architecture (general.architecture)")
    if arch in BITNET_ARCHITECTURES:
        raise GGUFError(bitnet_refusal(info.path, arch))
    if arch in NOT_CHAT_ARCHITECTURES:
        raise GGUFError(f"{info.path}: a {arch!r} model does not generate text (an embedding, encoder or vision "
                        "model), so Trit cannot chat with it")
    if info.tokenizer_model in (None, "none") or not info.vocab_size:
        raise GGUFError(f"{info.path}: the GGUF has no vocabulary (tokenizer.ggml.*), so its text cannot be read")
    return info


def is_gguf(path: str | os.PathLike) -> bool:
    """True for a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def find_gguf(path: str | os.PathLike) -> Path | None:
    """The GGUF file `path` stands for: the file itself (named *.gguf, or starting with the GGUF magic), or the one
    model file of a folder that has no config.json (the first part of a split model; projector files such as
    mmproj-*.gguf are not models). None when path is not a GGUF model."""
    p = Path(path)
    if p.is_dir():
        if (p / "config.json").exists():
            return None
        files = sorted(f for f in p.glob("*.gguf") if f.is_file() and not f.name.lower().startswith("mmproj"))
        firsts = [f for f in files if "-00001-of-" in f.name]
        if firsts:
            files = firsts
        if len(files) > 1:
            raise GGUFError(f"{p}: holds several GGUF models ({', '.join(f.name for f in files[:4])}): name one")
        return files[0] if files else None
    if p.suffix.lower() == ".gguf":
        return p
    return p if p.is_file() and is_gguf(p) else None


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp, loaded when first needed

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


_log = _Log()
_log_callback = None  # the ctypes callback must live as long as the library may call it


def _llama():
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
            _log_callback = lib.llama_log_callback(_log)
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


def _default_threads() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:
        n = None
    return max(1, n or os.cpu_count() or 1)


@dataclass(frozen=True)
class GGUFConfig:
    """The shape of a GGUF model, as llama.cpp loaded it (names as in engine.checkpoint.ModelConfig)."""
    architecture: str
    vocab_size: int
    context_length: int  # the training context (n_ctx_train)
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    description: str = ""

    def kv_bytes_per_token(self) -> int:
        return self.num_hidden_layers * 2 * self.num_key_value_heads * self.head_dim * 2  # f16 K and V


# ---------------------------------------------------------------------------------------------------------------
# the model


class GGUFModel(NativeObject):
    """A GGUF model loaded by llama.cpp (memory-mapped), with the interface of engine.Model that the app uses:
    chat, default_params, tokenizer, context, logits, close, path, config, backend."""

    backend = BACKEND
    _model = None
    _sessions = None
    _tokenizer = None

    def __init__(self, path: str | os.PathLike, threads: int | None = None, n_ctx: int | None = None,
                 batch: int = DEFAULT_BATCH, info: GGUFInfo | None = None):
        self.info = info or check_gguf(path)
        self.path: Path = self.info.path
        lib = _llama()
        self._lib = lib
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0  # the CPU, always: the same machine every time, nothing to offload
        mark = _log.mark()
        handle = lib.llama_model_load_from_file(str(self.path).encode("utf-8"), params)
        if not handle:
            version = llama_cpp_version()
            raise GGUFError(f"{self.path}: llama.cpp{f' (llama-cpp-python {version})' if version else ''} cannot "
                            f"load this GGUF: {_log.reason(mark)}")
        self._model = handle
        self._contexts: weakref.WeakSet[LlamaCppContext] = weakref.WeakSet()
        self._vocab = lib.llama_model_get_vocab(handle)
        if lib.llama_model_has_encoder(handle):
            self.close()
            raise GGUFError(f"{self.path}: an encoder-decoder model ({self.info.architecture!r}): Trit chats with "
                            "decoder-only models")
        n_head = max(1, lib.llama_model_n_head(handle))
        n_embd = lib.llama_model_n_embd(handle)
        head_dim = self.info.arch_key("attention.key_length")
        self.config = GGUFConfig(
            architecture=self.info.architecture, vocab_size=lib.llama_vocab_n_tokens(self._vocab),
            context_length=lib.llama_model_n_ctx_train(handle), hidden_size=n_embd,
            num_hidden_layers=lib.llama_model_n_layer(handle), num_attention_heads=n_head,
            num_key_value_heads=lib.llama_model_n_head_kv(handle),
            head_dim=head_dim if isinstance(head_dim, int) and head_dim > 0 else n_embd // n_head,
            description=self._describe())
        limit = self.config.context_length if self.config.context_length > 0 else DEFAULT_N_CTX
        if n_ctx is not None and not 0 < n_ctx <= limit:
            self.close()
            raise InputError(f"a context of {n_ctx} positions is outside 1..{limit} for {self.path.name}")
        self.n_ctx_max = n_ctx or min(DEFAULT_N_CTX, limit)
        self.batch = max(1, int(batch))
        self._threads = int(threads or _default_threads())

    def _describe(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self._lib.llama_model_desc(self._model, buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def __repr__(self):
        return f"GGUFModel({str(self.path)!r}, {self.config.description or self.config.architecture})"

    # ---- properties -----------------------------------------------------------------------------------------------
    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, n: int) -> None:
        self._threads = max(1, int(n))
        for ctx in list(self._contexts):
            ctx.set_threads(self._threads)

    @property
    def kernel(self) -> str:
        return BACKEND

    def _check_open(self) -> None:
        if not self._model:
            raise InputError(f"{self.path.name}: the model is closed")

    # ---- evaluation -----------------------------------------------------------------------------------------------
    def context(self, n_ctx: int | None = None, max_batch: int | None = None,
                all_logits: bool = False) -> "LlamaCppContext":
        """A KV cache of its own (a llama_context). all_logits: also able to return every position's logits, which
        costs a buffer of max_batch x vocab floats; chat contexts only need the last token's."""
        self._check_open()
        ctx = LlamaCppContext(self, n_ctx or self.n_ctx_max, max_batch or self.batch, all_logits)
        self._contexts.add(ctx)
        return ctx

    def logits(self, token_ids) -> np.ndarray:
        """float32 logits [n_tokens, vocab] of a fresh context: position i sees tokens 0..i."""
        ids = list(token_ids)
        if len(ids) > self.config.context_length > 0:
            raise InputError(f"{len(ids)} tokens do not fit the model's context of {self.config.context_length}")
        with self.context(max(len(ids), 1), all_logits=True) as ctx:
            return ctx.eval(ids, logits="all")

    # ---- conversation ---------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> "GGUFTokenizer":
        if self._tokenizer is None:
            self._check_open()
            self._tokenizer = GGUFTokenizer(self)
        return self._tokenizer

    def default_params(self, **overrides):
        """Sampling settings from the GGUF's general.sampling.* keys when it has them (else SamplingParams'
        defaults), with overrides (None = keep). A value in the file that SamplingParams refuses is ignored."""
        from .sampling import SamplingParams

        values: dict[str, Any] = {}
        for name, value in self.info.sampling.items():
            try:
                SamplingParams(**{name: value})
            except ValueError:
                continue
            values[name] = value
        return SamplingParams(**values).replace(**overrides)

    def max_sessions(self, budget_bytes: int = DEFAULT_CACHE_BUDGET) -> int:
        """How many conversations keep a KV cache of their own: each costs its full window of KV cells."""
        per_session = self.config.kv_bytes_per_token() * self.n_ctx_max
        return max(1, min(MAX_SESSIONS, budget_bytes // max(1, per_session)))

    def chat(self, messages, params=None, cancel=None):
        """Continue a conversation: yields engine.chat.Piece (text as it comes) and, last, a ChatResult — the same
        engine.chat.ChatSessions as the native engine, on llama.cpp contexts."""
        from .chat import ChatSessions

        self._check_open()
        if self._sessions is None:
            self._sessions = ChatSessions(self, self.tokenizer, self.n_ctx_max, max_sessions=self.max_sessions())
        return self._sessions.stream(messages, params or self.default_params(), cancel)

    def close(self) -> None:
        if self._sessions is not None:
            self._sessions.close()
            self._sessions = None
        if self._model:
            for ctx in list(self._contexts):  # every context before the model it belongs to
                ctx.close()
            if self._tokenizer is not None:
                self._tokenizer._vocab = None
            self._lib.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class LlamaCppContext(NativeObject):
    """A KV cache on a llama_context (one sequence): tokens evaluated so far (`tokens`), extended by `eval`, cut
    back by `truncate` — engine.chat.KVContext, as engine.model.Context."""

    def __init__(self, model: GGUFModel, n_ctx: int, max_batch: int = DEFAULT_BATCH, all_logits: bool = False):
        if not 0 < n_ctx <= max(model.n_ctx_max, model.config.context_length):
            raise InputError(f"a context of {n_ctx} positions is outside 1..{model.config.context_length}")
        lib = model._lib
        self.model, self._lib = model, lib
        self.max_batch = max(1, min(int(max_batch), n_ctx))
        self.all_logits = all_logits
        self.vocab_size = model.config.vocab_size
        p = lib.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = p.n_ubatch = self.max_batch
        p.n_seq_max = 1
        p.n_outputs_max = self.max_batch if all_logits else 1  # the logits buffer: one row is all a chat needs
        p.n_threads = p.n_threads_batch = model.threads
        p.no_perf = True
        p.swa_full = True  # sliding-window models keep every cell, so the cache can be cut back anywhere
        mark = _log.mark()
        self._ctx = lib.llama_init_from_model(model._model, p)
        if not self._ctx:
            raise LlamaCppError(f"llama.cpp could not make a context of {n_ctx} tokens for {model.path.name}: "
                                f"{_log.reason(mark)}")
        self._n_ctx = min(n_ctx, lib.llama_n_ctx(self._ctx))
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(self.max_batch, 0, 1)
        self._batch_alive = True
        self.tokens: list[int] = []

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def set_threads(self, n: int) -> None:
        if self._ctx:
            self._lib.llama_set_n_threads(self._ctx, n, n)

    def eval(self, token_ids, logits: str | None = "last") -> np.ndarray | None:
        """Run tokens at positions n_past.. and keep them in the cache.

        logits: "last" -> float32 [vocab] for the last token, "all" -> [n, vocab] (a context made with
        all_logits=True), None -> nothing."""
        from .model import as_token_array

        if not self._ctx:
            raise InputError("the context is closed")
        ids = as_token_array(token_ids, self.vocab_size)
        if len(ids) > self.n_ctx - self.n_past:
            raise InputError(
                f"{len(ids)} more tokens do not fit: {self.n_past} of {self.n_ctx} context positions are used")
        if logits not in ("last", "all", None):
            raise ValueError(f"logits must be 'last', 'all' or None, not {logits!r}")
        if logits == "last" and len(ids) == 0:
            raise InputError("no tokens to evaluate")
        if logits == "all" and not self.all_logits:
            raise ValueError("this context keeps only the last token's logits: make it with all_logits=True")
        out = np.empty((len(ids), self.vocab_size), np.float32) if logits == "all" else None
        lib, batch = self._lib, self._batch
        for start in range(0, len(ids), self.max_batch):
            chunk = ids[start:start + self.max_batch]
            n, past = len(chunk), self.n_past
            last_chunk = start + n == len(ids)
            batch.n_tokens = n
            for i, token in enumerate(chunk.tolist()):
                batch.token[i] = token
                batch.pos[i] = past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = logits == "all"
            if logits == "last" and last_chunk:
                batch.logits[n - 1] = 1
            mark = _log.mark()
            rc = lib.llama_decode(self._ctx, batch)
            if rc != 0:
                lib.llama_memory_seq_rm(self._memory, 0, past, -1)  # nothing of a failed chunk stays
                raise LlamaCppError(f"llama.cpp could not evaluate {n} tokens at position {past} (llama_decode "
                                    f"returned {rc}: {_log.reason(mark)})")
            self.tokens.extend(chunk.tolist())
            if logits == "all":
                out[start:start + n] = np.ctypeslib.as_array(lib.llama_get_logits(self._ctx),
                                                             shape=(n, self.vocab_size))
            elif logits == "last" and last_chunk:
                out = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, -1), shape=(self.vocab_size,)).copy()
        return out

    def truncate(self, n_past: int) -> None:
        """Keep the first n_past positions of the cache. A model whose state cannot be cut back (recurrent ones) is
        emptied instead: tokens then holds fewer than n_past, and the caller evaluates the rest again."""
        n_past = max(0, int(n_past))
        if n_past >= len(self.tokens) or not self._ctx:
            return
        lib, mem = self._lib, self._memory
        ok = bool(lib.llama_memory_seq_rm(mem, 0, n_past, -1))
        if ok and n_past > 0:
            ok = (lib.llama_memory_seq_pos_max(mem, 0) == n_past - 1 and lib.llama_memory_seq_pos_min(mem, 0) == 0)
        if ok:
            del self.tokens[n_past:]
        else:
            lib.llama_memory_clear(mem, True)
            self.tokens.clear()

    def close(self) -> None:
        if getattr(self, "_batch_alive", False):
            self._lib.llama_batch_free(self._batch)
            self._batch_alive = False
        if getattr(self, "_ctx", None):
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def __del__(self):
        try:
            if self.model._model:  # after the model is freed, its close() has freed this context already
                self.close()
        except Exception:
            pass


# ---------------------------------------------------------------------------------------------------------------
# the tokenizer

class GGUFTokenizer(Tokenizer):
    """llama.cpp's tokenizer for the GGUF's vocabulary, with engine.tokenizer.Tokenizer's chat-template rendering
    (the same sandboxed jinja2 environment) and streaming decoder (every token is a byte string here, so a
    character split across tokens is held back until it is complete).

    The GGUF's tokenizer.chat_template is rendered with bos_token / eos_token set to the vocabulary's tokens. When
    the vocabulary asks for a BOS (tokenizer.ggml.add_bos_token) and the template does not write it, it is put in
    front, as llama.cpp does. stop_ids: every end-of-generation token llama.cpp knows (EOS, EOT, EOM and the like).
    """

    def __init__(self, model: GGUFModel):  # noqa: super().__init__ reads tokenizer.json; this sets the same fields
        import jinja2

        lib = model._lib
        self._lib, self._vocab, self._source = lib, model._vocab, str(model.path)
        self.vocab_size: int = model.config.vocab_size
        self._byte_level = True  # IncrementalDecoder: token_bytes() + an incremental UTF-8 decoder
        self._bytes_cache: dict[tuple[int, bool], bytes] = {}
        v = self._vocab

        def valid(i: int) -> int | None:
            return i if 0 <= i < self.vocab_size else None

        self.bos_id: int | None = valid(lib.llama_vocab_bos(v))
        self.eos_id: int | None = valid(lib.llama_vocab_eos(v))
        self.eot_id: int | None = valid(lib.llama_vocab_eot(v))
        self.add_bos: bool = bool(lib.llama_vocab_get_add_bos(v)) and self.bos_id is not None
        self.bos_token = self._text(self.bos_id)
        self.eos_token = self._text(self.eos_id if self.eos_id is not None else self.eot_id)
        self.stop_ids: frozenset[int] = frozenset(i for i in range(self.vocab_size) if lib.llama_vocab_is_eog(v, i))
        self._template_vars = {k: t for k, t in (("bos_token", self.bos_token), ("eos_token", self.eos_token),
                                                  ("pad_token", self._text(valid(lib.llama_vocab_pad(v)))),
                                                  ("sep_token", self._text(valid(lib.llama_vocab_sep(v)))))
                               if t is not None}
        template = model.info.chat_template
        self.has_chat_template = template is not None
        self.chat_template: str = template if template is not None else FALLBACK_CHAT_TEMPLATE
        try:
            self._template = _jinja_environment().from_string(self.chat_template)
        except jinja2.TemplateError as e:
            raise GGUFError(f"{self._source}: the chat template does not compile ({_one_line(e)})") from None

    def _lib_vocab(self):
        if self._vocab is None:
            raise InputError(f"{self._source}: the model is closed")
        return self._lib, self._vocab

    def _text(self, token_id: int | None) -> str | None:
        """A token's text as the vocabulary stores it (special tokens read as written in templates)."""
        if token_id is None:
            return None
        lib, v = self._lib_vocab()
        raw = lib.llama_vocab_get_text(v, token_id)
        return raw.decode("utf-8", errors="replace") if raw else None

    # -- ids <-> text ---------------------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of text; special-token strings in it are parsed as those tokens. add_bos puts one BOS in front."""
        lib, v = self._lib_vocab()
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            buf = (lib.llama_token * cap)()
            n = lib.llama_tokenize(v, data, len(data), buf, cap, False, True)
            if n >= 0:
                ids = list(buf[:n])
                break
            if -n <= cap:  # not a buffer shortfall
                raise InputError(f"llama.cpp could not tokenize the text ({n})")
            cap = -n
        if add_bos:
            if self.bos_id is None:
                raise GGUFError(f"{self._source}: the vocabulary has no BOS token")
            ids = [self.bos_id, *ids]
        return ids

    def token_bytes(self, token_id: int, skip_special: bool = True) -> bytes:
        """The bytes one token spells (b"" for a control token when skip_special)."""
        key = (int(token_id), bool(skip_special))
        b = self._bytes_cache.get(key)
        if b is None:
            self._check_ids((token_id,))
            lib, v = self._lib_vocab()
            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = lib.llama_token_to_piece(v, key[0], buf, size, 0, not skip_special)
                if n >= 0:
                    b = buf.raw[:n]
                    break
                size = -n
            self._bytes_cache[key] = b
        return b

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ids; control tokens are left out unless skip_special=False. Invalid UTF-8 becomes U+FFFD."""
        return b"".join(self.token_bytes(i, skip_special) for i in self._check_ids(ids)).decode("utf-8", "replace")

    def is_special(self, token_id: int) -> bool:
        lib, v = self._lib_vocab()
        return bool(lib.llama_vocab_get_attr(v, int(token_id)) & lib.LLAMA_TOKEN_ATTR_CONTROL)

    def id_to_token(self, token_id: int) -> str | None:
        return self._text(int(token_id)) if 0 <= int(token_id) < self.vocab_size else None

    # -- chat -----------------------------------------------------------------------------------------------------

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        text = super().render_chat(messages, add_generation_prompt)
        if self.add_bos and self.bos_token and not text.startswith(self.bos_token):
            text = self.bos_token + text
        return text

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt))


def load(path: str | os.PathLike, threads: int | None = None, n_ctx: int | None = None,
         batch: int = DEFAULT_BATCH) -> GGUFModel:
    """Load a GGUF model (a .gguf file, or a folder holding one) with llama.cpp; threads=None uses every physical
    core; n_ctx: the conversation window (default: the model's, at most 4096)."""
    file = find_gguf(path)
    if file is None:
        raise GGUFError(f"{path}: not a GGUF file, nor a folder with one")
    return GGUFModel(file, threads=threads, n_ctx=n_ctx, batch=batch)
