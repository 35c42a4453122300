"""A conversation's KV cache on disk, so that `trit ask -c` in a new process continues where the last one stopped
instead of prefilling the whole conversation again.

    header  b"TRIT-KV\\n", version u32, stamp length u32, the stamp (JSON: whatever can change the cached numbers)
    rows    one per position, as trit_context_read_kv gives them (keys and values of every layer and kv head, in the
            cache's type: the stamp's "dtype"; a file of another type is ignored as a stale one is)
    meta    JSON: {"tokens": [the exact token ids], "text": what they spell, "crc": CRC-32 of the rows}
    footer  meta offset u64, meta length u64, CRC-32 of the meta u32, b"TRIT-END"

The rows follow the header, so a follow-up turn cuts off the old meta and footer, appends its new rows and writes a
new meta: it writes what is new (77 KB a token for the 2B4T), not the whole cache. A file whose stamp is not exactly
this model's, or that does not check out in any way (magic, version, sizes, tokens, CRC), is never trusted: `peek`
and `load` return None and the caller prefills as if there were no file. A write cut short leaves no valid footer,
so it is ignored the same way; a file that cannot be extended is written anew beside it and renamed over it.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC, END = b"TRIT-KV\n", b"TRIT-END"
VERSION = 1
HEAD = struct.Struct("<8sII")     # magic, version, stamp length
FOOT = struct.Struct("<QQI8s")    # meta offset, meta length, meta CRC, END
MAX_STAMP = 1 << 16
MAX_META = 64 << 20  # token ids and the text of a whole context, with room to spare
CHUNK_ROWS = 256  # rows read or written at a time: a few MB for the 2B4T, however long the conversation


def stamp(model) -> dict:
    """What the cached numbers depend on: the weights (their fingerprint), the kernel that computed them, the
    ternary format and head the model runs, the cache's shape and type, and this version of Trit."""
    from trit import __version__
    from trit.engine.formats import derived

    c = model.config
    return {"trit": __version__, "fingerprint": derived.fingerprint(model.checkpoint), "kernel": model.kernel,
            "ternary": model.ternary, "head": model.head, "n_layers": c.num_hidden_layers,
            "n_kv_heads": c.num_key_value_heads, "head_dim": c.head_dim, "vocab_size": c.vocab_size, "dtype": model.kv}


@dataclass(frozen=True)
class Saved:
    tokens: list[int]
    text: str
    crc: int
    rows_at: int    # offset of the first row
    row_bytes: int


def _row_bytes(stamp: dict) -> int:
    head_dim = stamp["head_dim"]
    per_head = {"f16": 4 * head_dim, "f32": 8 * head_dim, "q8": 2 * head_dim + 8}[stamp["dtype"]]
    return stamp["n_layers"] * stamp["n_kv_heads"] * per_head


def _header(stamp: dict) -> bytes:
    body = json.dumps(stamp, sort_keys=True).encode()
    return HEAD.pack(MAGIC, VERSION, len(body)) + body


def peek(path: Path, stamp: dict, n_ctx: int) -> Saved | None:
    """The tokens and text a file holds when everything but the rows' CRC checks out for this model, else None."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            expected = _header(stamp)
            if size < len(expected) + FOOT.size or f.read(len(expected)) != expected:
                return None  # another format, version or model
            f.seek(size - FOOT.size)
            meta_at, meta_len, meta_crc, end = FOOT.unpack(f.read(FOOT.size))
            if end != END or meta_len > MAX_META or meta_at + meta_len + FOOT.size != size:
                return None
            f.seek(meta_at)
            data = f.read(meta_len)
            if zlib.crc32(data) != meta_crc:
                return None
            meta = json.loads(data.decode("utf-8"))
    except (OSError, ValueError, struct.error):  # unreadable, or not UTF-8 / JSON (ValueError covers both)
        return None
    if not isinstance(meta, dict) or set(meta) != {"tokens", "text", "crc"}:
        return None
    tokens, text, crc = meta["tokens"], meta["text"], meta["crc"]
    vocab = stamp["vocab_size"]
    if not (isinstance(tokens, list) and 0 < len(tokens) <= n_ctx and isinstance(text, str)
            and type(crc) is int and 0 <= crc < 1 << 32
            and all(type(t) is int and 0 <= t < vocab for t in tokens)):
        return None
    row_bytes = _row_bytes(stamp)
    if meta_at != len(expected) + len(tokens) * row_bytes:
        return None
    return Saved(tokens, text, crc, len(expected), row_bytes)


def load(path: Path, context, stamp: dict) -> Saved | None:
    """Restore a saved cache into `context` (a native engine.runtime.model.Context), replacing what it holds, and
    return what was saved; None, with the context emptied if it had begun, when the file is not usable."""
    saved = peek(path, stamp, context.n_ctx)
    if saved is None or saved.row_bytes != context.kv_row_bytes:
        return None
    n, crc = len(saved.tokens), 0
    context.truncate(0)
    try:
        with open(path, "rb") as f:
            f.seek(saved.rows_at)
            for first in range(0, n, CHUNK_ROWS):
                count = min(CHUNK_ROWS, n - first)
                data = f.read(count * saved.row_bytes)
                if len(data) != count * saved.row_bytes:
                    raise OSError("short read")
                crc = zlib.crc32(data, crc)
                context.write_kv(first, saved.tokens[first:first + count], np.frombuffer(data, np.uint16))
    except OSError:
        crc = -1
    if crc != saved.crc:
        context.truncate(0)
        return None
    try:
        os.utime(path)  # recently used: the budget's eviction keeps it longest
    except OSError:
        pass  # a read-only folder: the cache is used all the same
    return saved


def save(path: Path, context, text: str, stamp: dict) -> int:
    """Write the context's cache and `text` (what its tokens spell, "" when not known) to `path`, readable by its
    owner only. When the file holds a prefix of these tokens (a follow-up), or shares one with them (the last reply
    came back re-tokenized, a message was edited), it is cut there and the rest appended; else it is written anew
    and renamed over the old one. Returns the bytes written. Raises OSError (a full disk, a read-only folder)."""
    tokens = list(context.tokens)
    if not tokens:
        raise ValueError("the context holds no tokens to save")
    old = peek(path, stamp, context.n_ctx)
    keep = 0
    if old is not None and old.row_bytes == context.kv_row_bytes:
        keep = next((i for i, (a, b) in enumerate(zip(old.tokens, tokens)) if a != b), min(len(old.tokens),
                                                                                           len(tokens)))
    if keep:
        with open(path, "r+b") as f:
            crc = old.crc if keep == len(old.tokens) else _prefix_crc(f, old, keep)
            if crc is not None:
                f.truncate(old.rows_at + keep * old.row_bytes)  # the old meta and footer go: no valid end until done
                f.seek(0, os.SEEK_END)
                return _write_rows(f, context, tokens, text, keep, crc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as f:
            f.write(_header(stamp))
            written = _write_rows(f, context, tokens, text, 0, 0)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written


def _prefix_crc(f, saved: Saved, keep: int) -> int | None:
    """The CRC of the first `keep` rows, if every row checks out against the saved CRC (else None: write anew).
    Appending to a prefix whose CRC is continued needs no check: a damaged row still fails the final CRC."""
    f.seek(saved.rows_at)
    crc = prefix = 0
    for first in range(0, len(saved.tokens), CHUNK_ROWS):
        count = min(CHUNK_ROWS, len(saved.tokens) - first)
        data = f.read(count * saved.row_bytes)
        if first < keep:
            prefix = zlib.crc32(data[:(min(keep - first, count)) * saved.row_bytes], prefix)
        crc = zlib.crc32(data, crc)
    return prefix if crc == saved.crc else None


def _write_rows(f, context, tokens: list[int], text: str, first: int, crc: int) -> int:
    """Rows [first, len(tokens)) at the file's position, then the meta and the footer."""
    start = f.tell()
    for at in range(first, len(tokens), CHUNK_ROWS):
        data = context.read_kv(at, min(CHUNK_ROWS, len(tokens) - at)).tobytes()
        crc = zlib.crc32(data, crc)
        f.write(data)
    meta = json.dumps({"tokens": tokens, "text": text, "crc": crc}).encode()  # ASCII: any str survives
    meta_at = f.tell()
    f.write(meta)
    f.write(FOOT.pack(meta_at, len(meta), zlib.crc32(meta), END))
    return f.tell() - start
