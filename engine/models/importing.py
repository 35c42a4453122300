"""Imports from this machine, with no network: a BitNet b1.58 checkpoint folder or a GGUF file copied into the models
dir, checked and hashed on the way, for machines that are never online."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from trit.engine.errors import CheckpointError, EngineError
from trit.engine.formats.checkpoint import CONFIG_FILE, SHARDED_INDEX_FILE, WEIGHTS_FILE, ModelConfig
from trit.engine.formats.gguf import GGUFInfo
from trit.engine.formats.regular_file import open_regular
from trit.engine.kinds import LLAMA_CPP
from trit.engine.locate import kind_of
from trit.engine.models.registry import (
    GGUF_SUFFIX,
    HASH_CHUNK,
    MANIFEST_FILE,
    MODEL_FILES,
    PARTIAL_DIR,
    REQUIRED_FILES,
    InstalledModel,
    InstallLock,
    Progress,
    ProgressCallback,
    check_folder,
    check_gguf_file,
    check_space,
    format_bytes,
    gguf_name,
    locate,
    manifest,
    read_manifest,
    validate_name,
    write_all,
    write_json_atomic,
)


def import_model(path: str | os.PathLike, models_dir: str | os.PathLike, name: str | None = None, *,
                 progress: ProgressCallback | None = None) -> InstalledModel:
    """Install a model from this machine, with no network: a GGUF file, or a folder whose one model file is a GGUF
    (and that has no config.json), goes to import_gguf; any other folder must be a BitNet b1.58 checkpoint."""
    src = Path(path).expanduser()
    if src.is_file() or src.suffix.lower() == GGUF_SUFFIX:
        return import_gguf(src, models_dir, name, progress=progress)
    kind = kind_of(src)
    if kind.backend == LLAMA_CPP:
        return import_gguf(kind.path, models_dir, name, progress=progress)
    return import_checkpoint(src, models_dir, name, progress=progress)


def import_checkpoint(path: str | os.PathLike, models_dir: str | os.PathLike, name: str | None = None, *,
                      progress: ProgressCallback | None = None) -> InstalledModel:
    """Copy a model folder from a local disk (a hub repository's files, or a pulled model's folder) into
    models_dir/<name> (default: the folder's name), after checking it is a BitNet b1.58 checkpoint. No network.
    A folder that carries a manifest (a copied pull) is checked against it and keeps its source and revision."""
    src = Path(path).expanduser()
    if not src.is_dir():
        raise CheckpointError(f"{src}: not a folder (a model is a folder with {CONFIG_FILE}, {WEIGHTS_FILE} and "
                              "tokenizer.json, or a .gguf file)")
    src = src.resolve()
    name = validate_name(name or src.name)
    try:
        with open_regular(src / CONFIG_FILE) as f:
            ModelConfig.from_dict(json.loads(f.read().decode("utf-8")))
        for f in REQUIRED_FILES:
            if f != WEIGHTS_FILE and not (src / f).is_file():
                raise CheckpointError(f"{src / f}: file not found")
        weights = _weight_files(src)
    except FileNotFoundError:
        raise CheckpointError(f"{src} is not a BitNet b1.58 model folder: it has no {CONFIG_FILE}") from None
    except RecursionError:
        raise CheckpointError(f"{src} is not a BitNet b1.58 model folder: its {CONFIG_FILE} is nested thousands of "
                              "levels deep") from None
    except (OSError, ValueError, CheckpointError) as e:
        raise CheckpointError(f"{src} is not a BitNet b1.58 model folder: {' '.join(str(e).split())}") from None
    try:
        prior = read_manifest(src)
    except CheckpointError:
        prior = None

    def check(staging: Path) -> None:
        try:
            check_folder(staging)
        except CheckpointError as e:
            raise CheckpointError(f"{src} is not a model Trit can run: "
                                  f"{str(e).replace(str(staging), str(src))}") from None

    return _install_copy(src, _own_files(src, weights), Path(models_dir), name, prior, check, progress)


# A shard index lists every tensor name, some 100 KB for a 10B model: one of megabytes is not an index to read whole
INDEX_LIMIT = 16 << 20


def _weight_files(src: Path) -> list[str]:
    """The weight files to copy: model.safetensors, or a sharded checkpoint's index and the shards it names (as
    Hugging Face writes a model larger than its max_shard_size). Each shard is checked when the copy is loaded."""
    if (src / WEIGHTS_FILE).is_file():
        return [WEIGHTS_FILE]
    index = src / SHARDED_INDEX_FILE
    if not index.is_file():
        shards = sorted(p.name for p in src.glob("model-*-of-*.safetensors"))
        if shards:
            raise CheckpointError(f"it has sharded weights ({shards[0]}, …) but no {SHARDED_INDEX_FILE} to say which "
                                  "tensor is in which shard: copy that file from the model's repository into the "
                                  "folder")
        raise CheckpointError(f"{src / WEIGHTS_FILE}: file not found (nor {SHARDED_INDEX_FILE} and its shards)")
    with open_regular(index) as f:
        data = f.read(INDEX_LIMIT + 1)
    if len(data) > INDEX_LIMIT:
        raise CheckpointError(f"{index}: larger than {INDEX_LIMIT >> 20} MB, which no shard index is")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise CheckpointError(f"{index}: nested thousands of levels deep, which no shard index is") from None
    except ValueError as e:  # UnicodeDecodeError is one
        raise CheckpointError(f"{index}: not a JSON file ({' '.join(str(e).split())})") from None
    weight_map = parsed.get("weight_map") if isinstance(parsed, dict) else None
    if not isinstance(weight_map, dict) or not weight_map \
            or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: no weight_map of tensor names to shard files")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if Path(shard).name != shard or not shard.endswith(".safetensors") or shard in (".safetensors",):
            raise CheckpointError(f"{index}: shard {shard[:100]!r} is not a .safetensors file name in this folder")
        if not (src / shard).is_file():
            raise CheckpointError(f"{src / shard}: file not found ({SHARDED_INDEX_FILE} names it)")
    return [SHARDED_INDEX_FILE, *shards]


def _own_files(src: Path, weights: list[str]) -> list[tuple[Path, str]]:
    """The model files of folder `src` (resolved), refusing a link that leads out of it: an import copies the folder,
    never what a link points at elsewhere (a private file, /proc/self/environ and its HF_TOKEN)."""
    files = []
    for name in [n for n in MODEL_FILES if n != WEIGHTS_FILE] + weights:
        path = src / name
        if not (path.is_file() or path.is_symlink()):
            continue
        target = path.resolve()
        if not target.is_relative_to(src):
            raise CheckpointError(f"{path} is a link to {target}, outside the model folder: Trit imports only the "
                                  "folder's own files; copy that file into the folder if it belongs to the model")
        files.append((path, name))
    return files


def import_gguf(path: str | os.PathLike, models_dir: str | os.PathLike, name: str | None = None, *,
                progress: ProgressCallback | None = None) -> InstalledModel:
    """Copy one GGUF file into models_dir/<name>/<file>.gguf (default name: the file's stem, see gguf_name) with
    backend "llama.cpp", after check_gguf — which needs no llama.cpp and refuses a BitNet GGUF, a truncated file or
    a model that does not chat. A file in a model folder whose manifest lists it (a copied GGUF pull) is checked
    against it and keeps its source and revision."""
    src = Path(path).expanduser()
    check_gguf_file(src, str(src))
    src = src.resolve()
    name = validate_name(name or gguf_name(src.name))
    local = (src.name[:-len(GGUF_SUFFIX)] if src.suffix.lower() == GGUF_SUFFIX else src.name) + GGUF_SUFFIX
    try:
        prior = read_manifest(src.parent)
    except CheckpointError:
        prior = None
    if prior is not None and (prior.backend != LLAMA_CPP or src.name not in prior.files):
        prior = None
    return _install_copy(src, [(src, local)], Path(models_dir), name, prior,
                         lambda staging: check_gguf_file(staging / local, str(src)), progress)


def _install_copy(src: Path, files: list[tuple[Path, str]], models_dir: Path, name: str,
                  prior: InstalledModel | None, check: Callable[[Path], GGUFInfo | None],
                  progress: ProgressCallback | None) -> InstalledModel:
    """Copy files (source, name in the model folder) into a staging folder, hashing them; check(staging) the copy;
    write the manifest; rename the staging folder to models_dir/<name>. Nothing is left behind on any failure."""
    if (models_dir / name).exists():
        raise EngineError(f"a model named {name!r} is already installed — pick another with --name, or "
                          f"`trit rm {name}` first")
    sizes = {dest: p.stat().st_size for p, dest in files}
    total = sum(sizes.values())
    models_dir.mkdir(parents=True, exist_ok=True)
    check_space(models_dir, total, f"importing {src.name} ({format_bytes(total)})")
    with InstallLock(models_dir, name):
        (models_dir / PARTIAL_DIR).mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{name}.import-", dir=models_dir / PARTIAL_DIR))
        try:
            recorded, done = {}, 0
            for p, f in files:
                h = hashlib.sha256()
                file_done = 0
                with open_regular(p) as inp, open(staging / f, "wb", buffering=0) as out:
                    while chunk := inp.read(HASH_CHUNK):
                        write_all(out, chunk, f, None)
                        h.update(chunk)
                        done += len(chunk)
                        file_done += len(chunk)
                        if progress:
                            progress(Progress(f, file_done, sizes[f], done, total))
                recorded[f] = {"size": file_done, "sha256": h.hexdigest()}
                if prior and p.name in prior.files and prior.files[p.name].get("sha256") != recorded[f]["sha256"]:
                    raise CheckpointError(f"{p} differs from what its {MANIFEST_FILE} records: the copy is "
                                          "damaged; copy it again or pull the model")
            info = check(staging)
            source, revision = (prior.source, prior.revision) if prior and prior.source else (f"local:{src}", None)
            write_json_atomic(staging / MANIFEST_FILE, manifest(name, source, revision, recorded, info))
            if (models_dir / name).exists():
                raise EngineError(f"a model named {name!r} appeared while importing; nothing was changed")
            os.replace(staging, models_dir / name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return locate(models_dir, name)
