"""Zero-copy reading and streaming writing of .safetensors files.

The format is an 8-byte little-endian header length, a JSON header, then raw little-endian tensor bytes. The
`safetensors` package reads it too, but its numpy API copies every tensor and has no bfloat16; the engine needs
read-only views into one memory map (bf16 as uint16), with every offset checked before native code sees it.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from trit.engine.errors import CheckpointError, shown
from trit.engine.formats.regular_file import open_regular

# safetensors dtype name -> (numpy dtype used to hold it, bytes per element)
DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype("<u2"),  # bit patterns; widened by the caller
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}

MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offset of the data, from the start of the file
    end: int


class SafetensorsFile:
    """A memory-mapped safetensors file. `array(name)` returns a read-only numpy view (no copy)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._file = open_regular(self.path)
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open ({e.strerror})") from None
        try:
            self.tensors, self.metadata = self._read_header()
            size = os.fstat(self._file.fileno()).st_size
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except BaseException:
            self._file.close()
            raise

    def _read_header(self) -> tuple[dict[str, TensorInfo], dict]:
        size = os.fstat(self._file.fileno()).st_size
        head = self._file.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{self.path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f"{self.path}: not a safetensors file, or truncated (header of {n} bytes)")
        try:
            header = json.loads(self._file.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise CheckpointError(f"{self.path}: the safetensors header is not valid JSON") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: the safetensors header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{self.path}: the safetensors header's __metadata__ is not a JSON object")
        data_start = 8 + n
        tensors = {}
        for name, entry in header.items():
            label = shown(name)
            try:
                dtype, (begin, end), shape = entry["dtype"], entry["data_offsets"], tuple(entry["shape"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor {label}: malformed header entry") from None
            # JSON gives any type: offsets and dimensions must be plain non-negative integers, sized exactly (in
            # Python's integers, which neither wrap nor overflow) before numpy or native code sees them
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (begin, end, *shape)):
                raise CheckpointError(f"{self.path}: tensor {label}: offsets and shape must be integers >= 0, not "
                                      f"{entry['data_offsets']!r:.40} and {entry['shape']!r:.40}")
            if not isinstance(dtype, str) or dtype not in DTYPES:
                raise CheckpointError(f"{self.path}: tensor {label}: unsupported dtype {dtype!r:.40}")
            want = DTYPES[dtype].itemsize * math.prod(shape)
            if not (begin <= end) or end - begin != want:
                raise CheckpointError(
                    f"{self.path}: tensor {label}: {end - begin} bytes of data for {dtype} {list(shape)} "
                    f"({want} expected)"
                )
            if data_start + end > size:
                raise CheckpointError(
                    f"{self.path}: truncated: tensor {label} ends at byte {data_start + end} but the file has {size}"
                    " — download or copy it again"
                )
            tensors[name] = TensorInfo(name, dtype, shape, data_start + begin, data_start + end)
        return tensors, metadata

    def array(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        count = int(np.prod(info.shape, dtype=np.int64))
        if count == 0:
            return np.zeros(info.shape, DTYPES[info.dtype])
        return np.frombuffer(self._map, DTYPES[info.dtype], count, info.begin).reshape(info.shape)

    def release(self, name: str) -> None:
        """Unmap this tensor's pages from the process; they stay in the page cache, so the next read is cheap. For
        tensors read a row at a time (embedding lookups): the kernel maps neighbouring cached pages in around every
        touched one, and all of them would count as resident memory."""
        info = self.tensors[name]
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = info.begin - info.begin % mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, start, info.end - start)

    def close(self) -> None:
        # Views handed out keep the map alive through their buffer; closing the file object is always safe.
        self._file.close()


def write_safetensors(path: str | os.PathLike, tensors: Iterable[tuple[str, str, np.ndarray]], metadata=None) -> None:
    """Write (name, dtype, array) triples; arrays must already hold the dtype's bytes (bf16 as uint16).
    The file appears under its name only once complete."""
    items = list(tensors)
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, dtype, arr in items:
        if arr.dtype != DTYPES[dtype]:
            raise ValueError(f"{name}: array dtype {arr.dtype} does not hold {dtype}")
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned, as the reference writer does
    tmp = Path(str(path) + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, _, arr in items:
            f.write(np.ascontiguousarray(arr).tobytes())
    os.replace(tmp, path)


def widen_to_f32(arr: np.ndarray, dtype: str) -> np.ndarray:
    """A float32 copy of a BF16 (uint16 bit patterns), F16 or F32 array."""
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)
