"""GGUF files read without llama.cpp: the header (metadata, tensor table) of a file, checked before anything else
sees it — for `trit import`, for the model list, and for clear errors before llama.cpp loads it. BitNet GGUFs are
refused: llama.cpp's bitnet graph computes the FFN with SiLU where BitNet b1.58 uses relu², so its text is wrong.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trit.engine.errors import CheckpointError, shown
from trit.engine.formats.regular_file import open_regular
from trit.engine.kinds import LLAMA_CPP

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


class GGUFError(CheckpointError):
    """A GGUF file that is missing, not GGUF, truncated, or a model this backend does not run."""


def bitnet_refusal(path, architecture: str) -> str:
    return (f"{path}: a BitNet GGUF (architecture {architecture!r}) — llama.cpp's bitnet graph computes the FFN "
            "with SiLU where BitNet b1.58 uses relu², so its text is wrong; Trit runs BitNet with its own engine: "
            "`trit pull` the model, or `trit import` its packed Hugging Face checkpoint folder")


GGUF_MAGIC = b"GGUF"
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                   12: "<d"}
_STRING, _ARRAY, _U32 = 8, 9, 4
_U64 = struct.Struct("<Q")
_KEEP_ARRAY = 1024  # arrays up to this long are kept in GGUFInfo.metadata; longer ones only counted

# What ggml's own reader (gguf.cpp) accepts; a file past these fails in llama.cpp, some of them by a crash (a zero
# dimension divides by zero there, a general.alignment not stored as uint32 aborts), so they are refused here first.
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME: a tensor name and its NUL
MAX_ELEMENTS = 1 << 63  # a tensor's element count must fit int64
# The fewest bytes one metadata entry (key length, value type, a uint8) and one tensor entry (name length, n_dims,
# type, offset) take: counts that could not fit the file are refused before anything is read for them.
_MIN_KV_BYTES, _MIN_TENSOR_BYTES = 8 + 4 + 1, 8 + 4 + 4 + 8
_HEADER_BYTES = 24  # magic, version, tensor count, metadata count

# ggml type -> (elements per block, bytes per block), as ggml defines them (the gguf package's GGML_QUANT_SIZES):
# Trit's own copy, so the tensor data a header announces is checked against the file without the gguf package.
GGML_TYPE_SIZES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
                   9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
                   15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
                   21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8),
                   28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36),
                   41: (128, 18)}


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
    tensor_bytes: int | None = None  # the tensors' data, in bytes
    backend: str = LLAMA_CPP

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

    def raw_string(self) -> bytes:
        n = self.scalar("<Q")
        start = self.take(n)
        return bytes(self.buf[start:start + n])

    def string(self) -> str:
        return self.raw_string().decode("utf-8", errors="replace")

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
            if etype == _ARRAY:  # ggml's reader refuses them too; read, they would nest as deep as a file is long
                raise ValueError("an array of arrays, which llama.cpp does not read")
            raise ValueError(f"an array of value type {etype}")
        raise ValueError(f"value type {vtype}")


def _type_sizes() -> dict[int, tuple[int, int]]:
    """GGML_TYPE_SIZES, and the types only a newer gguf package knows, if it is installed."""
    try:
        from gguf import GGML_QUANT_SIZES
    except ImportError:
        return GGML_TYPE_SIZES
    return {**{int(k): v for k, v in GGML_QUANT_SIZES.items()}, **GGML_TYPE_SIZES}


def read_gguf_info(path: str | os.PathLike) -> GGUFInfo:
    """Parse a GGUF file's header (metadata and tensor table) and check that the tensor data it announces is all in
    the file. GGUFError (one line) for a missing, non-GGUF or truncated file. Does not need llama.cpp."""
    path = Path(path)
    try:
        size = path.stat().st_size
        f = open_regular(path)
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

    def invalid(what: str):
        raise GGUFError(f"{path}: not a valid GGUF file ({what}) — download or convert it again")

    n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
    room = size - _HEADER_BYTES
    if n_kv > room // _MIN_KV_BYTES or n_tensors > room // _MIN_TENSOR_BYTES:
        raise GGUFError(f"{path}: truncated or not a valid GGUF file — its header announces {n_kv} metadata "
                        f"entries and {n_tensors} tensors, more than its {size} bytes can hold (an interrupted "
                        "download?)")
    metadata: dict[str, Any] = {}
    tensors: list[tuple[str, list[int], int, int]] = []
    key = ""
    try:
        for _ in range(n_kv):
            key = r.string()
            if key in metadata:
                invalid(f"metadata key {shown(key)} appears twice")
            vtype = r.scalar("<I")
            if key == "general.alignment" and vtype != _U32:  # ggml reads it as uint32 and aborts otherwise
                invalid(f"general.alignment is stored as value type {vtype}, not uint32")
            metadata[key] = r.value(vtype)
        key = ""
        names: set[bytes] = set()
        for _ in range(n_tensors):
            raw = r.raw_string()
            name = shown(raw.decode("utf-8", errors="replace"), MAX_NAME)  # as messages show it
            if len(raw) >= MAX_NAME:
                invalid(f"tensor name {name} is {len(raw)} bytes long; ggml takes at most {MAX_NAME - 1}")
            if raw in names:
                invalid(f"tensor {name} appears twice")
            names.add(raw)
            n_dims = r.scalar("<I")
            if n_dims > MAX_DIMS:
                invalid(f"tensor {name} has {n_dims} dimensions; ggml takes at most {MAX_DIMS}")
            dims = [r.scalar("<q") for _ in range(n_dims)]
            if any(d <= 0 for d in dims):
                invalid(f"tensor {name} has the dimensions {dims}")
            if math.prod(dims) >= MAX_ELEMENTS:
                invalid(f"tensor {name}'s dimensions {dims} multiply past 2^63 elements")
            tensors.append((name, dims, r.scalar("<I"), r.scalar("<Q")))
    except _Truncated:
        raise GGUFError(f"{path}: truncated — the file ends inside its header ({size} bytes; an interrupted "
                        "download?)") from None
    except (ValueError, struct.error) as e:
        invalid(f"metadata key {shown(key)}: {e}" if key else str(e))
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        invalid(f"general.alignment {alignment!r} is not a power of 2")
    data_start = -(-r.pos // alignment) * alignment
    sizes, expected, total = _type_sizes(), 0, 0
    for name, dims, ttype, offset in tensors:
        if ttype not in sizes:
            arch = metadata.get("general.architecture")
            if arch in BITNET_ARCHITECTURES:  # bitnet.cpp's own I2_S type: say what matters
                raise GGUFError(bitnet_refusal(path, arch))
            raise GGUFError(f"{path}: tensor {name} has the unknown ggml type {ttype}")
        block, type_size = sizes[ttype]
        if dims and dims[0] % block:
            invalid(f"tensor {name} has rows of {dims[0]} elements, not a multiple of its type's block of {block}")
        nbytes = math.prod(dims) // block * type_size
        if offset != expected:  # ggml lays the tensors out in order, each padded to the alignment
            invalid(f"tensor {name} starts at offset {offset} of the data, where the tensor before it ends at "
                    f"{expected}")
        end = data_start + offset + nbytes
        if end > size:
            raise GGUFError(f"{path}: truncated — tensor {name} ends at byte {end}, the file has {size} "
                            "(an interrupted download?)")
        expected = offset + -(-nbytes // alignment) * alignment
        total += nbytes
    return GGUFInfo(path, version, metadata, n_tensors, size, total)


def gguf_architecture(path: str | os.PathLike) -> str | None:
    """general.architecture from the start of a GGUF file that may still be downloading; None when the bytes so far
    end before it (or the file is not GGUF). Converters write it first, so a few KB are enough."""
    try:
        with open_regular(path) as f:
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
