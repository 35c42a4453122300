"""The installed models: one folder each under the models dir, described by its manifest; listing, finding,
checking and removing them, and what pulls and imports share to install one safely.

    <models>/<name>/                  a ready model: the repository's files plus trit-model.json (the manifest)
    <models>/<name>/<file>.gguf       … or one GGUF file (any llama.cpp model) plus the manifest, backend "llama.cpp"
    <models>/.partial/<name>/         a pull in progress: finished files, <file>.incomplete, pull-state.json
    <models>/.partial/<name>.import-* an import in progress
    <models>/.partial/<name>.lock     locked while a pull or import of <name> runs; removed when it ends

A folder under <models> is a model only if it holds the manifest, and the manifest is written only after every
file has matched its checksum and the engine has opened the folder; the staging folder then becomes the model folder
with one rename.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from trit.engine.errors import CheckpointError, EngineError, SamplingError
from trit.engine.formats.checkpoint import CONFIG_FILE, GENERATION_CONFIG_FILE, WEIGHTS_FILE, Checkpoint
from trit.engine.formats.gguf import GGUFError, GGUFInfo, check_gguf
from trit.engine.formats.regular_file import open_regular
from trit.engine.kinds import BITNET, LLAMA_CPP
from trit.engine.locate import load
from trit.engine.runtime.chat_template import ChatTemplate, ChatTemplateError
from trit.engine.runtime.sampling import SamplingParams
from trit.engine.runtime.tokenizer import CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer

MANIFEST_FILE = "trit-model.json"
STATE_FILE = "pull-state.json"
PARTIAL_DIR = ".partial"
MANIFEST_FORMAT = 1


# What a model folder holds, in download order: the small files first, so a repository that is not a BitNet
# checkpoint is refused after a few KB rather than after the weights.
REQUIRED_FILES = (CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE)
OPTIONAL_FILES = (TOKENIZER_CONFIG_FILE, GENERATION_CONFIG_FILE, CHAT_TEMPLATE_FILE, "special_tokens_map.json",
                  "LICENSE")
MODEL_FILES = REQUIRED_FILES[:1] + OPTIONAL_FILES + REQUIRED_FILES[1:]
GGUF_SUFFIX = ".gguf"
HASH_CHUNK = 4 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


class DiskSpaceError(EngineError):
    """Not enough free space for a pull or an import, or the disk filled up while writing."""


class ModelNotFound(EngineError):
    """No installed model has that name."""


@dataclass(frozen=True)
class InstalledModel:
    """A model folder under the models dir, as its manifest describes it."""

    name: str
    path: Path
    size_bytes: int            # everything in the folder, derived weights included
    source: str                # "hf:<repo>" or "local:<folder it was imported from>"
    revision: str | None       # the hub commit the files come from (None for an import without one)
    verified: bool             # every file matched its checksum when installed, and at the last `verify`
    backend: str = BITNET     # "bitnet" (Trit's own engine) or "llama.cpp" (a GGUF file)
    installed: str = ""        # ISO 8601 time
    files: dict = field(default_factory=dict, repr=False)  # file -> {"size": int, "sha256": str}
    architecture: str | None = None  # GGUF models: what their header says (general.architecture, …)
    file_type: str | None = None     # e.g. "Q4_K_M"
    context_length: int | None = None

    @property
    def short_revision(self) -> str:
        return (self.revision or "")[:7]

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "size_bytes": self.size_bytes, "source": self.source,
                "revision": self.revision, "verified": self.verified, "backend": self.backend,
                "architecture": self.architecture, "file_type": self.file_type,
                "context_length": self.context_length, "installed": self.installed}


@dataclass(frozen=True)
class Progress:
    """Where a pull or an import stands, in bytes. `done` counts bytes already on disk when the call started."""

    filename: str
    file_done: int
    file_total: int
    done: int
    total: int


ProgressCallback = Callable[[Progress], None]
LogCallback = Callable[[str], None]


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise EngineError(f"{name!r} is not a usable model name: use letters, digits, '.', '_', '-' (no '/')")
    return name


def gguf_name(filename: str) -> str:
    """The default model name for a GGUF file: its stem, lower-cased, anything but letters, digits, '.', '_', '+',
    '-' turned into '-' ("Llama-3.2-1B-Instruct-Q4_K_M.gguf" -> "llama-3.2-1b-instruct-q4_k_m")."""
    stem = Path(filename).name
    if stem.lower().endswith(GGUF_SUFFIX):
        stem = stem[:-len(GGUF_SUFFIX)]
    name = re.sub(r"[^a-z0-9._+-]+", "-", stem.lower()).strip("-._+")[:128].rstrip("-._+")
    return validate_name(name or "model")


def _folder_size(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def read_manifest(folder: Path) -> InstalledModel | None:
    path = folder / MANIFEST_FILE
    try:
        with open_regular(path) as f:
            m = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable manifest ({' '.join(str(e).split())}); "
                              f"remove the model with `trit rm {folder.name}` and install it again") from None
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
        raise CheckpointError(f"{path}: not a Trit manifest; remove the model with `trit rm {folder.name}` "
                              "and install it again")
    context = m.get("context_length")
    return InstalledModel(name=folder.name, path=folder, size_bytes=_folder_size(folder),
                          source=str(m.get("source", "")), revision=m.get("revision"),
                          verified=m.get("verified") is True, backend=str(m.get("backend", BITNET)),
                          installed=str(m.get("installed", "")), files=m["files"],
                          architecture=m.get("architecture") if isinstance(m.get("architecture"), str) else None,
                          file_type=m.get("file_type") if isinstance(m.get("file_type"), str) else None,
                          context_length=context if isinstance(context, int) else None)


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def manifest(name: str, source: str, revision: str | None, files: dict, gguf: GGUFInfo | None = None) -> dict:
    """The manifest of a model folder; `gguf`: the header of its GGUF file (backend llama.cpp)."""
    details = {"backend": BITNET} if gguf is None else {
        "backend": LLAMA_CPP, "architecture": gguf.architecture, "file_type": gguf.file_type,
        "context_length": gguf.context_length}
    return {"format": MANIFEST_FORMAT, "name": name, "source": source, "revision": revision, **details,
            "verified": True, "installed": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "files": files}


def installed(models_dir: str | os.PathLike) -> list[InstalledModel]:
    """Every ready model (a folder with a manifest), oldest install first: the last one is the newest. Staging
    folders and folders without a manifest are not models."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    out = []
    for folder in sorted(models_dir.iterdir(), key=lambda p: p.name.lower()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            m = read_manifest(folder)
        except CheckpointError:
            m = InstalledModel(name=folder.name, path=folder, size_bytes=_folder_size(folder), source="?",
                               revision=None, verified=False)
        if m is not None:
            out.append(m)
    return sorted(out, key=lambda m: m.installed)  # ISO 8601 UTC times sort as text; stable for equal times


def locate(models_dir: str | os.PathLike, name: str) -> InstalledModel:
    folder = Path(models_dir) / name
    m = read_manifest(folder) if _NAME.fullmatch(name or "") and folder.is_dir() else None
    if m is None:
        raise ModelNotFound(f"no model named {name!r} — `trit models` lists them, `trit pull` downloads one")
    return m


def partial_folder(models_dir: str | os.PathLike, name: str) -> Path:
    return Path(models_dir) / PARTIAL_DIR / name


def remove(models_dir: str | os.PathLike, name: str) -> Path:
    """Delete an installed model, or the kept data of an unfinished pull of that name. Returns what was removed.
    The folder is renamed away first, so a crash midway never leaves a half-deleted model that looks ready."""
    models_dir = Path(models_dir)
    folder = models_dir / name
    if _NAME.fullmatch(name or "") and folder.is_dir() and (folder / MANIFEST_FILE).exists():
        target = folder
    elif _NAME.fullmatch(name or "") and partial_folder(models_dir, name).is_dir():
        target = partial_folder(models_dir, name)
    else:
        raise ModelNotFound(f"no model named {name!r} — `trit models` lists them")
    trash = models_dir / PARTIAL_DIR / f"{name}.removing-{os.getpid()}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    os.replace(target, trash)
    shutil.rmtree(trash, ignore_errors=True)
    return target


def _hash_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def verify(model: InstalledModel, record: bool = True) -> list[str]:
    """Hash every file the manifest lists again; return the ones that are missing or differ. With record=True the
    manifest's `verified` flag is updated, so `trit models` shows a damaged model as unverified."""
    bad = []
    for fname, info in sorted(model.files.items()):
        path = model.path / fname
        try:
            if path.stat().st_size != info.get("size") or _hash_file(path) != info.get("sha256"):
                bad.append(fname)
        except OSError:
            bad.append(fname)
    ok = not bad and bool(model.files)
    if record and ok != model.verified:
        path = model.path / MANIFEST_FILE
        m = json.loads(path.read_text(encoding="utf-8"))
        m["verified"] = ok
        write_json_atomic(path, m)
    return bad


def check_folder(folder: str | os.PathLike, derive: bool = True) -> None:
    """What makes a folder a model Trit runs: config.json and model.safetensors agree (every tensor's name, shape and
    dtype), tokenizer.json loads, generation_config.json's sampling values are in range, and the engine loads it
    (every packed byte scanned for ternary codes). Raises CheckpointError. With derive=True the weights this CPU runs
    best are then derived into the folder (trit/), so that happens once at install rather than at the first chat."""
    folder = Path(folder)
    try:  # a template that fails on a plain conversation would fail every reply: refused once, here
        Tokenizer.from_folder(folder).check_chat_template()
    except ChatTemplateError as e:
        raise CheckpointError(str(e)) from None
    try:
        SamplingParams.from_generation_config(folder)
    except SamplingError as e:  # a value every reply would refuse: refused once, here
        raise CheckpointError(str(e)) from None
    Checkpoint(folder).check_floats()
    load(folder, threads=1, head="bf16", ternary="tq2").close()  # the checkpoint's own bytes, as they are
    if derive:
        load(folder).close()


def _free_space(path: Path) -> int:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return 1 << 62


def format_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def check_space(where: Path, needed: int, what: str) -> None:
    free = _free_space(where)
    if free < needed:
        raise DiskSpaceError(f"not enough disk space for {what}: {format_bytes(needed)} still to write, "
                             f"{format_bytes(free)} free "
                             f"in {where} — free some space and run the same command again")


def disk_full(e: OSError, filename: str, kept: Path | None) -> DiskSpaceError:
    tail = f"; what was written is kept in {kept}, free some space and run the same command again" if kept else \
        "; free some space and try again"
    return DiskSpaceError(f"the disk is full while writing {filename} ({e.strerror}){tail}")


def move_into_place(staging: Path, dest: Path) -> None:
    """Rename the finished staging folder to the model folder; an older install of the same name is replaced."""
    old = None
    if dest.exists():
        old = dest.parent / PARTIAL_DIR / f"{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
    os.replace(staging, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class InstallLock:
    """One pull or import per model name at a time: an advisory lock on .partial/<name>.lock, a file that is removed
    when the install ends, however it ends.

    Its holder removes the file while still holding the lock. A process that opened the file just before that gets
    the lock once it is released, but on a file no longer there, while a third may already have made and locked a
    new one; so after locking, the path must still name the file locked, else the lock is taken again on that one."""

    def __init__(self, models_dir: Path, name: str):
        self.path = models_dir / PARTIAL_DIR / f"{name}.lock"
        self.fd = None
        self.name = name

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock
            fcntl = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise EngineError(f"another Trit process is installing {self.name!r} right now; wait for it to "
                                  "finish") from None
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # locked a file its holder had removed
        self.fd = fd
        return self

    def __exit__(self, *exc):
        try:
            if os.name == "nt":  # an open file cannot be removed there; without a lock there is no race to mind
                os.close(self.fd)
            os.unlink(self.path)
        except OSError:  # already gone (the folder was removed), or open in another process (Windows)
            pass
        finally:
            if os.name != "nt":
                os.close(self.fd)


def write_all(out, data: bytes, filename: str, kept: Path | None) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[out.write(view):]
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(e, filename, kept) from None
        raise


def check_gguf_chat_template(info: GGUFInfo) -> None:
    """GGUFError when the GGUF's tokenizer.chat_template fails on the test conversations (ChatTemplate.check_renders).
    Without llama.cpp the special tokens' text is known only for a short vocabulary (the header reader keeps up to
    1024 tokens); otherwise it stands in as a placeholder, which a template prints but does not depend on."""
    template = info.chat_template
    if template is None:
        return
    tokens = info.metadata.get("tokenizer.ggml.tokens")

    def token(key: str, placeholder: str) -> str:
        i = info.metadata.get(f"tokenizer.ggml.{key}")
        return tokens[i] if isinstance(tokens, list) and isinstance(i, int) and 0 <= i < len(tokens) else placeholder

    variables = {"bos_token": token("bos_token_id", "<s>"), "eos_token": token("eos_token_id", "</s>")}
    try:
        ChatTemplate(template, variables, source=str(info.path), error=GGUFError).check_renders()
    except ChatTemplateError as e:
        raise GGUFError(str(e)) from None


def check_gguf_file(path: Path, shown: str) -> GGUFInfo:
    """check_gguf (one line: not GGUF, truncated, BitNet, not a chat model) naming the file `shown`, and only a
    whole model: one part of a split GGUF is not installed. Its chat template must render test conversations."""
    try:
        info = check_gguf(path)
        check_gguf_chat_template(info)
    except GGUFError as e:
        raise GGUFError(str(e).replace(str(path), shown)) from None
    count = info.metadata.get("split.count")
    if isinstance(count, int) and count > 1:
        raise GGUFError(f"{shown}: one part of a GGUF split into {count} files; Trit installs single-file GGUFs — "
                        "join the parts with llama.cpp's `llama-gguf-split --merge` and install the result")
    return info
