"""Downloads from the Hugging Face Hub: resumable and verified. This module is the only part of Trit that talks to the
network, and only inside `pull`.

An interrupted pull keeps its bytes in the staging folder (registry.partial_folder) and the next `pull` of the same
model continues them with an HTTP Range request. The download is done here rather than by
`huggingface_hub.hf_hub_download`: that function writes to a temporary file unique to the process and deletes it when
anything fails (huggingface_hub 2.4 `_download_to_tmp_and_move`), so a Ctrl-C or a dropped connection would start a
1.2 GB file over, and it checks sizes but not sha256. Here huggingface_hub supplies the hub's URLs, request headers
(user agent, HF_TOKEN) and the model-info schema, and the requests go through a client of our own, so HF_HUB_OFFLINE
does not apply to them. The `trit` command sets HF_HUB_OFFLINE and HF_HUB_DISABLE_TELEMETRY for every command
(app/cli.py, keep_huggingface_hub_offline), pull included: huggingface_hub then sends nothing of its own and writes
nothing (with telemetry on, building the headers fetches the hub's AI-agent registry and caches it in
~/.cache/huggingface). A program that calls pull() itself should set them before importing huggingface_hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

from trit.engine.errors import CheckpointError, EngineError
from trit.engine.formats.checkpoint import CONFIG_FILE, GENERATION_CONFIG_FILE, WEIGHTS_FILE
from trit.engine.formats.gguf import BITNET_ARCHITECTURES, GGUFError, bitnet_refusal, gguf_architecture
from trit.engine.models.catalogue import family_of, for_repo
from trit.engine.models.registry import (
    GGUF_SUFFIX,
    HASH_CHUNK,
    MANIFEST_FILE,
    MODEL_FILES,
    REQUIRED_FILES,
    STATE_FILE,
    InstalledModel,
    InstallLock,
    LogCallback,
    Progress,
    ProgressCallback,
    check_folder,
    check_gguf_file,
    check_space,
    format_bytes,
    gguf_name,
    locate,
    manifest,
    move_into_place,
    partial_folder,
    read_manifest,
    validate_name,
    write_all,
    write_json_atomic,
)

DEFAULT_REPO = "microsoft/bitnet-b1.58-2B-4T"
DEFAULT_ENDPOINT = "https://huggingface.co"
# A checkpoint larger than transformers' max_shard_size comes as shards and an index of which tensor is in which (the
# name engine.formats.checkpoint reads them by).
SHARDED_INDEX_FILE = "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# Files read whole as JSON, with what the largest real one takes many times over (a config.json is 1-2 KB, the index
# of a 10B model's shards some 100 KB): a repository listing more is refused before anything is downloaded, rather
# than fetching gigabytes of it and then reading them into memory.
JSON_FILE_LIMITS = {CONFIG_FILE: 1 << 20, GENERATION_CONFIG_FILE: 1 << 20, SHARDED_INDEX_FILE: 16 << 20}
GGUF_PEEK_BYTES = 64 << 10  # a GGUF's architecture is in its first few KB: a BitNet one is refused after this much
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
RETRY_DELAYS = (1.0, 2.0, 4.0)  # seconds before each retry of a broken connection or a 5xx answer
RETRY_STATUS = (429, 500, 502, 503, 504)
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0
# The model info of a repository with thousands of files is a few MB; the cap counts decoded bytes, as a compressed
# answer can be small on the wire and gigabytes in memory.
MAX_INFO_BYTES = 16 << 20
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


class HubError(EngineError):
    """A pull failed: the hub could not be reached, refused, or sent something else than it published."""


class ChecksumError(HubError):
    """A downloaded file does not match the sha256 the hub publishes for it, twice in a row."""


def normalize_repo(repo: str) -> str:
    """'owner/name' from 'owner/name', 'hf:owner/name' or a huggingface.co URL."""
    r = repo.strip()
    r = re.sub(r"^(hf:|https?://(www\.)?(huggingface\.co|hf\.co)/)", "", r).strip("/")
    if not _REPO.fullmatch(r):
        raise HubError(f"{repo!r} is not a Hugging Face model id: expected owner/name, e.g. {DEFAULT_REPO}")
    return r


def default_name(repo: str) -> str:
    return validate_name(normalize_repo(repo).rsplit("/", 1)[1])


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: str | None   # LFS files: the hub publishes the content's sha256
    git_sha1: str | None  # other files: the git blob id, sha1 of b"blob <size>\0" + content
    local: str | None = None  # its name in the model folder, when not `name` (a GGUF in a folder of the repo)

    @property
    def dest(self) -> str:
        return self.local or self.name


class _Hub:
    """Requests to one hub endpoint through a client of our own (no HF_HUB_OFFLINE hook), with retries."""

    def __init__(self, endpoint: str, token: str | bool | None, log: LogCallback | None):
        import httpx2
        from huggingface_hub.utils import build_hf_headers

        from trit import __version__

        self.httpx2 = httpx2
        self.endpoint = endpoint.rstrip("/")
        self.headers = build_hf_headers(token=token, library_name="trit", library_version=__version__)
        self.client = httpx2.Client(follow_redirects=True,
                                    timeout=httpx2.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT))
        self.log = log or (lambda msg: None)

    def close(self) -> None:
        self.client.close()

    def url(self, repo: str, filename: str, revision: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(repo, filename, revision=revision, endpoint=self.endpoint)

    def unreachable(self, e: Exception, tail: str = "") -> HubError:
        reason = " ".join(str(e).split()) or type(e).__name__
        return HubError(f"cannot reach the model hub at {self.endpoint} ({reason}) — check the network connection "
                        f"and run the same command again{tail}")

    def http_error(self, status: int, headers, what: str, repo: str, revision: str | None) -> HubError:
        code = headers.get("X-Error-Code", "")
        if code == "RevisionNotFound":
            return HubError(f"{repo} has no revision {revision!r} on {self.endpoint}")
        if code == "GatedRepo" or status == 403:
            return HubError(f"{repo} is gated on {self.endpoint}: accept its terms on the website, then set HF_TOKEN")
        if code == "RepoNotFound" or (status in (401, 404) and what == "the model information"):
            return HubError(f"no model repository {repo} on {self.endpoint} (check the name; if it is private, "
                            "set HF_TOKEN)")
        if status == 404:
            return HubError(f"{what} is not in {repo} at revision {revision} on {self.endpoint}")
        if status >= 500 or status == 429:
            return HubError(f"the model hub answered HTTP {status} for {what} of {repo} — it may be busy or down; "
                            "try again later (downloaded data is kept)")
        return HubError(f"the model hub answered HTTP {status} for {what} of {repo}")

    def _retry(self, attempt: int, why: str) -> bool:
        if attempt >= len(RETRY_DELAYS):
            return False
        self.log(f"{why}; retrying in {RETRY_DELAYS[attempt]:g} s")
        time.sleep(RETRY_DELAYS[attempt])
        return True

    def info(self, repo: str, revision: str | None) -> tuple[str, dict]:
        """The commit `revision` resolves to, and the repository's files (rfilename -> huggingface_hub's
        RepoSibling) at it."""
        from huggingface_hub.hf_api import ModelInfo

        rev = revision or "main"
        api = f"{self.endpoint}/api/models/{repo}/revision/{quote(rev, safe='')}"
        attempt = 0
        while True:
            try:
                with self.client.stream("GET", api, params={"blobs": True}, headers=self.headers) as r:
                    if r.status_code in RETRY_STATUS and self._retry(attempt, f"model info: HTTP {r.status_code}"):
                        attempt += 1
                        continue
                    if r.status_code != 200:
                        raise self.http_error(r.status_code, r.headers, "the model information", repo, rev)
                    body = _read_at_most(r, MAX_INFO_BYTES)
                break
            except self.httpx2.TransportError as e:
                if isinstance(e, self.httpx2.ConnectError) or not self._retry(attempt, f"model info: {e}"):
                    raise self.unreachable(e) from None
                attempt += 1
            except self.httpx2.DecodingError as e:
                raise HubError(f"{self.endpoint} answered the model information of {repo} with data that does not "
                               f"decode ({' '.join(str(e).split())}); is HF_ENDPOINT a Hugging Face hub?") from None
        if body is None:
            raise HubError(f"{self.endpoint} answered the model information of {repo} with more than "
                           f"{format_bytes(MAX_INFO_BYTES)} (a hub's is a few KB); is HF_ENDPOINT a Hugging Face hub?")
        try:
            info = ModelInfo(**json.loads(body))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise HubError(f"{self.endpoint} answered model info for {repo} with something unexpected ({e}); "
                           "is HF_ENDPOINT a Hugging Face hub?") from None
        commit = info.sha or ""
        if not _SHA1.fullmatch(commit):
            raise HubError(f"{self.endpoint} did not say which commit {rev!r} of {repo} is; is HF_ENDPOINT a hub?")
        return commit, {s.rfilename: s for s in info.siblings or []}

    def remote_files(self, repo: str, commit: str, siblings: dict, names) -> list[RemoteFile]:
        """Size and checksum of each of `names` the repository holds (from the model info, else a HEAD request)."""
        files = []
        for fname in names:
            s = siblings.get(fname)
            if s is None:
                continue
            size, sha256, sha1 = (s.lfs.size, s.lfs.sha256, None) if s.lfs else (s.size, None, s.blob_id)
            if size is None or not (sha256 or sha1):
                size, sha256, sha1 = self.head(repo, fname, commit)
            files.append(RemoteFile(fname, int(size), (sha256 or "").lower() or None, (sha1 or "").lower() or None))
        return files

    def head(self, repo: str, filename: str, commit: str) -> tuple[int, str | None, str | None]:
        """Size and checksum from the resolve endpoint's headers, as huggingface_hub reads them: X-Linked-Etag and
        X-Linked-Size for an LFS file (on the redirect to the CDN), else ETag and Content-Length."""
        url = self.url(repo, filename, commit)
        try:
            r = self.client.head(url, headers={**self.headers, "Accept-Encoding": "identity"},
                                 follow_redirects=False)
        except self.httpx2.TransportError as e:
            raise self.unreachable(e) from None
        if r.status_code >= 400:
            raise self.http_error(r.status_code, r.headers, filename, repo, commit)
        etag = (r.headers.get("X-Linked-Etag") or r.headers.get("ETag") or "").removeprefix("W/").strip('"').lower()
        size = r.headers.get("X-Linked-Size") or (None if r.is_redirect else r.headers.get("Content-Length"))
        if size is None or not (_SHA256.fullmatch(etag) or _SHA1.fullmatch(etag)):
            raise HubError(f"the model hub publishes no size or checksum for {filename} of {repo}; refusing to "
                           "install a file that cannot be verified")
        return int(size), (etag if len(etag) == 64 else None), (etag if len(etag) == 40 else None)

    def download(self, repo: str, commit: str, part: Path, f: RemoteFile,
                 progress: Callable[[int], None]) -> tuple[str, str]:
        """Bring `part` up to f.size bytes, continuing from what it holds with a Range request, retrying a broken
        connection or a 5xx answer. Returns the sha256 and git blob sha1 of the whole file."""
        httpx2 = self.httpx2
        url = self.url(repo, f.name, commit)
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % f.size)
        have = part.stat().st_size if part.exists() else 0
        if have > f.size:
            part.unlink()
            have = 0
        if have:
            with open(part, "rb") as src:
                while chunk := src.read(HASH_CHUNK):
                    sha256.update(chunk)
                    sha1.update(chunk)
        attempt = 0
        with _open_for_append(part) as out:
            while have < f.size:
                headers = {**self.headers, "Accept-Encoding": "identity"}
                if have:
                    headers["Range"] = f"bytes={have}-"
                try:
                    with self.client.stream("GET", url, headers=headers) as r:
                        if r.status_code in RETRY_STATUS and self._retry(attempt, f"{f.name}: HTTP {r.status_code}"):
                            attempt += 1
                            continue
                        if r.status_code not in (200, 206):
                            raise self.http_error(r.status_code, r.headers, f.name, repo, commit)
                        if r.status_code == 200 and have:  # the server ignored the Range: start over
                            out.seek(0)
                            out.truncate()
                            progress(-have)
                            sha256, sha1, have = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % f.size), 0
                        elif r.status_code == 206 and not r.headers.get("Content-Range", "").startswith(
                                f"bytes {have}-"):
                            raise HubError(f"{f.name}: the server answered the range request from byte {have} with "
                                           f"{r.headers.get('Content-Range')!r}")
                        _check_length(r, f, have)
                        for chunk in r.iter_bytes():
                            if have + len(chunk) > f.size:
                                out.seek(0)
                                out.truncate()
                                raise HubError(f"{f.name}: the server sent more than the {f.size} bytes the hub "
                                               "lists; the partial file was discarded")
                            write_all(out, chunk, f.name, part.parent)
                            sha256.update(chunk)
                            sha1.update(chunk)
                            have += len(chunk)
                            attempt = 0  # progress made: a later break gets the full set of retries
                            progress(len(chunk))
                    if have < f.size:
                        raise httpx2.RemoteProtocolError("the response ended early")
                except httpx2.DecodingError as e:  # sent compressed though asked not to, and not even that
                    raise HubError(f"{f.name}: the server sent data that does not decode "
                                   f"({' '.join(str(e).split())}) — try again later; if it persists, the hub (or a "
                                   "proxy in between) is not serving the file it lists") from None
                except httpx2.TransportError as e:
                    if not self._retry(attempt, f"{f.name}: {' '.join(str(e).split())}"):
                        kept = f"; {format_bytes(have)} of {f.name} are kept for it" if have else ""
                        if isinstance(e, httpx2.ConnectError):
                            raise self.unreachable(e, kept) from None
                        raise HubError(f"the connection to {self.endpoint} broke while downloading {f.name} "
                                       f"({' '.join(str(e).split())}) — run the same command again to resume{kept}"
                                       ) from None
                    attempt += 1
        return sha256.hexdigest(), sha1.hexdigest()


def _read_at_most(r, limit: int) -> bytes | None:
    """The decoded body of a streamed response, or None as soon as it passes `limit` bytes."""
    chunks, size = [], 0
    for chunk in r.iter_bytes():  # httpx2 decodes in pieces of at most 1 MiB
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _shards_absent(index, shards: set[str]) -> str | None:
    """What is wrong with a shard index whose shards are `shards`, or None."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        return "has no weight_map of tensor names to shard files"
    absent = sorted(v[:100] for v in set(weight_map.values()) - shards)
    return f"names {_few(absent)}, not in the repository" if absent else None


def _check_length(r, f: RemoteFile, have: int) -> None:
    """Refuse, before reading it, an answer whose Content-Length is more than what is left of the size the model info
    lists: trusting it, the client would wait for bytes that never come (60 s, then again on each retry)."""
    length = r.headers.get("Content-Length")
    if length is None or r.headers.get("Content-Encoding", "identity") != "identity":
        return  # no length, or the length of the encoded body: the bytes are counted as they come
    if not length.isdigit() or int(length) > f.size - have:
        start = f" from byte {have}" if have else ""
        raise HubError(f"{f.name}: the server announced {length} bytes{start} where the hub lists {f.size} bytes for "
                       "the whole file; refusing it — try again later, and if it persists the hub (or a proxy in "
                       "between) is not serving the file it lists")


def _open_for_append(path: Path):
    """The .incomplete file, opened to continue it. Unbuffered: what write() accepted is on disk, and a full disk is
    reported by the write that hit it, not by a later close. (A seam for the disk-full test.)"""
    return open(path, "ab", buffering=0)


def _matches(f: RemoteFile, sha256: str, sha1: str) -> bool:
    return (f.sha256 == sha256) if f.sha256 else (f.git_sha1 == sha1)


def checkpoint_files(listing: list[str]) -> list[str]:
    """The files of a checkpoint to download, small ones first: MODEL_FILES, or with sharded weights their index
    then every shard in place of model.safetensors."""
    if WEIGHTS_FILE in listing or SHARDED_INDEX_FILE not in listing:
        return list(MODEL_FILES)
    return [n for n in MODEL_FILES if n != WEIGHTS_FILE] + [SHARDED_INDEX_FILE] + sorted(
        n for n in listing if _SHARD.fullmatch(n))


def _check_listing(repo: str, files: list[RemoteFile], listing: list[str], commit: str) -> None:
    have = {f.name for f in files}
    if SHARDED_INDEX_FILE in have and any(_SHARD.fullmatch(n) for n in have):
        have.add(WEIGHTS_FILE)  # the shards stand for it
    missing = [f for f in REQUIRED_FILES if f not in have]
    if not missing:
        return
    if WEIGHTS_FILE in missing and any(re.fullmatch(r"model-\d+-of-\d+\.safetensors", n) for n in listing):
        raise HubError(f"{repo} has sharded weights without {SHARDED_INDEX_FILE} to say which tensor is in which "
                       f"shard; Trit runs a single {WEIGHTS_FILE}, or shards with their index")
    if any(n.lower().endswith(GGUF_SUFFIX) for n in listing):
        raise HubError(f"{repo} holds no GGUF model file (only {', '.join(_gguf_files(listing, every=True)[:3])}) "
                       f"and no BitNet checkpoint in the packed Hugging Face format, like {DEFAULT_REPO}")
    raise HubError(f"{repo} (commit {commit[:7]}) has no {', '.join(missing)}: it is not a BitNet b1.58 model in the "
                   f"packed Hugging Face format, like {DEFAULT_REPO}")


def _gguf_files(listing: list[str], every: bool = False) -> list[str]:
    """The GGUF model files of a repository listing: not projectors (mmproj-*), and of a split model only its first
    part. every=True: every .gguf file."""
    out = []
    for n in listing:
        base = n.rsplit("/", 1)[-1].lower()
        if not base.endswith(GGUF_SUFFIX):
            continue
        split = _SPLIT.search(base)
        if every or not (base.startswith("mmproj") or (split and int(split.group(1)) != 1)):
            out.append(n)
    return out


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _gguf_to_pull(repo: str, commit: str, listing: list[str], file: str | None) -> str | None:
    """The GGUF file of the repository to install: `file`, or its only GGUF model when it is no BitNet checkpoint.
    None: a BitNet checkpoint (or nothing Trit runs, which _check_listing explains)."""
    models = _gguf_files(listing)
    if file is not None:
        f = file.strip().lstrip("/")
        if not f.lower().endswith(GGUF_SUFFIX):
            raise HubError(f"--file names one .gguf file of {repo}, not {file!r}"
                           + (f"; it holds {_few(models)}" if models else ""))
        if f not in listing:
            raise HubError(f"{repo} has no {f} at {commit[:7]}"
                           + (f"; its GGUF files: {_few(models)}" if models else "; it holds no GGUF file"))
    elif all(n in listing for n in REQUIRED_FILES) or not models:
        return None
    elif len(models) > 1:
        raise HubError(f"{repo} holds {len(models)} GGUF models ({_few(models)}): choose one with --file, e.g. "
                       f"`trit pull {repo} --file {models[0]}`")
    else:
        f = models[0]
    split = _SPLIT.search(f)
    if split and int(split.group(2)) > 1:
        raise HubError(f"{f} of {repo} is one part of a GGUF split into {int(split.group(2))} files; Trit installs "
                       "single-file GGUFs: pick a quantization that comes as one file")
    return f


def pull(repo: str, models_dir: str | os.PathLike, revision: str | None = None, *,
         name: str | None = None, file: str | None = None, endpoint: str | None = None,
         token: str | bool | None = None, progress: ProgressCallback | None = None,
         log: LogCallback | None = None) -> InstalledModel:
    """Download a model from the hub into models_dir/<name>.

    A BitNet b1.58 checkpoint in the packed Hugging Face format (name: the repository's last component), or one GGUF
    file for llama.cpp: `file` (its path in the repository), or the repository's only GGUF model when it holds no
    checkpoint (name: the file's stem, see gguf_name). Several GGUF models and no `file`: HubError listing them.
    revision: a branch, tag or commit (default main), resolved once to a commit that every file is fetched from and
    that the manifest records. endpoint: the hub (default $HF_ENDPOINT, read now, else huggingface.co).
    An installed model already at that commit is returned as it is. Interrupting keeps the data for the next call.
    """
    repo = normalize_repo(repo)
    if name is not None:
        validate_name(name)
    models_dir = Path(models_dir)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    log = log or (lambda msg: None)
    source = f"hf:{repo}"
    hub = _Hub(endpoint, token, log)
    try:
        commit, siblings = hub.info(repo, revision)
        listing = sorted(siblings)
        gguf = _gguf_to_pull(repo, commit, listing, file)
        if gguf is None:
            files = hub.remote_files(repo, commit, siblings, checkpoint_files(listing))
            _check_listing(repo, files, listing, commit)
            for f in files:
                if f.size > JSON_FILE_LIMITS.get(f.name, f.size):
                    raise HubError(f"{repo}: {f.name} is {format_bytes(f.size)} where one is a few KB; refusing the "
                                   "repository before downloading anything")
            name = name or default_name(repo)
        else:
            local = gguf.rsplit("/", 1)[-1]
            local = local[:-len(GGUF_SUFFIX)] + GGUF_SUFFIX  # *.GGUF too: the model folder's file is found by *.gguf
            files = [replace(f, local=local) for f in hub.remote_files(repo, commit, siblings, [gguf])]
            name = name or gguf_name(gguf)
        dest = models_dir / name
        current = read_manifest(dest) if dest.is_dir() else None
        if current is None and dest.exists():
            raise EngineError(f"{dest} exists and is not a model Trit installed; move it away first")
        if (current is not None and current.source == source and current.revision == commit and current.verified
                and set(current.files) == {f.dest for f in files}):
            log(f"{name} is already installed at {commit[:7]}")
            return current
        models_dir.mkdir(parents=True, exist_ok=True)
        with InstallLock(models_dir, name):
            return _pull_locked(hub, repo, commit, files, name, models_dir, progress, log, gguf=gguf is not None)
    finally:
        hub.close()


class _Refused(HubError):
    """A download stopped early because the file is one Trit will not install."""


def _pull_locked(hub: _Hub, repo: str, commit: str, files: list[RemoteFile], name: str, models_dir: Path,
                 progress: ProgressCallback | None, log: LogCallback, gguf: bool = False) -> InstalledModel:
    staging = partial_folder(models_dir, name)
    state_path = staging / STATE_FILE
    wanted = [f.dest for f in files]
    state = None
    if staging.is_dir():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        if (not isinstance(state, dict) or state.get("repo") != repo or state.get("revision") != commit
                or state.get("files", wanted) != wanted):
            if any(staging.iterdir()):
                log(f"discarding kept data of an earlier pull of {name} (another repository, revision or file)")
            shutil.rmtree(staging)
            state = None
    if state is None:
        staging.mkdir(parents=True)
        state = {"repo": repo, "revision": commit, "files": wanted, "done": {}}
        write_json_atomic(state_path, state)

    def finished(f: RemoteFile) -> bool:
        entry = state["done"].get(f.dest)
        path = staging / f.dest
        return bool(entry) and path.is_file() and path.stat().st_size == f.size and entry.get("size") == f.size

    on_disk = {f.dest: (f.size if finished(f) else
                        min((staging / (f.dest + ".incomplete")).stat().st_size, f.size)
                        if (staging / (f.dest + ".incomplete")).exists() else 0) for f in files}
    total = sum(f.size for f in files)
    done = sum(on_disk.values())
    check_space(models_dir, total - done, f"{repo} ({format_bytes(total)})")

    for f in files:
        if finished(f):
            continue
        part = staging / (f.dest + ".incomplete")
        for attempt in (1, 2):
            start = min(part.stat().st_size, f.size) if part.exists() else 0
            file_done = start
            peek = gguf and start < GGUF_PEEK_BYTES  # look at a GGUF's architecture once its header is in

            def step(n: int, f=f, part=part) -> None:
                nonlocal done, file_done, peek
                done += n
                file_done += n
                if progress:
                    progress(Progress(f.dest, file_done, f.size, done, total))
                if peek and file_done >= min(GGUF_PEEK_BYTES, f.size):
                    peek = False
                    arch = gguf_architecture(part)
                    if arch in BITNET_ARCHITECTURES:
                        raise _Refused(bitnet_refusal(f"{repo}/{f.name}", arch))

            if progress:
                progress(Progress(f.dest, file_done, f.size, done, total))
            try:
                sha256, sha1 = hub.download(repo, commit, part, f, step)
            except _Refused:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            if _matches(f, sha256, sha1):
                break
            part.unlink()
            done -= f.size
            expected = f.sha256 or f.git_sha1
            got = sha256 if f.sha256 else sha1
            kind = "sha256" if f.sha256 else "git blob sha1"
            if attempt == 2:
                raise ChecksumError(f"{f.name} of {repo} does not match the {kind} the hub publishes, twice in a row "
                                    f"(expected {expected[:12]}…, got {got[:12]}…); the download was discarded — try "
                                    "again later")
            log(f"{f.name}: {kind} {got[:12]}… does not match the hub's {expected[:12]}…; downloading it again")
        os.replace(part, staging / f.dest)
        state["done"][f.dest] = {"size": f.size, "sha256": sha256}
        write_json_atomic(state_path, state)
        if f.name == CONFIG_FILE and not gguf:  # refuse a repository of a family Trit does not run before its weights
            try:
                family_of(json.loads((staging / CONFIG_FILE).read_text(encoding="utf-8")), CONFIG_FILE)
            except (CheckpointError, ValueError, RecursionError) as e:
                shutil.rmtree(staging, ignore_errors=True)
                if for_repo(repo) is not None:  # listed in the catalogue: the engine of a later Trit runs it
                    raise HubError(f"{repo} is in Trit's catalogue, but this version does not run it yet: {e}"
                                   ) from None
                raise HubError(f"{repo} is not a model Trit can run: {e} — `trit pull --list` shows the models it "
                               "runs") from None
        if f.name == SHARDED_INDEX_FILE:  # every shard it names must be one being downloaded, before the shards
            wanted_shards = {g.name for g in files if _SHARD.fullmatch(g.name)}
            try:
                absent = _shards_absent(json.loads((staging / f.dest).read_text(encoding="utf-8")), wanted_shards)
            except (ValueError, RecursionError) as e:
                absent = f"is not valid JSON ({' '.join(str(e).split())})"
            if absent:
                shutil.rmtree(staging, ignore_errors=True)
                raise HubError(f"{repo}: {SHARDED_INDEX_FILE} {absent}; the repository is incomplete")

    info = None
    if gguf:  # llama.cpp is not needed to install: its header is checked here, the model is loaded at the first chat
        try:
            info = check_gguf_file(staging / files[0].dest, f"{repo}/{files[0].name}")
        except GGUFError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise HubError(str(e)) from None
    else:
        log(f"checking {name} and preparing its weights for this CPU")
        try:
            check_folder(staging)
        except CheckpointError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise HubError(f"{repo} at {commit[:7]} is not a model Trit can run: {e}") from None
    state_path.unlink()
    recorded = {f.dest: state["done"][f.dest] for f in files}
    write_json_atomic(staging / MANIFEST_FILE, manifest(name, f"hf:{repo}", commit, recorded, info))
    move_into_place(staging, models_dir / name)
    return locate(models_dir, name)
