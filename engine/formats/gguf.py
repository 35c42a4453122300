"""GGUF files read without llama.cpp: the header (metadata, tensor table) of a file, checked before anything else
sees it — for `trit import`, for the model list, and for clear errors before llama.cpp loads it. BitNet GGUFs are
refused: llama.cpp's bitnet graph computes the FFN with SiLU where BitNet b1.58 uses relu², so its text is wrong.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trit.engine.errors import CheckpointError
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
