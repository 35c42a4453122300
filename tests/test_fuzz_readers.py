"""Fuzz tests of Trit's own readers (issue 17): the safetensors header, config.json, the GGUF header and the tokenizer
files, fed valid files mutated (bit flips, cuts, length fields set huge, JSON values swapped for other types, deep
nesting) and files generated from scratch. Each reader must read the file or refuse it with the project's one-line
error (CheckpointError, GGUFError, SamplingError); any other exception, a case slower than its limit, or running out
of memory is a failure.

The seed is fixed (derandomize) and the budget small, so the file runs in well under a minute. A longer run:

    ulimit -v 4000000; TRIT_FUZZ_EXAMPLES=50000 TRIT_FUZZ_LOG=progress.txt python -m pytest \\
        -p no:cacheprovider -q --hypothesis-show-statistics tests/test_fuzz_readers.py
"""

from __future__ import annotations

import copy
import json
import os
import signal
import struct
import tempfile
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_hostile_readers import CHAT_METADATA, TENSORS, VALID, gguf_file, nested_arrays

from trit.assets import DEMO_MODEL
from trit.engine.errors import CheckpointError, SamplingError
from trit.engine.formats.checkpoint import read_config
from trit.engine.formats.gguf import GGML_TYPE_SIZES, GGUFError, check_gguf, gguf_architecture
from trit.engine.formats.safetensors_file import DTYPES, SafetensorsFile, write_safetensors

EXAMPLES = int(os.environ.get("TRIT_FUZZ_EXAMPLES", "250"))
CASE_SECONDS = 10  # one input read for longer than this is a hang

FUZZ = settings(derandomize=True, max_examples=EXAMPLES, deadline=timedelta(seconds=CASE_SECONDS), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float = CASE_SECONDS):
    """Hypothesis's deadline judges a case once it returns; this stops one that never would."""
    def stop(*_):
        raise Hang(f"a reader ran for more than {seconds} s")

    if not hasattr(signal, "setitimer"):  # Windows: Hypothesis's deadline alone
        yield
        return
    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# A long run's progress (TRIT_FUZZ_LOG=file): every 1000 inputs, a line with the counts so far and the peak memory,
# so that a run stopped early still says how far it went.
PROGRESS = os.environ.get("TRIT_FUZZ_LOG")
counts: dict[str, int] = {}


def count(outcome: str) -> None:
    counts[outcome] = counts.get(outcome, 0) + 1
    if PROGRESS and sum(counts.values()) % 1000 == 0:
        import resource

        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        with open(PROGRESS, "a") as log:
            log.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]} {counts} peak {peak_mb} MB\n")


def read_or_refuse(read, *refusals: type[Exception]):
    """read(), which may refuse its input only with one of `refusals`, in one line."""
    with time_limit():
        try:
            result = read()
        except refusals as e:
            message = str(e)
            assert message and "\n" not in message, repr(message)
            count("refused")
            return None
    count("read")
    return result


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ---- mutations --------------------------------------------------------------------------------------------------

HUGE = [2**63 - 1, 2**64 - 1, 2**63, 2**32, 2**32 - 1, 2**31, 2**31 - 1, 2**62, 10**12]


def length_fields(data: bytes) -> list[int]:
    """Offsets of 8-byte little-endian words that hold a small count: in these files, the length fields."""
    return [i for i in range(len(data) - 7) if 0 < struct.unpack_from("<Q", data, i)[0] < 1 << 16]


@st.composite
def byte_mutant(draw, base: bytes, fields: list[int] | None = None) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "cut", "huge", "insert", "delete", "byte"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i:]
        elif op == "huge":  # a length or count set far past the file
            at = draw(st.sampled_from(fields)) if fields and draw(st.booleans()) else i
            value = draw(st.sampled_from(HUGE + [len(data), len(data) + 1]) | st.integers(0, 2**64 - 1))
            if at + 8 <= len(data):
                data[at:at + 8] = struct.pack("<Q", value)
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        else:
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


JSON_LEAVES = (st.none() | st.booleans() | st.integers() | st.sampled_from(HUGE + [-1, 0, -(2**70), 2**70])
               | st.floats() | st.text(max_size=12))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)
DEEP = "\0deep"  # stands for nesting too deep to build as a Python object; swapped in as text


def node_paths(doc, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += node_paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:8]):  # a vocabulary's thousands of entries are alike: a few stand for all
            out += node_paths(v, prefix + (i,))
    return out


@st.composite
def json_mutant(draw, base, paths: list[tuple]) -> bytes:
    """base with up to three nodes replaced (another type, a huge number, wrapped in a list, deleted, nested
    thousands deep), as JSON text, sometimes then cut or bit-flipped."""
    doc = copy.deepcopy(base)
    depth = 0
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["value", "huge", "wrap", "string", "delete", "deep"]))
        parent, holder = None, doc
        try:
            for k in path:
                if not isinstance(holder, (dict, list)):
                    raise KeyError(k)
                parent, holder = holder, holder[k]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed it
        if kind == "value":
            new = draw(JSON_VALUES)
        elif kind == "huge":
            new = draw(st.sampled_from(HUGE + [-(2**70), 2**70, 1e308, -0.0]))
        elif kind == "wrap":
            new = draw(st.sampled_from([[holder], {"value": holder}]))
        elif kind == "string":
            new = json.dumps(holder)
        elif kind == "deep":
            new, depth = DEEP, draw(st.sampled_from([100, 2000, 100000]))
        else:
            new = None
        if parent is None:
            doc = new
        elif kind == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = new
    text = json.dumps(doc).replace(json.dumps(DEEP), "[" * depth + "]" * depth)
    data = text.encode()
    return draw(byte_mutant(data)) if draw(st.integers(0, 4)) == 0 else data


# ---- safetensors header -----------------------------------------------------------------------------------------

def small_safetensors() -> bytes:
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "small.safetensors"
        write_safetensors(path, [("a.weight", "BF16", np.arange(12, dtype=np.uint16).reshape(3, 4)),
                                 ("b.weight", "U8", np.arange(8, dtype=np.uint8)),
                                 ("c.scale", "F32", np.ones(1, np.float32))])
        return path.read_bytes()


SAFETENSORS = small_safetensors()


def safetensors_with_header(header: dict) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text


def read_safetensors(path: Path) -> None:
    f = SafetensorsFile(path)
    try:
        for name, info in f.tensors.items():
            a = f.array(name)
            assert a.nbytes == info.end - info.begin
    finally:
        f.close()


def header_of(data: bytes) -> dict:
    n = struct.unpack_from("<Q", data)[0]
    return json.loads(data[8:8 + n])


@st.composite
def safetensors_mutant(draw, base: bytes) -> bytes:
    n = struct.unpack_from("<Q", base)[0]
    if draw(st.booleans()):
        return draw(byte_mutant(base, [0]))
    header = header_of(base)
    text = draw(json_mutant(header, node_paths(header)))
    length = len(text) if draw(st.integers(0, 3)) else draw(st.sampled_from(HUGE) | st.integers(0, 2**64 - 1))
    return struct.pack("<Q", length) + text + base[8 + n:]


SAFETENSORS_ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from(sorted(DTYPES)) | JSON_VALUES,
    "shape": st.lists(st.integers(-2, 2**66) | st.sampled_from(HUGE), max_size=4) | JSON_VALUES,
    "data_offsets": st.lists(st.integers(-2, 2**66) | st.sampled_from(HUGE), max_size=3) | JSON_VALUES,
})


@st.composite
def safetensors_from_scratch(draw) -> bytes:
    header = draw(st.dictionaries(st.text(max_size=10), SAFETENSORS_ENTRY | JSON_VALUES, max_size=4))
    text = json.dumps(header).encode()
    length = len(text) if draw(st.integers(0, 3)) else draw(st.integers(0, 2**64 - 1))
    return struct.pack("<Q", length) + text + draw(st.binary(max_size=256))


@FUZZ
@given(content=safetensors_mutant(SAFETENSORS) | safetensors_from_scratch())
@example(content=SAFETENSORS)  # the plain file reads
@example(content=safetensors_with_header({"\n": {"dtype": None, "shape": [], "data_offsets": [0, 0]}}))  # a line break
def test_the_safetensors_reader_reads_or_refuses_in_one_line(scratch, content):
    path = scratch / "model.safetensors"
    path.write_bytes(content)
    read_or_refuse(lambda: read_safetensors(path), CheckpointError)


# ---- config.json --------------------------------------------------------------------------------------------------

DEMO_CONFIG = json.loads((Path(DEMO_MODEL) / "config.json").read_text())
SIZE_KEYS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "vocab_size", "max_position_embeddings"]


@st.composite
def config_from_scratch(draw) -> bytes:
    values = {k: draw(st.just(v) | JSON_VALUES) for k, v in DEMO_CONFIG.items()}
    for key in draw(st.lists(st.sampled_from(SIZE_KEYS), max_size=3)):
        values[key] = draw(st.integers(-1, 2**40) | st.sampled_from(HUGE))
    return json.dumps(values).encode()


@FUZZ
@given(content=json_mutant(DEMO_CONFIG, node_paths(DEMO_CONFIG)) | config_from_scratch())
@example(content=json.dumps(DEMO_CONFIG).encode())  # the plain file reads
def test_config_json_is_read_or_refused_in_one_line(scratch, content):
    (scratch / "config.json").write_bytes(content)
    read_or_refuse(lambda: read_config(scratch), CheckpointError)


# ---- GGUF header --------------------------------------------------------------------------------------------------

GGUF_FIELDS = length_fields(VALID)
METADATA_VALUES = (st.text(max_size=8) | st.integers(0, 2**32 - 1) | st.lists(st.text(max_size=4), max_size=4)
                   | st.tuples(st.integers(0, 14), st.binary(max_size=24))
                   | st.integers(1, 50).map(nested_arrays))
TENSOR_TYPES = st.sampled_from(sorted(GGML_TYPE_SIZES)) | st.integers(0, 2**32 - 1)
DIMS = st.lists(st.integers(0, 64) | st.sampled_from(HUGE) | st.integers(0, 2**64 - 1), max_size=6)


@st.composite
def gguf_from_scratch(draw) -> bytes:
    metadata = dict(CHAT_METADATA) if draw(st.booleans()) else {}
    metadata.update(draw(st.dictionaries(st.text(max_size=12) | st.sampled_from(list(CHAT_METADATA)
                                                                             + ["general.alignment"]),
                                         METADATA_VALUES, max_size=4)))
    tensors = TENSORS if draw(st.booleans()) else []
    tensors = tensors + draw(st.lists(st.tuples(st.text(min_size=1, max_size=70), DIMS, TENSOR_TYPES), max_size=3))
    offsets = draw(st.none() | st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 512), min_size=len(tensors),
                                        max_size=len(tensors)))
    lie = st.none() | st.sampled_from(HUGE) | st.integers(0, 16)
    return gguf_file(metadata, tensors, alignment=draw(st.sampled_from([32, 1, 8, 64])), offsets=offsets or None,
                     n_kv=draw(lie), n_tensors=draw(lie), data=draw(st.none() | st.binary(max_size=300)))


def read_gguf(path: Path) -> None:
    arch = gguf_architecture(path)  # the download's early look: never raises
    assert arch is None or isinstance(arch, str)
    info = check_gguf(path)
    info.summary()
    assert info.tensor_bytes is not None and info.tensor_bytes <= info.file_size


@FUZZ
@given(content=byte_mutant(VALID, GGUF_FIELDS) | gguf_from_scratch())
@example(content=VALID)  # the plain file reads
@example(content=gguf_file(tensors=TENSORS + [("\n", [8], 31)]))  # a line break in a tensor's name
def test_the_gguf_reader_reads_or_refuses_in_one_line(scratch, content):
    path = scratch / "model.gguf"
    path.write_bytes(content)
    read_or_refuse(lambda: read_gguf(path), GGUFError)


# ---- tokenizer files --------------------------------------------------------------------------------------------

BOS_ID, END_ID, EOT_ID = 256, 257, 265


def small_tokenizer_files() -> dict[str, dict]:
    """tokenizer.json (256 byte tokens and the three special tokens Trit uses), tokenizer_config.json and
    generation_config.json as the synthetic models have them, made small so each case reads quickly."""
    from trit.engine.tools import synthetic

    tokenizer = json.loads(synthetic.build_tokenizer(synthetic.MIN_VOCAB).to_str())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["id"] in (BOS_ID, END_ID, EOT_ID)]
    config = synthetic.tokenizer_config(synthetic.MIN_VOCAB, 4096)
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items()
                                      if int(k) in (BOS_ID, END_ID, EOT_ID)}
    generation = {"bos_token_id": BOS_ID, "eos_token_id": [END_ID, EOT_ID], "do_sample": True, "temperature": 0.7,
                  "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 200}
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config, "generation_config.json": generation}


TOKENIZER_FILES = small_tokenizer_files()
TOKENIZER_PATHS = {name: node_paths(doc) for name, doc in TOKENIZER_FILES.items()}


def read_tokenizer(folder: Path) -> None:
    from trit.engine.runtime.sampling import SamplingParams
    from trit.engine.runtime.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(folder)
    ids = tok.encode("Hello, wörld!", add_bos=tok.bos_id is not None)
    tok.decode(ids)
    SamplingParams.from_generation_config(folder)


PLAIN_TOKENIZER_FILES = {name: json.dumps(doc).encode() for name, doc in TOKENIZER_FILES.items()}


@st.composite
def tokenizer_files(draw) -> dict[str, bytes]:
    """The three files, one or more of them mutated or made up from their own keys."""
    files = dict(PLAIN_TOKENIZER_FILES)
    for name in draw(st.sets(st.sampled_from(sorted(files)), min_size=1)):
        doc = TOKENIZER_FILES[name]
        made_up = st.recursive(JSON_VALUES, lambda inner, keys=sorted(doc): st.dictionaries(
            st.sampled_from(keys), inner, max_size=4), max_leaves=12).map(lambda d: json.dumps(d).encode())
        files[name] = draw(json_mutant(doc, TOKENIZER_PATHS[name]) | made_up)
    return files


@FUZZ
@given(files=tokenizer_files())
@example(files=PLAIN_TOKENIZER_FILES)  # the plain files read
def test_the_tokenizer_files_are_read_or_refused_in_one_line(scratch, files):
    folder = scratch / "tokenizer"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    read_or_refuse(lambda: read_tokenizer(folder), CheckpointError, SamplingError)
