"""What kind of model a path holds, decided in one place, and loading it with the engine that runs that kind:
a folder with config.json is a BitNet checkpoint (Trit's own kernel); a .gguf file, a file that starts with the GGUF
magic, or a folder holding one GGUF model and no config.json runs through llama.cpp."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trit.engine.backends.llamacpp.model import GGUFModel
from trit.engine.formats.checkpoint import CONFIG_FILE, Checkpoint
from trit.engine.formats.gguf import GGUF_MAGIC, GGUFError
from trit.engine.formats.regular_file import open_regular
from trit.engine.kinds import BITNET, LLAMA_CPP
from trit.engine.runtime.model import DEFAULT_HEAD, Model
from trit.engine.runtime.native import DEFAULT_KV


@dataclass(frozen=True)
class ModelKind:
    backend: str  # kinds.BITNET or kinds.LLAMA_CPP
    path: Path    # the checkpoint folder, or the GGUF file itself


def kind_of(path: str | os.PathLike) -> ModelKind:
    """The kind of model at path (nothing is checked beyond what tells the kinds apart: loading checks the rest)."""
    gguf = find_gguf(path)
    return ModelKind(LLAMA_CPP, gguf) if gguf is not None else ModelKind(BITNET, Path(path))


def is_gguf(path: str | os.PathLike) -> bool:
    """True for a file that starts with the GGUF magic."""
    try:
        with open_regular(path) as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def find_gguf(path: str | os.PathLike) -> Path | None:
    """The GGUF file `path` stands for: the file itself (named *.gguf, or starting with the GGUF magic), or the one
    model file of a folder that has no config.json (the first part of a split model; projector files such as
    mmproj-*.gguf are not models). None when path is not a GGUF model."""
    p = Path(path)
    if p.is_dir():
        if (p / CONFIG_FILE).exists():
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


def load(path: str | os.PathLike, threads: int | None = None, head: str = DEFAULT_HEAD, ternary: str = "auto",
         kv: str | None = None):
    """Memory-map and check a model; threads=None uses every core.

    A BitNet checkpoint folder runs on Trit's own kernel (runtime.model.Model). head: "bf16" computes logits against
    the exact tied embedding; "q8" / "q4" against a copy in 8 / 4.5 bits a weight. ternary: "tq2" runs the
    checkpoint's 2-bit packing as it is, "t5" a lossless 1.6-bit copy, "auto" what the CPU's kernel runs fastest.
    Derived copies are made once and kept beside the model (formats/derived.py). kv: the KV cache's element type,
    "f16", "q8" (half the memory) or "f32" (exact); None: runtime.native.DEFAULT_KV.

    A .gguf file (or a folder holding one and no config.json) runs through llama.cpp instead
    (backends.llamacpp.model.GGUFModel, the same chat interface; head and ternary do not apply)."""
    kind = kind_of(path)
    if kind.backend == LLAMA_CPP:
        return GGUFModel(kind.path, threads=threads)
    return Model(Checkpoint(kind.path), threads, head, ternary, kv or DEFAULT_KV)
