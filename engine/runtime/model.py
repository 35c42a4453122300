"""A loaded model and its contexts: the Python face of the native forward pass."""

from __future__ import annotations

import ctypes as C
from pathlib import Path

import numpy as np

from trit.engine.errors import CheckpointError, InputError, NativeError
from trit.engine.formats import derived
from trit.engine.formats.checkpoint import Checkpoint, ModelConfig
from trit.engine.kinds import BITNET
from trit.engine.runtime import native
from trit.engine.runtime.native import NativeObject, as_token_array

# Prefill chunk: how often a long prefill can notice a cancel; bounds scratch memory (22 MB for 2B4T).
DEFAULT_BATCH = 128
# A 4.5-bit head with its 32 best logits per thread recomputed exactly: 185 MB read per token instead of 657 MB for
# the 2B4T, KL 0.0055 nats from the exact head on a random model (engine/formats/derived.py). "bf16" stays available.
DEFAULT_HEAD = "q4"
# Below this many ternary weights a decoding step takes well under a millisecond on one core, and a second thread
# mostly waits at the barriers between operations (a tenth of the speed when another program holds the other core).
SMALL_MODEL_WEIGHTS = 50_000_000


class Model(NativeObject):
    """Weights memory-mapped from a checked checkpoint, handed to the native library without a copy."""

    backend = BITNET  # Trit's own kernel; a GGUF model (backends.llamacpp.model.GGUFModel) says kinds.LLAMA_CPP
    _sessions = None
    _tokenizer = None

    def __init__(self, checkpoint: Checkpoint, threads: int | None = None, head: str = DEFAULT_HEAD,
                 ternary: str = "auto", kv: str = native.DEFAULT_KV):
        if kv not in native.KV_TYPES:
            raise ValueError(f"kv must be one of {', '.join(native.KV_TYPES)}, not {kv!r}")
        self.kv = kv  # every context's cache type
        if head not in derived.HEADS:
            raise ValueError(f"head must be one of {', '.join(derived.HEADS)}, not {head!r}")
        if ternary == "auto":
            ternary = native.preferred_ternary_format()
        if ternary not in derived.TERNARY_FORMATS:
            raise ValueError(f"ternary must be auto or one of {', '.join(derived.TERNARY_FORMATS)}, not {ternary!r}")
        self.head, self.ternary = head, ternary
        self.checkpoint = checkpoint
        self.config: ModelConfig = checkpoint.config
        self.path: Path = checkpoint.folder
        self._keep: list[np.ndarray] = []  # every array native code points into lives as long as the model
        cfg = self.config

        def f32(name: str):
            a = np.ascontiguousarray(checkpoint.f32(name))
            self._keep.append(a)
            return a.ctypes.data_as(native._f32p)

        t5 = derived.ternary_t5(checkpoint) if ternary == "t5" else {}
        self._check_ternary(checkpoint, t5)

        def packed(name: str):
            a = t5[name] if t5 else checkpoint.raw(name)
            self._keep.append(a)
            return C.cast(native.ptr(a), native._u8p)

        layers = (native.LayerWeights * cfg.num_hidden_layers)()
        for i in range(cfg.num_hidden_layers):
            p, L = f"model.layers.{i}.", layers[i]
            L.input_norm = f32(p + "input_layernorm.weight")
            L.post_attn_norm = f32(p + "post_attention_layernorm.weight")
            if cfg.has_sub_norms:  # the Llama block has none: NULL, and native code reads o's and down's input as is
                attn_norm, ffn_norm = cfg.sub_norm_names
                L.attn_sub_norm = f32(p + attn_norm + ".weight")
                L.ffn_sub_norm = f32(p + ffn_norm + ".weight")
            for short, full in (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                                ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
                                ("down", "mlp.down_proj")):
                setattr(L, short, packed(p + full + ".weight"))
                setattr(L, short + "_scale", checkpoint.scale(p + full + ".weight_scale"))
        embed = derived.embedding_bf16(checkpoint)
        self._embedding_by_rows = head != "bf16"  # else the head reads all of it every token anyway
        self._keep.append(embed)
        weights = native.Weights(C.cast(native.ptr(embed), native._u16p), f32("model.norm.weight"), layers,
                                 native.HEAD_TYPES[head], None, None, None)
        if not cfg.tie_word_embeddings:  # the untied head's exact rows: the bf16 head, and what a compact one rescores
            output = derived.output_bf16(checkpoint)
            self._keep.append(output)
            weights.output = C.cast(native.ptr(output), native._u16p)
        if head != "bf16":
            tensors = derived.head(checkpoint, head)
            self._keep.extend(tensors.values())
            weights.head = native.ptr(tensors["head." + head])
            weights.head_scales = native.ptr(tensors["head.scales"])
        sizes = {name: native.c_int(getattr(cfg, name), f"config.json {name}") for name in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "max_position_embeddings")}
        config = native.Config(
            *sizes.values(), cfg.rope_theta, cfg.rms_norm_eps,
            native.SCALE_MULTIPLY if cfg.linear_class == "autobitlinear" else native.SCALE_DIVIDE,
            native.TERNARY_FORMATS[ternary], native.BLOCKS[cfg.family])
        self._lib = native.lib()
        if threads is None and self._ternary_weights(cfg) < SMALL_MODEL_WEIGHTS:
            threads = 1  # too little work per step to share: each hand-off between cores costs more than it saves
        self._handle = self._lib.trit_model_create(C.byref(config), C.byref(weights), native.c_threads(threads or 0))
        if not self._handle:
            raise NativeError(native.last_error())

    @staticmethod
    def _ternary_weights(cfg: ModelConfig) -> int:
        kv = cfg.num_key_value_heads * cfg.head_dim
        per_layer = cfg.hidden_size * (2 * cfg.hidden_size + 2 * kv) + 3 * cfg.hidden_size * cfg.intermediate_size
        return cfg.num_hidden_layers * per_layer

    @staticmethod
    def _check_ternary(checkpoint: Checkpoint, t5: dict) -> None:
        """Every packed byte must hold ternary codes. Only the bytes that will run are read: with T5, the checkpoint's
        2-bit tensors stay untouched on disk (reading them would also cost their size in resident memory)."""
        for name in checkpoint.packed_names():
            if t5:
                bad = native.find_invalid_t5(t5[name])
                if bad >= 0:
                    path = checkpoint.folder / derived.DERIVED_DIR / "ternary-t5.safetensors"
                    raise CheckpointError(f"{path}: tensor {name} byte {bad} is not a T5 value — delete {path.parent} "
                                          "and load again to derive it anew")
                continue
            checkpoint.check_ternary_codes(name)

    # ---- properties -----------------------------------------------------------------------------------------------
    @property
    def kernel(self) -> str:
        return native.active_kernel()

    @property
    def threads(self) -> int:
        return self._lib.trit_model_threads(self._handle)

    @threads.setter
    def threads(self, n: int) -> None:
        native.check(self._lib.trit_model_set_threads(self._handle, native.c_threads(n)))

    @property
    def n_ctx_max(self) -> int:
        return self.config.max_position_embeddings

    def bytes_per_token(self, position: int = 0) -> int:
        """Bytes one decoding step reads at a given position: every projection weight, the output head (plus the
        exact rows a compact head rescores), one embedding row, the norms, and the KV cache so far."""
        c = self.config
        h, i, kv = c.hidden_size, c.intermediate_size, c.num_key_value_heads * c.head_dim
        per_layer = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]
        if self.ternary == "t5":
            ternary = sum((rows + 4) // 5 * cols for rows, cols in per_layer)
        else:
            ternary = sum(rows // 4 * cols for rows, cols in per_layer)
        head = {"bf16": c.vocab_size * h * 2,
                "q8": c.vocab_size * (h + 4),
                "q4": c.vocab_size * (h // 2 + h // 32 * 2)}[self.head]
        if self.head != "bf16":
            head += self.threads * 32 * h * 2
        norms = (c.num_hidden_layers * ((3 * h + i) if c.has_sub_norms else 2 * h) + h) * 4
        kv_cache = c.kv_bytes_per_token() * (position + 1)
        kv_cache = {"f16": kv_cache, "f32": 2 * kv_cache, "q8": kv_cache // 2 + kv_cache // c.head_dim * 2}[self.kv]
        return c.num_hidden_layers * ternary + head + h * 2 + norms + kv_cache

    def read_bandwidth(self, nbytes: int = 512 << 20, repetitions: int = 3) -> float:
        """This machine's read bandwidth in GB/s with the model's threads (the bus limit for decoding)."""
        gbs = self._lib.trit_measure_read_bandwidth(self._handle, nbytes, native.c_int(repetitions, "repetitions"))
        if gbs <= 0:
            raise NativeError(native.last_error())
        return gbs

    # ---- evaluation -----------------------------------------------------------------------------------------------
    def context(self, n_ctx: int | None = None, max_batch: int = DEFAULT_BATCH) -> "Context":
        return Context(self, n_ctx or self.n_ctx_max, max_batch)

    def logits(self, token_ids) -> np.ndarray:
        """float32 logits [n_tokens, vocab] of a fresh context: position i sees tokens 0..i."""
        ids = as_token_array(token_ids, self.config.vocab_size)
        if len(ids) > self.n_ctx_max:
            raise InputError(f"{len(ids)} tokens do not fit the model's context of {self.n_ctx_max}")
        with self.context(max(len(ids), 1)) as ctx:
            return ctx.eval(ids, logits="all")

    # ---- conversation ---------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The folder's tokenizer and chat template, read when first needed."""
        if self._tokenizer is None:
            from trit.engine.runtime.tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_folder(self.path)
        return self._tokenizer

    def default_params(self, **overrides):
        """Sampling settings from the folder's generation_config.json, with overrides."""
        from trit.engine.runtime.sampling import SamplingParams

        return SamplingParams.from_generation_config(self.path, **overrides)

    def chat(self, messages, params=None, cancel=None, keep_all=False, saved=None):
        """Continue a conversation: yields engine.runtime.chat.Piece (text as it comes) and, last, a ChatResult.

        messages: [{"role": "system" | "user" | "assistant", "content": str}, ...]. params: SamplingParams
        (default: the folder's generation_config.json). cancel: anything with is_set(), e.g. threading.Event.
        The KV caches of recent conversations are kept, so a follow-up prefills only its new tokens. keep_all: never
        leave the oldest turns out to make room (errors.ContextLengthError instead). saved: a file that keeps this
        conversation's cache between processes (loaded when it helps, extended after the turn)."""
        from trit.engine.runtime.chat import ChatSessions

        if self._sessions is None:
            self._sessions = ChatSessions(self, self.tokenizer)
        return self._sessions.stream(messages, params or self.default_params(), cancel, keep_all, saved=saved)

    def close(self) -> None:
        if self._sessions is not None:
            self._sessions.close()  # contexts before the model they belong to
            self._sessions = None
        super().close()

    def release_embedding_pages(self) -> None:
        """With a compact head the embedding is read a row at a time; drop the pages mapped in around those rows."""
        if self._embedding_by_rows:
            self.checkpoint.file.release("model.embed_tokens.weight")

    def _free(self, handle) -> None:
        self._lib.trit_model_free(handle)


class Context(NativeObject):
    """A KV cache: tokens evaluated so far (`tokens`), extended by `eval`, cut back by `truncate`."""

    def __init__(self, model: Model, n_ctx: int, max_batch: int = DEFAULT_BATCH):
        if not 0 < n_ctx <= model.n_ctx_max:
            raise InputError(f"a context of {n_ctx} positions is outside 1..{model.n_ctx_max}")
        self.model = model
        self.max_batch = max(1, min(max_batch, n_ctx))
        self._lib = model._lib
        self._handle = self._lib.trit_context_create_kv(model._handle, native.c_int(n_ctx, "n_ctx"),
                                                        native.c_int(self.max_batch, "max_batch"),
                                                        native.KV_TYPES[model.kv])
        if not self._handle:
            raise NativeError(native.last_error())
        self.tokens: list[int] = []

    @property
    def n_ctx(self) -> int:
        return self._lib.trit_context_n_ctx(self._handle)

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def eval(self, token_ids, logits: str | None = "last") -> np.ndarray | None:
        """Run tokens at positions n_past.. and keep them in the cache.

        logits: "last" -> float32 [vocab] for the last token, "all" -> [n, vocab], None -> nothing."""
        ids = as_token_array(token_ids, self.model.config.vocab_size)
        if len(ids) > self.n_ctx - self.n_past:
            raise InputError(
                f"{len(ids)} more tokens do not fit: {self.n_past} of {self.n_ctx} context positions are used")
        vocab = self.model.config.vocab_size
        if logits == "all":
            out, mode = np.empty((len(ids), vocab), np.float32), native.LOGITS_ALL
        elif logits == "last":
            if len(ids) == 0:
                raise InputError("no tokens to evaluate")
            out, mode = np.empty(vocab, np.float32), native.LOGITS_LAST
        elif logits is None:
            out, mode = None, native.LOGITS_NONE
        else:
            raise ValueError(f"logits must be 'last', 'all' or None, not {logits!r}")
        # One native call per chunk: between chunks the embedding pages are released (and a caller can stop).
        for start in range(0, len(ids), self.max_batch):
            chunk = ids[start:start + self.max_batch]
            last = start + len(chunk) == len(ids)
            if mode == native.LOGITS_ALL:
                chunk_out, chunk_mode = native.ptr(out[start:]), mode
            elif mode == native.LOGITS_LAST and last:
                chunk_out, chunk_mode = native.ptr(out), mode
            else:
                chunk_out, chunk_mode = None, native.LOGITS_NONE
            native.check(self._lib.trit_eval(self._handle, native.ptr(chunk), len(chunk), chunk_out, chunk_mode))
            self.tokens.extend(chunk.tolist())
            self.model.release_embedding_pages()
        return out

    def truncate(self, n_past: int) -> None:
        """Keep the first n_past positions of the cache."""
        native.check(self._lib.trit_context_truncate(self._handle, native.c_int(n_past, "n_past")))
        del self.tokens[n_past:]

    @property
    def kv_row_bytes(self) -> int:
        """Bytes of one position's keys and values as read_kv gives them (trit.h: trit_context_read_kv)."""
        return self._lib.trit_context_kv_row_bytes(self._handle)

    def read_kv(self, first: int, n: int) -> np.ndarray:
        """The cache of positions [first, first + n) as uint16 [n, kv_row_bytes / 2]: fp16 bits for an f16 cache, the
        bytes of the row (trit.h) for the others."""
        rows = np.empty((max(n, 0), self.kv_row_bytes // 2), np.uint16)
        native.check(self._lib.trit_context_read_kv(self._handle, native.c_int(first, "first"),
                                                    native.c_int(n, "n"), native.ptr(rows)))
        return rows

    def write_kv(self, first: int, token_ids, rows: np.ndarray) -> None:
        """Put back the cache of positions [first, first + len(token_ids)) as read_kv gave it, with the tokens it
        holds; every later position is forgotten. first must not pass n_past."""
        ids = as_token_array(token_ids, self.model.config.vocab_size)
        rows = np.ascontiguousarray(rows, np.uint16)
        if rows.size != len(ids) * (self.kv_row_bytes // 2):
            raise InputError(f"{rows.size} cache values are not the rows of {len(ids)} positions")
        native.check(self._lib.trit_context_write_kv(self._handle, native.c_int(first, "first"), len(ids),
                                                     native.ptr(rows) if rows.size else None))
        self.tokens[first:] = ids.tolist()

    def _free(self, handle) -> None:
        self._lib.trit_context_free(handle)
