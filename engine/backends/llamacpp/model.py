"""A GGUF model on llama.cpp, with the interface of trit.engine.runtime.model.Model that the app uses, and its KV
contexts (trit.engine.runtime.chat.KVContext on a llama_context)."""

from __future__ import annotations

import ctypes
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trit.engine.backends.llamacpp import library
from trit.engine.backends.llamacpp.library import LlamaCppError, llama_cpp_version
from trit.engine.backends.llamacpp.tokenizer import GGUFTokenizer
from trit.engine.errors import InputError
from trit.engine.formats.checkpoint import kv_bytes_per_token
from trit.engine.formats.gguf import GGUFError, GGUFInfo, check_gguf
from trit.engine.kinds import LLAMA_CPP
from trit.engine.runtime.chat import ChatSessions
from trit.engine.runtime.native import NativeObject, as_token_array, c_int
from trit.engine.runtime.sampling import SamplingParams

DEFAULT_N_CTX = 4096  # the conversation window when the model allows it (as the native engine's 2B4T)
DEFAULT_BATCH = 256  # prefill chunk: how often a long prefill notices a cancel


@dataclass(frozen=True)
class GGUFConfig:
    """The shape of a GGUF model, as llama.cpp loaded it (names as in engine.formats.checkpoint.ModelConfig)."""
    architecture: str
    vocab_size: int
    context_length: int  # the training context (n_ctx_train)
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    description: str = ""

    def kv_bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.num_hidden_layers, self.num_key_value_heads, self.head_dim)


# ---------------------------------------------------------------------------------------------------------------
# the model


class GGUFModel(NativeObject):
    """A GGUF model loaded by llama.cpp (memory-mapped), with the interface of runtime.model.Model that the app uses:
    chat, default_params, tokenizer, context, logits, close, path, config, backend."""

    backend = LLAMA_CPP
    _model = None
    _sessions = None
    _tokenizer = None

    def __init__(self, path: str | os.PathLike, threads: int | None = None, n_ctx: int | None = None,
                 batch: int = DEFAULT_BATCH, info: GGUFInfo | None = None):
        threads = c_int(threads, "threads") if threads else None  # before the load: ctypes would keep 32 bits of it
        self.info = info or check_gguf(path)
        self.path: Path = self.info.path
        lib = library.llama()
        self._lib = lib
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0  # the CPU, always: the same machine every time, nothing to offload
        mark = library.log.mark()
        handle = lib.llama_model_load_from_file(str(self.path).encode("utf-8"), params)
        if not handle:
            version = llama_cpp_version()
            raise GGUFError(f"{self.path}: llama.cpp{f' (llama-cpp-python {version})' if version else ''} cannot "
                            f"load this GGUF: {library.log.reason(mark)}")
        self._model = handle
        self._contexts: weakref.WeakSet[LlamaCppContext] = weakref.WeakSet()
        self._vocab = lib.llama_model_get_vocab(handle)
        if lib.llama_model_has_encoder(handle):
            self.close()
            raise GGUFError(f"{self.path}: an encoder-decoder model ({self.info.architecture!r}): Trit chats with "
                            "decoder-only models")
        n_head = max(1, lib.llama_model_n_head(handle))
        n_embd = lib.llama_model_n_embd(handle)
        head_dim = self.info.arch_key("attention.key_length")
        self.config = GGUFConfig(
            architecture=self.info.architecture, vocab_size=lib.llama_vocab_n_tokens(self._vocab),
            context_length=lib.llama_model_n_ctx_train(handle), hidden_size=n_embd,
            num_hidden_layers=lib.llama_model_n_layer(handle), num_attention_heads=n_head,
            num_key_value_heads=lib.llama_model_n_head_kv(handle),
            head_dim=head_dim if isinstance(head_dim, int) and head_dim > 0 else n_embd // n_head,
            description=self._describe())
        limit = self.config.context_length if self.config.context_length > 0 else DEFAULT_N_CTX
        if n_ctx is not None and not 0 < n_ctx <= limit:
            self.close()
            raise InputError(f"a context of {n_ctx} positions is outside 1..{limit} for {self.path.name}")
        self.n_ctx_max = n_ctx or min(DEFAULT_N_CTX, limit)
        self.batch = max(1, int(batch))
        self._threads = int(threads or library.default_threads())

    def _describe(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self._lib.llama_model_desc(self._model, buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def __repr__(self):
        return f"GGUFModel({str(self.path)!r}, {self.config.description or self.config.architecture})"

    # ---- properties -----------------------------------------------------------------------------------------------
    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, n: int) -> None:
        self._threads = max(1, c_int(n, "threads"))
        for ctx in list(self._contexts):
            ctx.set_threads(self._threads)

    @property
    def kernel(self) -> str:
        return LLAMA_CPP

    def _check_open(self) -> None:
        if not self._model:
            raise InputError(f"{self.path.name}: the model is closed")

    # ---- evaluation -----------------------------------------------------------------------------------------------
    def context(self, n_ctx: int | None = None, max_batch: int | None = None,
                all_logits: bool = False) -> "LlamaCppContext":
        """A KV cache of its own (a llama_context). all_logits: also able to return every position's logits, which
        costs a buffer of max_batch x vocab floats; chat contexts only need the last token's."""
        self._check_open()
        ctx = LlamaCppContext(self, n_ctx or self.n_ctx_max, max_batch or self.batch, all_logits)
        self._contexts.add(ctx)
        return ctx

    def logits(self, token_ids) -> np.ndarray:
        """float32 logits [n_tokens, vocab] of a fresh context: position i sees tokens 0..i."""
        ids = list(token_ids)
        if len(ids) > self.config.context_length > 0:
            raise InputError(f"{len(ids)} tokens do not fit the model's context of {self.config.context_length}")
        with self.context(max(len(ids), 1), all_logits=True) as ctx:
            return ctx.eval(ids, logits="all")

    # ---- conversation ---------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> "GGUFTokenizer":
        if self._tokenizer is None:
            self._check_open()
            self._tokenizer = GGUFTokenizer(self)
        return self._tokenizer

    def default_params(self, **overrides):
        """Sampling settings from the GGUF's general.sampling.* keys when it has them (else SamplingParams'
        defaults), with overrides (None = keep). A value in the file that SamplingParams refuses is ignored."""
        values: dict[str, Any] = {}
        for name, value in self.info.sampling.items():
            try:
                SamplingParams(**{name: value})
            except ValueError:
                continue
            values[name] = value
        return SamplingParams(**values).replace(**overrides)

    def chat(self, messages, params=None, cancel=None, keep_all=False):
        """Continue a conversation: yields runtime.chat.Piece (text as it comes) and, last, a ChatResult — the same
        runtime.chat.ChatSessions as the native engine, on llama.cpp contexts."""
        self._check_open()
        if self._sessions is None:
            self._sessions = ChatSessions(self, self.tokenizer, self.n_ctx_max)
        return self._sessions.stream(messages, params or self.default_params(), cancel, keep_all)

    def close(self) -> None:
        if self._sessions is not None:
            self._sessions.close()
            self._sessions = None
        if self._model:
            for ctx in list(self._contexts):  # every context before the model it belongs to
                ctx.close()
            if self._tokenizer is not None:
                self._tokenizer._vocab = None
            self._lib.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class LlamaCppContext(NativeObject):
    """A KV cache on a llama_context (one sequence): tokens evaluated so far (`tokens`), extended by `eval`, cut
    back by `truncate` — engine.runtime.chat.KVContext, as engine.runtime.model.Context."""

    def __init__(self, model: GGUFModel, n_ctx: int, max_batch: int = DEFAULT_BATCH, all_logits: bool = False):
        if not 0 < n_ctx <= max(model.n_ctx_max, model.config.context_length):
            raise InputError(f"a context of {n_ctx} positions is outside 1..{model.config.context_length}")
        lib = model._lib
        self.model, self._lib = model, lib
        self.max_batch = max(1, min(int(max_batch), n_ctx))
        self.all_logits = all_logits
        self.vocab_size = model.config.vocab_size
        p = lib.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = p.n_ubatch = self.max_batch
        p.n_seq_max = 1
        p.n_outputs_max = self.max_batch if all_logits else 1  # the logits buffer: one row is all a chat needs
        p.n_threads = p.n_threads_batch = model.threads
        p.no_perf = True
        p.swa_full = True  # sliding-window models keep every cell, so the cache can be cut back anywhere
        mark = library.log.mark()
        self._ctx = lib.llama_init_from_model(model._model, p)
        if not self._ctx:
            raise LlamaCppError(f"llama.cpp could not make a context of {n_ctx} tokens for {model.path.name}: "
                                f"{library.log.reason(mark)}")
        self._n_ctx = min(n_ctx, lib.llama_n_ctx(self._ctx))
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(self.max_batch, 0, 1)
        self._batch_alive = True
        self.tokens: list[int] = []

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def set_threads(self, n: int) -> None:
        if self._ctx:
            self._lib.llama_set_n_threads(self._ctx, n, n)

    def eval(self, token_ids, logits: str | None = "last") -> np.ndarray | None:
        """Run tokens at positions n_past.. and keep them in the cache.

        logits: "last" -> float32 [vocab] for the last token, "all" -> [n, vocab] (a context made with
        all_logits=True), None -> nothing."""
        if not self._ctx:
            raise InputError("the context is closed")
        ids = as_token_array(token_ids, self.vocab_size)
        if len(ids) > self.n_ctx - self.n_past:
            raise InputError(
                f"{len(ids)} more tokens do not fit: {self.n_past} of {self.n_ctx} context positions are used")
        if logits not in ("last", "all", None):
            raise ValueError(f"logits must be 'last', 'all' or None, not {logits!r}")
        if logits == "last" and len(ids) == 0:
            raise InputError("no tokens to evaluate")
        if logits == "all" and not self.all_logits:
            raise ValueError("this context keeps only the last token's logits: make it with all_logits=True")
        out = np.empty((len(ids), self.vocab_size), np.float32) if logits == "all" else None
        lib, batch = self._lib, self._batch
        for start in range(0, len(ids), self.max_batch):
            chunk = ids[start:start + self.max_batch]
            n, past = len(chunk), self.n_past
            last_chunk = start + n == len(ids)
            batch.n_tokens = n
            for i, token in enumerate(chunk.tolist()):
                batch.token[i] = token
                batch.pos[i] = past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = logits == "all"
            if logits == "last" and last_chunk:
                batch.logits[n - 1] = 1
            mark = library.log.mark()
            rc = lib.llama_decode(self._ctx, batch)
            if rc != 0:
                lib.llama_memory_seq_rm(self._memory, 0, past, -1)  # nothing of a failed chunk stays
                raise LlamaCppError(f"llama.cpp could not evaluate {n} tokens at position {past} (llama_decode "
                                    f"returned {rc}: {library.log.reason(mark)})")
            self.tokens.extend(chunk.tolist())
            if logits == "all":
                out[start:start + n] = np.ctypeslib.as_array(lib.llama_get_logits(self._ctx),
                                                             shape=(n, self.vocab_size))
            elif logits == "last" and last_chunk:
                out = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, -1), shape=(self.vocab_size,)).copy()
        return out

    def truncate(self, n_past: int) -> None:
        """Keep the first n_past positions of the cache. A model whose state cannot be cut back (recurrent ones) is
        emptied instead: tokens then holds fewer than n_past, and the caller evaluates the rest again."""
        n_past = max(0, int(n_past))
        if n_past >= len(self.tokens) or not self._ctx:
            return
        lib, mem = self._lib, self._memory
        ok = bool(lib.llama_memory_seq_rm(mem, 0, n_past, -1))
        if ok and n_past > 0:
            ok = (lib.llama_memory_seq_pos_max(mem, 0) == n_past - 1 and lib.llama_memory_seq_pos_min(mem, 0) == 0)
        if ok:
            del self.tokens[n_past:]
        else:
            lib.llama_memory_clear(mem, True)
            self.tokens.clear()

    def close(self) -> None:
        if getattr(self, "_batch_alive", False):
            self._lib.llama_batch_free(self._batch)
            self._batch_alive = False
        if getattr(self, "_ctx", None):
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def __del__(self):
        try:
            if self.model._model:  # after the model is freed, its close() has freed this context already
                self.close()
        except Exception:
            pass
