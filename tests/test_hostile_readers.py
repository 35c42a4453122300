"""Hostile model files against Trit's own readers (issue 17, items 9 and 11), through the installed `trit` as a user
meets them: a truncated or lying GGUF is refused at import in one line naming the file, with the `gguf` package
installed or not, and sizes that would overflow in C are refused before they get there."""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys

import pytest
import test_hostile_input
from test_hostile_input import installed_models, one_line

home, trit = test_hostile_input.home, test_hostile_input.trit  # its fixtures, used here by name

# ---- GGUF files written byte by byte, so that every field can lie ------------------------------------------------

U8, U32, STRING, ARRAY, U64 = 0, 4, 8, 9, 10
F32, Q4_0 = 0, 2  # ggml types: 4 bytes an element; blocks of 32 elements in 18 bytes


def gguf_string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def gguf_value(value) -> bytes:
    """A metadata value with its type: str, int (uint32), list of str, or (type, payload bytes) as given."""
    if isinstance(value, tuple):
        vtype, payload = value
        return struct.pack("<I", vtype) + payload
    if isinstance(value, str):
        return struct.pack("<I", STRING) + gguf_string(value)
    if isinstance(value, int):
        return struct.pack("<II", U32, value)
    return struct.pack("<IIQ", ARRAY, STRING, len(value)) + b"".join(gguf_string(s) for s in value)


def tensor_bytes(dims, ttype) -> int:
    n = 1
    for d in dims:
        n *= d
    return n * 4 if ttype == F32 else n // 32 * 18


CHAT_METADATA = {"general.architecture": "llama", "general.name": "tiny", "llama.context_length": 256,
                 "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "c", "<s>"]}
TENSORS = [("token_embd.weight", [8, 4], F32), ("output_norm.weight", [8], F32)]


def gguf_file(metadata=None, tensors=None, *, alignment: int = 32, offsets=None, n_kv=None, n_tensors=None,
              data: bytes | None = None) -> bytes:
    """A little-endian GGUF v3: metadata (key -> gguf_value), tensors [(name, dims, type)] laid out as ggml expects
    unless `offsets` says otherwise; the counts, and the data, can be made to lie."""
    metadata = dict(CHAT_METADATA if metadata is None else metadata)
    tensors = TENSORS if tensors is None else tensors
    kv = b"".join(gguf_string(k) + gguf_value(v) for k, v in metadata.items())
    infos, sizes, at = [], [], 0
    for i, (name, dims, ttype) in enumerate(tensors):
        nbytes = tensor_bytes(dims, ttype)
        offset = offsets[i] if offsets else at
        infos.append(gguf_string(name) + struct.pack("<I", len(dims)) +
                     b"".join(struct.pack("<Q", d % (1 << 64)) for d in dims) +
                     struct.pack("<IQ", ttype, offset % (1 << 64)))
        sizes.append(nbytes)
        at += -(-nbytes // alignment) * alignment
    head = (b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                  len(metadata) if n_kv is None else n_kv) + kv + b"".join(infos))
    head += b"\0" * (-len(head) % alignment)
    if data is None:
        data = b"".join(bytes([7]) * n + b"\0" * (-n % alignment) for n in sizes if n < 1 << 20)
    return head + data


def nested_arrays(depth: int) -> tuple[int, bytes]:
    """An array of one array of one array ... `depth` deep, ending in an empty array of uint8."""
    return ARRAY, struct.pack("<IQ", ARRAY, 1) * (depth - 1) + struct.pack("<IQ", U8, 0)


def duplicate_key() -> bytes:
    """The valid file with the metadata entry general.name written twice."""
    good = gguf_file()
    at = good.index(gguf_string("general.name"))
    again = gguf_string("general.name") + gguf_value("again")
    return good[:16] + struct.pack("<Q", len(CHAT_METADATA) + 1) + good[24:at] + again + good[at:]


VALID = gguf_file()
LIE = "blk.0.attn_q.weight"

# case -> (file, words the refusal must hold)
HOSTILE_GGUFS = {
    "truncated": (VALID[:-40], "truncated"),
    "cut-in-the-header": (VALID[:120], "truncated"),
    "dims-overflow": (gguf_file(tensors=TENSORS + [(LIE, [1 << 32, 1 << 32], F32)]), LIE),  # 2^64 wraps to 0
    "dims-past-int64": (gguf_file(tensors=TENSORS + [(LIE, [1 << 62, 4], F32)]), LIE),
    "zero-dimension": (gguf_file(tensors=TENSORS + [(LIE, [8, 0], F32)]), LIE),
    "five-dimensions": (gguf_file(tensors=TENSORS + [(LIE, [1, 1, 1, 1, 8], F32)]), LIE),
    "nested-20000-deep": (gguf_file({**CHAT_METADATA, "general.tags": nested_arrays(20000)}), "general.tags"),
    "array-of-arrays": (gguf_file({**CHAT_METADATA, "general.tags": nested_arrays(2)}), "general.tags"),
    "unknown-type": (gguf_file(tensors=TENSORS + [(LIE, [8], 99)]), "type 99"),
    "offset-misaligned": (gguf_file(offsets=[0, 130]), "output_norm.weight"),
    "offsets-overlap": (gguf_file(offsets=[0, 0]), "output_norm.weight"),
    "alignment-not-power-of-2": (gguf_file({**CHAT_METADATA, "general.alignment": 48}, alignment=48),
                                 "general.alignment"),
    "alignment-not-uint32": (gguf_file({**CHAT_METADATA, "general.alignment": (U64, struct.pack("<Q", 32))}),
                             "general.alignment"),
    "duplicate-key": (duplicate_key(), "general.name"),
    "duplicate-tensor": (gguf_file(tensors=TENSORS + [TENSORS[1]]), "output_norm.weight"),
    "long-tensor-name": (gguf_file(tensors=TENSORS + [("x" * 64, [8], F32)]), "64 bytes"),
    "row-not-whole-blocks": (gguf_file(tensors=TENSORS + [(LIE, [16, 2], Q4_0)]), LIE),
    "counts-past-the-file": (gguf_file(n_kv=1 << 60), "GGUF"),
    "line-break-in-a-name": (gguf_file(tensors=TENSORS + [("a\nb", [8], 99)]), "'a\\nb' has the unknown ggml type"),
}


@pytest.fixture(params=["with-gguf", "without-gguf"])
def gguf_package(request, tmp_path, monkeypatch):
    """The child `trit` with the gguf package importable, or with an import of it failing as if not installed."""
    if request.param == "without-gguf":
        hidden = tmp_path / "hide-gguf"
        hidden.mkdir()
        (hidden / "gguf.py").write_text("raise ImportError('the gguf package is hidden by the test')\n")
        monkeypatch.setenv("PYTHONPATH", str(hidden))
    else:
        pytest.importorskip("gguf")
    return request.param


def test_the_gguf_package_is_really_hidden(gguf_package, tmp_path):
    from network_guard import offline_env

    r = subprocess.run([sys.executable, "-c", "import gguf"], capture_output=True, env=offline_env(), cwd=tmp_path)
    assert (r.returncode == 0) == (gguf_package == "with-gguf"), r.stderr


def test_a_valid_hand_written_gguf_imports(trit, tmp_path, gguf_package):
    """The writer below lies only where a test asks it to: its plain file is a model import accepts."""
    path = tmp_path / "tiny.gguf"
    path.write_bytes(VALID)
    r = trit("import", path)
    assert r.returncode == 0, r.stderr
    assert [m["name"] for m in installed_models(trit)] == ["tiny"]


@pytest.mark.parametrize("case", sorted(HOSTILE_GGUFS))
def test_a_truncated_or_lying_gguf_is_refused_at_import(trit, tmp_path, gguf_package, case):
    path = tmp_path / f"{case}.gguf"
    data, words = HOSTILE_GGUFS[case]
    path.write_bytes(data)
    one_line(trit("import", path), f"{case}.gguf", words)
    assert installed_models(trit) == []


# ---- sizes that cross into C (item 11) --------------------------------------------------------------------------

def test_threads_past_what_a_c_int_holds_are_refused_not_wrapped(trit):
    """ctypes keeps an int's low 32 bits: 2^32 + 1 threads ran as 1 thread, silently."""
    one_line(trit("ask", "--model", "demo", "--threads", 2**32 + 1, "hi"), "threads", str(2**32 + 1))


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_threads_past_a_c_int_are_refused_for_a_gguf_model_too(trit, tmp_path):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(VALID)
    one_line(trit("ask", "-m", path, "--threads", 2**32 + 1, "hi"), "threads", str(2**32 + 1))


def test_a_config_whose_sizes_multiply_past_the_limits_is_refused(trit, tmp_path):
    """Each size within its limit, their products not: the cache of the whole context is 2^18 positions x 8 KB =
    2^31 bytes (past int32), and the RoPE tables native code computes at load 2^18 x 1024 cells (1 GB, 8 s)."""
    from trit.engine.tools import synthetic

    folder = synthetic.write_model(tmp_path / "wide", "tiny", hidden_size=2048, intermediate_size=128,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, head_dim=1024,
                                   vocab_size=512, max_position_embeddings=4096)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1 << 18}))
    one_line(trit("ask", "-m", folder, "--no-log", "hi"), "config.json", "max_position_embeddings", "head_dim")
    one_line(trit("import", folder), "config.json", "max_position_embeddings", "head_dim")
