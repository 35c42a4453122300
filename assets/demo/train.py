#!/usr/bin/env python3
"""Train the demo model that ships inside Trit: a tiny BitNet b1.58 model, natively ternary, from public-domain text.

    pip install ".[test]" && nice -n 10 python assets/demo/train.py [--steps N] [--out assets/demo] [--deb PATH]

Text: Jane Austen's six novels (public domain: Austen died in 1817; the texts come from Project Gutenberg) as Debian
packages them in `r-cran-janeaustenr` (1.0.0-1; the R package around them is MIT). The script fetches the .deb
itself with `apt-get download r-cran-janeaustenr` into a temporary folder, unpacks it with `dpkg-deb -x` and reads
the novels from the package's R lazy-load database (data/Rdata.rdb + .rdx: zlib-compressed R serialisations of one
character vector per novel) with the small reader below; R itself is not needed. `--deb PATH` uses a .deb already on
disk instead. One chapter from the middle of each novel is held out (never trained on, not in the tokenizer's
training text either) and written to heldout.txt.

Model: the exact graph of transformers' BitNetForCausalLM (RMSNorm, RoPE, grouped-query attention with
attn_sub_norm, relu² FFN with ffn_sub_norm, tied embeddings), trained with quantisation-aware training that computes
what inference computes: every projection's weight is absmean-quantised to {-1, 0, +1} times one scale (kept in
bf16, as it is stored), every projection's input is quantised per token to int8 by absmax with round-half-even, and
gradients pass straight through both. Embeddings and norms are rounded to bf16 before the final measurement, so the
exported checkpoint holds exactly the numbers the training framework measured.

Output (in --out): model/ (config.json, model.safetensors packed as Hugging Face's BitNet checkpoints, tokenizer.json,
tokenizer_config.json with the BitNet chat template, generation_config.json, trit-demo.json) and heldout.txt.
trit-demo.json records the source, the run and the held-out perplexity measured by this script's torch model, by
transformers' BitNetForCausalLM on the exported folder and by Trit's engine.

Deterministic for a given machine and torch build: fixed seeds, fixed data order, two threads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # the checkout; the code it uses is the installed trit package

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trit.engine.formats.checkpoint import CONFIG_FILE, LAYER_NORMS, PROJECTIONS, WEIGHTS_FILE  # noqa: E402
from trit.engine.formats.packing import pack_ternary  # noqa: E402
from trit.engine.formats.safetensors_file import write_safetensors  # noqa: E402
from trit.engine.tools import synthetic  # noqa: E402

DEB_PACKAGE = "r-cran-janeaustenr"
DEB_VERSION = "1.0.0-1"
NOVELS = {  # the package's object name -> title, in the package's order
    "emma": "Emma", "mansfieldpark": "Mansfield Park", "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion", "prideprejudice": "Pride and Prejudice", "sensesensibility": "Sense and Sensibility",
}

SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=5, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=4096, max_position_embeddings=4096)
SEQ = 512          # positions per training sequence, BOS included; also the evaluation window
DISPLAY_NAME = "Trit demo (tiny BitNet, not the real 2B4T)"


# ---------------------------------------------------------------------------------------------------------------
# the text


class RReader:
    """R's XDR serialisation (format 2 or 3), only the types a lazy-load index and character vectors use."""

    NIL, SYM, LIST, CHAR, LGL, INT, STR, VEC, REF = 254, 1, 2, 9, 10, 13, 16, 19, 255

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError("not an R XDR serialisation")
        self.b, self.i, self.refs = data, 2, []
        version = self.int()
        self.int(), self.int()  # the writer's R version, the oldest R that reads it
        if version == 3:
            n = self.int()
            self.i += n  # the native encoding's name

    def int(self) -> int:
        v = struct.unpack_from(">i", self.b, self.i)[0]
        self.i += 4
        return v

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == self.NIL:
            return None
        if kind == self.REF:
            return self.refs[(flags >> 8) - 1]
        if kind == self.SYM:
            sym = self.item()
            self.refs.append(sym)
            return sym
        if kind == self.CHAR:
            n = self.int()
            if n == -1:
                return None  # NA
            s = self.b[self.i:self.i + n]
            self.i += n
            return s.decode("latin-1" if flags & (1 << 14) else "utf-8")
        if kind == self.LIST:  # a pairlist: [attributes] [tag] value, then the rest
            out = {}
            while kind == self.LIST:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                out[tag] = self.item()
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
            if kind != self.NIL:
                raise ValueError(f"a pairlist ends in R type {kind}")
            return out
        if kind in (self.LGL, self.INT, self.STR, self.VEC):
            n = self.int()
            if kind in (self.LGL, self.INT):
                v = list(struct.unpack_from(f">{n}i", self.b, self.i))
                self.i += 4 * n
            else:
                v = [self.item() for _ in range(n)]
            if has_attr:
                names = (self.item() or {}).get("names")
                if names:
                    v = dict(zip(names, v))
            return v
        raise ValueError(f"R type {kind} is not handled")


def read_lazyload(data_dir: Path) -> dict:
    """name -> object of an R package's data/Rdata.rdb, through its index data/Rdata.rdx."""
    index = RReader(zlib.decompress((data_dir / "Rdata.rdx").read_bytes(), 31)).item()
    rdb = (data_dir / "Rdata.rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        blob = rdb[offset:offset + length]
        raw = zlib.decompress(blob[4:])  # each entry: uncompressed length (4 bytes, big-endian), then zlib
        if len(raw) != struct.unpack(">I", blob[:4])[0]:
            raise ValueError(f"{name}: length mismatch in Rdata.rdb")
        out[name] = RReader(raw).item()
    return out


def fetch_novels(deb: str | None) -> tuple[dict[str, list[str]], dict]:
    """The six novels as lists of lines, and a record of where they came from."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if deb is None:
            # apt-get download needs no root and installs nothing; the exact version when the archive still has it.
            for spec in (f"{DEB_PACKAGE}={DEB_VERSION}", DEB_PACKAGE):
                if subprocess.run(["apt-get", "download", spec], cwd=tmp, capture_output=True).returncode == 0:
                    break
            else:
                raise SystemExit(f"apt-get download {DEB_PACKAGE} failed (run apt-get update, or pass --deb PATH)")
            deb_path = next(tmp.glob(f"{DEB_PACKAGE}_*.deb"))
        else:
            deb_path = Path(deb)
        version = subprocess.run(["dpkg-deb", "-f", str(deb_path), "Version"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        sha = hashlib.sha256(deb_path.read_bytes()).hexdigest()
        subprocess.run(["dpkg-deb", "-x", str(deb_path), str(tmp / "x")], check=True)
        objects = read_lazyload(tmp / "x/usr/lib/R/site-library/janeaustenr/data")
    novels = {k: objects[k] for k in NOVELS}
    text_sha = hashlib.sha256("\n".join("\n".join(x or "" for x in v) for v in novels.values()).encode()).hexdigest()
    source = {"package": f"{DEB_PACKAGE} (Debian)", "version": version, "deb_sha256": sha, "text_sha256": text_sha,
              "work": "Jane Austen, the six completed novels: " + ", ".join(NOVELS.values()),
              "licence": "public domain (the novels, 1811-1818; texts from Project Gutenberg); "
                         "the R package around them: MIT",
              "how": f"apt-get download {DEB_PACKAGE}; dpkg-deb -x; data/Rdata.rdb read by assets/demo/train.py"}
    return novels, source


_CHAPTER = re.compile(r"^\s*(CHAPTER|Chapter)\s+([IVXLC]+|\d+)\.?\s*$")


def chapters(lines: list[str]) -> list[list[str]]:
    """A novel's chapters, each a list of paragraphs (lines unwrapped, emphasis underscores and double spaces gone).
    Front matter, volume and chapter headings and the closing 'FINIS'/'THE END' are left out."""
    out: list[list[str]] = []
    para: list[str] = []

    def end_paragraph():
        if para and out:
            text = re.sub(r"\s+", " ", " ".join(para)).strip().replace("_", "")
            if text and not re.fullmatch(r"(VOLUME|Volume) [IVX]+\.?|FINIS|THE END|End of [^.]*", text):
                out[-1].append(text)
        para.clear()

    for line in lines:
        line = (line or "").rstrip()
        if _CHAPTER.match(line):
            end_paragraph()
            out.append([])
        elif not line.strip():
            end_paragraph()
        else:
            para.append(line.strip())
    end_paragraph()
    return [c for c in out if c]


def split_text(novels: dict[str, list[str]]) -> tuple[dict[str, list[list[str]]], list[list[str]]]:
    """Training chapters per novel, and the held-out chapters (the middle chapter of each novel)."""
    train, heldout = {}, []
    for name, lines in novels.items():
        ch = chapters(lines)
        mid = len(ch) // 2
        heldout.append(ch[mid])
        train[name] = ch[:mid] + ch[mid + 1:]
    return train, heldout


def join_paragraphs(paragraphs: list[str]) -> str:
    return "\n\n".join(paragraphs)


# ---------------------------------------------------------------------------------------------------------------
# chat examples made from the training text

_SENTENCE_END = re.compile(r'[.!?]["\']?(\s+)(?=["\'A-Z])')
_ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.")
_QUOTE = re.compile(r'"([^"]+)"')

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are Trit, a private assistant that runs offline on this computer.",
    "You are a friendly assistant. Answer briefly.",
    "You are a helpful, honest assistant running locally.",
]
IDENTITY = [
    (["Who are you?", "What are you?", "Who am I talking to?", "What is your name?", "Introduce yourself."],
     "I am Trit's demo model: a very small BitNet b1.58 model trained only on the novels of Jane Austen. "
     "I can write a little prose in her manner, but I know almost nothing else, and what I say is often wrong."),
    (["Hello", "Hello!", "Hi", "Hi there!", "Good morning.", "Good evening!"],
     "Good day to you! I am only Trit's little demo model, but I shall do my best."),
    (["What can you do?", "Can you help me?", "Are you a real model?", "Are you any good?"],
     "I am the demo that comes with Trit, trained on Jane Austen alone. I can continue a passage or talk a little "
     "about her characters. For real answers, download a full model such as BitNet b1.58 2B4T."),
    (["Thank you.", "Thanks!", "Thank you very much."],
     "You are very welcome."),
]
TOPICS = ["love", "marriage", "money", "a letter", "the ball", "dancing", "music", "the weather", "a walk",
          "the garden", "the house", "a sister", "a brother", "a father", "a mother", "a friend", "happiness",
          "fortune", "the family", "dinner", "tea", "a book", "a horse", "the carriage", "the rain", "London", "Bath",
          "the church", "the heart", "the morning", "the evening", "a journey", "the sea", "the navy", "pride",
          "vanity", "the weather", "a visit", "a secret", "the country", "the neighbourhood", "a party"]
CONTINUE = ["Continue the story: {}", "Continue this passage: {}", "What happens next? {}", "Go on from here: {}",
            "Please continue: {}"]
ABOUT = ["Tell me about {}.", "Who is {}?", "What do you know about {}?", "Say something about {}.",
         "Write a sentence about {}."]
TOPIC = ["Tell me about {}.", "Write a sentence about {}.", "Say something about {}.", "What do you think of {}?"]


def sentences(paragraph: str) -> list[str]:
    out, start = [], 0
    for m in _SENTENCE_END.finditer(paragraph):
        if paragraph[:m.start(1)].endswith(_ABBREVIATIONS):
            continue
        out.append(paragraph[start:m.start(1)])
        start = m.end(1)
    out.append(paragraph[start:])
    return [s.strip() for s in out if s.strip()]


def speech(paragraph: str) -> str | None:
    """The spoken words of a paragraph of dialogue, the narration between quotes left out."""
    if paragraph.count('"') % 2 or not paragraph.startswith('"'):
        return None
    parts = [p.strip() for p in _QUOTE.findall(paragraph)]
    text = " ".join(p for p in parts if p)
    text = re.sub(r",$", ".", text)
    return text if 2 <= len(text.split()) and len(text) <= 320 else None


def character_names(paragraphs: list[str], min_count: int = 60) -> list[str]:
    """Names that appear often in the middle of sentences: 'Emma', 'Mr. Darcy', 'Lady Russell' ..."""
    counts = Counter()
    for p in paragraphs:
        for m in re.finditer(r"(?<=[a-z,;] )((?:Mr\.|Mrs\.|Miss|Lady|Sir|Captain|Colonel|Admiral|Dr\.) )?"
                             r"([A-Z][a-z]{2,})\b", p):
            counts[(m.group(1) or "") + m.group(2)] += 1
    common = {"The", "She", "He", "They", "But", "And", "It", "His", "Her", "You", "This", "That", "There", "What",
              "When", "Yes", "Oh", "Well", "My", "Not", "God", "Heaven", "Sunday", "Monday", "Tuesday", "Wednesday",
              "Thursday", "Friday", "Saturday", "English", "Christmas", "April", "June", "July", "September",
              "Mr", "Mrs", "Dr"}
    return sorted(n for n, c in counts.items() if c >= min_count and n not in common)


class ChatMaker:
    """Conversations in the shape the chat template renders, built from the training paragraphs."""

    def __init__(self, train: dict[str, list[list[str]]], rng: random.Random):
        self.rng = rng
        self.paragraphs = [p for ch in train.values() for c in ch for p in c]
        self.chapters = [c for ch in train.values() for c in ch]
        self.dialogue = []
        for c in self.chapters:
            for a, b in zip(c, c[1:]):
                sa, sb = speech(a), speech(b)
                if sa and sb:
                    self.dialogue.append((sa, sb))
        self.names = character_names(self.paragraphs)
        by_word: dict[str, list[str]] = {}
        wanted = {n: n for n in self.names} | {t: t.split()[-1] for t in TOPICS}
        for p in self.paragraphs:
            for s in sentences(p):
                if not 40 <= len(s) <= 300:
                    continue
                for key, word in wanted.items():
                    if re.search(rf"\b{re.escape(word)}\b", s):
                        by_word.setdefault(key, []).append(s)
        self.by_word = {k: v for k, v in by_word.items() if len(v) >= 5}

    def turn(self) -> tuple[str, str]:
        r, rng = self.rng.random(), self.rng
        if r < 0.40 and self.dialogue:
            return rng.choice(self.dialogue)
        if r < 0.65:
            while True:
                ss = sentences(rng.choice(self.paragraphs))
                if len(ss) >= 2:
                    k = rng.randint(1, min(2, len(ss) - 1))
                    prompt, reply = " ".join(ss[:k]), " ".join(ss[k:k + rng.randint(1, 3)])
                    if len(prompt) <= 400 and len(reply) <= 500:
                        return rng.choice(CONTINUE).format(prompt), reply
        if r < 0.90:
            key = rng.choice(sorted(self.by_word))
            forms = TOPIC if key in TOPICS else ABOUT
            return rng.choice(forms).format(key), rng.choice(self.by_word[key])
        questions, answer = rng.choice(IDENTITY)
        return rng.choice(questions), answer

    def conversation(self) -> list[dict]:
        msgs = []
        if self.rng.random() < 0.5:
            msgs.append({"role": "system", "content": self.rng.choice(SYSTEM_PROMPTS)})
        for _ in range(self.rng.choice([1, 1, 1, 2, 3])):
            user, reply = self.turn()
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return msgs


def render_chat(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The chat template's text, as engine.runtime.tokenizer and transformers render it."""
    from jinja2 import Environment
    return Environment().from_string(synthetic.CHAT_TEMPLATE).render(
        messages=messages, bos_token=synthetic.BOS, add_generation_prompt=add_generation_prompt)


def encode_chat(messages: list[dict], encode) -> list[int]:
    """Token ids of a finished conversation as generation meets them. A prompt ends in "Assistant: ", whose space
    the pre-tokenizer makes a token of its own, and the reply is generated after it; tokenizing the whole text at
    once would instead join that space to the reply's first word, a sequence generation never produces."""
    ids, text = [], ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt = render_chat(messages[:i], add_generation_prompt=True)
            reply = m["content"].strip() + synthetic.EOT
            ids += encode(prompt[len(text):]) + encode(reply)
            text = prompt + reply
    full = render_chat(messages)
    assert full.startswith(text) and full == text, "the template is not a concatenation of turns"
    return ids


# ---------------------------------------------------------------------------------------------------------------
# the tokenizer: Llama 3 layout (ids 0..255 = bytes, then merges, then 256 special tokens), merges learnt here


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    regular = vocab_size - synthetic.NUM_SPECIAL
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = synthetic._pre_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=regular + 64, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    learner.train_from_iterator(texts, trainer)
    chars = synthetic._byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    merges = []
    for m in json.loads(learner.to_str())["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in vocab and b in vocab and a + b not in vocab:  # each merge adds exactly one id
            vocab[a + b] = len(vocab)
            merges.append((a, b))
        if len(vocab) == regular:
            break
    if len(vocab) != regular:
        raise RuntimeError(f"only {len(vocab)} of {regular} regular tokens learnt")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = synthetic._pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    bos = synthetic.BOS
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, synthetic.special_token_ids(vocab_size)["bos"])]),
    ])
    specials = synthetic.special_tokens(vocab_size)
    tok.add_special_tokens([AddedToken(specials[i], special=True, normalized=False) for i in sorted(specials)])
    for i, content in specials.items():
        if tok.token_to_id(content) != i:
            raise AssertionError(f"special token {content} got id {tok.token_to_id(content)}, expected {i}")
    return tok


# ---------------------------------------------------------------------------------------------------------------
# the model: BitNetForCausalLM's graph with quantisation-aware BitLinear


def bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """absmean: T in {-1, 0, 1} and the per-tensor scale as stored (bf16), W ~= T * scale."""
    scale = w.detach().abs().mean().clamp(min=1e-5)
    t = (w.detach() / scale).round().clamp(-1, 1)
    return t, bf16(scale)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: s = 127 / max|x|, xq = round_half_even(x * s) clamped to int8 (held as float, integer-valued).
    The gradient passes straight through: d xq / d x = s."""
    s = 127.0 / x.detach().abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    xs = x * s
    return xs + (xs.detach().round().clamp(-128, 127) - xs.detach()), s


class BitLinear(nn.Module):
    """y = (xq · T) / s * weight_scale: the projection of an 'autobitlinear' checkpoint, T = ternarize(weight), with
    straight-through gradients to the float master weight. Both matmul operands are integers (|xq| <= 128, T in
    {-1, 0, 1}), so a bf16 matmul while training sees them exactly; only its output is rounded. Evaluation
    multiplies in float32."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, xq: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        t, scale = ternarize(self.weight)
        ws = self.weight / self.weight.detach().abs().mean().clamp(min=1e-5)
        t = ws + (t - ws.detach())  # forward: T; backward: d T / d weight = 1 / mean|weight|
        if self.training:
            y = F.linear(xq.to(torch.bfloat16), t.to(torch.bfloat16)).float()
        else:
            y = F.linear(xq, t)
        return y * (scale / s)


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_tables(n: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = torch.arange(n, dtype=torch.float)[:, None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Layer(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        h, i, eps = c["hidden_size"], c["intermediate_size"], c["rms_norm_eps"]
        self.heads, self.kv = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = h // self.heads
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(h, eps), RMSNorm(h, eps)
        self.attn_sub_norm, self.ffn_sub_norm = RMSNorm(h, eps), RMSNorm(i, eps)
        self.q_proj, self.o_proj = BitLinear(h, h), BitLinear(h, h)
        self.k_proj, self.v_proj = BitLinear(h, self.kv * self.hd), BitLinear(h, self.kv * self.hd)
        self.gate_proj, self.up_proj, self.down_proj = BitLinear(h, i), BitLinear(h, i), BitLinear(i, h)

    def forward(self, x, cos, sin):
        b, n, _ = x.shape
        a = quantize_activations(self.input_layernorm(x))  # q, k and v quantise the same input the same way
        q = self.q_proj(*a).view(b, n, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(*a).view(b, n, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(*a).view(b, n, self.kv, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # head h reads kv h // groups
        x = x + self.o_proj(*quantize_activations(self.attn_sub_norm(o.transpose(1, 2).reshape(b, n, -1))))
        m = quantize_activations(self.post_attention_layernorm(x))
        g = F.relu(self.gate_proj(*m)) ** 2 * self.up_proj(*m)
        return x + self.down_proj(*quantize_activations(self.ffn_sub_norm(g)))


class DemoModel(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        cos, sin = rope_tables(SEQ, c["hidden_size"] // c["num_attention_heads"], c["rope_theta"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        for name, p in self.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, self.cos[:n], self.sin[:n])
        h = self.norm(x)
        if self.training:  # bf16 operands while training only; evaluation computes the head in float32
            return F.linear(h.to(torch.bfloat16), self.embed_tokens.weight.to(torch.bfloat16)).float()
        return F.linear(h, self.embed_tokens.weight)  # tied head

    def round_to_stored(self) -> None:
        """Embeddings and norms to the bf16 values the checkpoint stores (the ternary weights are already exact)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if not any(name.endswith(f"{s}.weight") for s in ("q_proj", "k_proj", "v_proj", "o_proj",
                                                                    "gate_proj", "up_proj", "down_proj")):
                    p.copy_(bf16(p))


# ---------------------------------------------------------------------------------------------------------------
# data


def eval_windows(ids: list[int], bos: int, seq: int = SEQ) -> list[list[int]]:
    """The held-out protocol: the text's tokens in consecutive windows of seq - 1, each led by BOS; every text
    token is predicted once. The tests repeat exactly this."""
    step = seq - 1
    return [[bos] + ids[i:i + step] for i in range(0, len(ids), step)]


def perplexity_from_logits(windows: list[list[int]], logits_of) -> float:
    """exp(mean negative log-likelihood) of every token after the first of each window; logits_of(window) gives
    float logits [len(window), vocab]."""
    nll, count = 0.0, 0
    for w in windows:
        z = torch.as_tensor(np.asarray(logits_of(w)), dtype=torch.float64)
        lp = torch.log_softmax(z[:-1], dim=-1)
        target = torch.as_tensor(w[1:])
        nll -= float(lp.gather(1, target[:, None]).sum())
        count += len(w) - 1
    return math.exp(nll / count)


class Batches:
    """Training sequences of SEQ + 1 tokens: mostly plain text ([BOS] + a window of a novel that starts at a
    paragraph or anywhere), the rest packed chat conversations (each one led by BOS, as the template writes it)."""

    def __init__(self, streams: list[np.ndarray], para_starts: list[np.ndarray], chats: list[list[int]],
                 chat_share: float, seed: int, bos: int):
        self.streams, self.starts, self.chats = streams, para_starts, chats
        self.chat_share, self.bos = chat_share, bos
        self.rng = np.random.default_rng(seed)
        self.weights = np.array([len(s) for s in streams], float)
        self.weights /= self.weights.sum()
        self.chat_pos = 0
        self.chat_order = self.rng.permutation(len(chats))

    def _text(self) -> np.ndarray:
        s = self.rng.choice(len(self.streams), p=self.weights)
        stream = self.streams[s]
        if self.rng.random() < 0.5:
            start = int(self.rng.choice(self.starts[s][self.starts[s] < len(stream) - SEQ]))
        else:
            start = int(self.rng.integers(0, len(stream) - SEQ))
        return np.concatenate([[self.bos], stream[start:start + SEQ]])

    def _chat(self) -> np.ndarray:
        out: list[int] = []
        while len(out) < SEQ + 1:
            if self.chat_pos == len(self.chats):
                self.chat_pos, self.chat_order = 0, self.rng.permutation(len(self.chats))
            out += self.chats[self.chat_order[self.chat_pos]]
            self.chat_pos += 1
        return np.asarray(out[:SEQ + 1])

    def next(self, batch: int) -> torch.Tensor:
        rows = [self._chat() if self.rng.random() < self.chat_share else self._text() for _ in range(batch)]
        return torch.as_tensor(np.stack(rows).astype(np.int64))


# ---------------------------------------------------------------------------------------------------------------
# export


def export(model: DemoModel, tokenizer, config: dict, folder: Path, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    c = model.c

    def bits(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).copy()

    def tensors():
        yield "model.embed_tokens.weight", "BF16", bits(model.embed_tokens.weight)
        for i, layer in enumerate(model.layers):
            p = f"model.layers.{i}."
            for name in LAYER_NORMS:
                yield p + name + ".weight", "BF16", bits(getattr(layer, name.split(".")[-1]).weight)
            for name in PROJECTIONS:
                t, scale = ternarize(getattr(layer, name.split(".")[-1]).weight)
                yield p + name + ".weight", "U8", pack_ternary(t.to(torch.int8).numpy())
                yield p + name + ".weight_scale", "BF16", bits(scale.reshape(1))
        yield "model.norm.weight", "BF16", bits(model.norm.weight)

    tokenizer.save(str(folder / synthetic.TOKENIZER_FILE))
    synthetic._write_json(folder / synthetic.TOKENIZER_CONFIG_FILE,
                          synthetic.tokenizer_config(c["vocab_size"], c["max_position_embeddings"]))
    gen = synthetic.generation_config(c["vocab_size"])
    gen.update({"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 200})
    synthetic._write_json(folder / synthetic.GENERATION_CONFIG_FILE, gen)
    write_safetensors(folder / WEIGHTS_FILE, tensors(),
                      metadata={"format": "pt", "generator": "trit assets/demo/train.py", "demo": "true"})
    synthetic._write_json(folder / CONFIG_FILE, config)
    synthetic._write_json(folder / "trit-demo.json", meta)


def measure_transformers(folder: Path, windows: list[list[int]]) -> float:
    sys.path.insert(0, str(ROOT / "tests"))
    from hf_reference import hf_logits, load_hf_model  # the tests' way of loading the reference
    hf = load_hf_model(folder)
    return perplexity_from_logits(windows, lambda w: hf_logits(hf, w))


def measure_engine(folder: Path, windows: list[list[int]], head: str) -> float | None:
    try:
        from trit import engine
        m = engine.load(folder, head=head)
    except Exception as e:  # the native library may not be built where this runs
        print(f"engine not measured ({head}): {e}")
        return None
    return perplexity_from_logits(windows, m.logits)


SAMPLE_PROMPTS = ["Who are you?", "Who is Mr. Darcy?", "Tell me about the weather.",
                  "Continue the story: It was a fine morning at Longbourn.",
                  "What do you think of marriage?"]


def greedy_samples(folder: Path, max_tokens: int = 120) -> dict[str, str] | None:
    """Greedy replies of the exported model through Trit's engine (default head), for the record."""
    try:
        from trit import engine
        from trit.engine.runtime.tokenizer import Tokenizer
        model, tok = engine.load(folder), Tokenizer.from_folder(folder)
    except Exception as e:
        print(f"no samples: {e}")
        return None
    out = {}
    for prompt in SAMPLE_PROMPTS:
        reply = []
        with model.context(1024) as ctx:
            logits = ctx.eval(tok.encode_chat([{"role": "user", "content": prompt}]))
            while len(reply) < max_tokens:
                nxt = int(np.argmax(logits))
                if nxt in tok.stop_ids:
                    break
                reply.append(nxt)
                logits = ctx.eval([nxt])
        out[prompt] = tok.decode(reply) + ("" if len(reply) < max_tokens else " [...]")
        print(f"{prompt!r} -> {out[prompt]!r}")
    return out


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--deb", help=f"a {DEB_PACKAGE} .deb already on disk")
    ap.add_argument("--steps", type=int, default=360)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--chat-share", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1817)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="train eagerly (slower; the same arithmetic)")
    args = ap.parse_args(argv)

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    out = Path(args.out)

    novels, source = fetch_novels(args.deb)
    train, heldout_chapters = split_text(novels)
    heldout_text = "\n\n".join(join_paragraphs(c) for c in heldout_chapters) + "\n"
    chat = ChatMaker(train, rng)
    conversations = [chat.conversation() for _ in range(20000)]
    train_texts = [join_paragraphs(c) for ch in train.values() for c in ch]
    print(f"text: {sum(map(len, train_texts))} characters to train on, {len(heldout_text)} held out; "
          f"{len(chat.dialogue)} dialogue pairs, {len(chat.names)} names, {len(chat.by_word)} subjects")

    tok_corpus = [p for t in train_texts for p in t.split("\n\n")] + [
        render_chat(c).replace(synthetic.BOS, "").replace(synthetic.EOT, "\n") for c in conversations[:2000]]
    tokenizer = train_tokenizer(tok_corpus, SHAPE["vocab_size"])
    ids = synthetic.special_token_ids(SHAPE["vocab_size"])
    bos, eos = ids["bos"], ids["end_of_text"]

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    streams, starts = [], []
    for name, chs in train.items():
        toks, para_starts = [], []
        for c in chs:
            for p in c:
                para_starts.append(len(toks))
                toks += encode(p + "\n\n")
        streams.append(np.asarray(toks + [eos], np.int64))
        starts.append(np.asarray(para_starts))
    chats = [encode_chat(c, encode) for c in conversations]
    heldout_ids = encode(heldout_text)
    windows = eval_windows(heldout_ids, bos)
    n_train = sum(len(s) for s in streams)
    print(f"tokens: {n_train} training, {sum(map(len, chats))} in {len(chats)} chats, {len(heldout_ids)} held out "
          f"in {len(windows)} windows")

    config = synthetic.make_config("tiny", **SHAPE)
    model = DemoModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = max(1, args.steps // 30)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        x = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * x)))

    # torch.compile fuses the quantisers' elementwise work (2-3x faster here); evaluation runs `model` eagerly.
    step_model = model if args.no_compile else torch.compile(model)
    data = Batches(streams, starts, chats, args.chat_share, args.seed, bos)
    val_windows = windows[:: max(1, len(windows) // 8)]

    def framework_ppl(ws):
        model.eval()
        with torch.no_grad():
            r = perplexity_from_logits(ws, lambda w: model(torch.as_tensor([w]))[0])
        model.train()
        return r

    ppl_init = framework_ppl(windows)
    print(f"model: {n_params} parameters; held-out perplexity before training {ppl_init:.1f}")
    t_train = time.time()
    log = []
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        if step == args.steps // 2:  # BitNet b1.58's second stage: no weight decay
            opt.param_groups[0]["weight_decay"] = 0.0
        batch = data.next(args.batch)
        logits = step_model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            print(f"step {step:5d}  loss {loss.item():.3f}  lr {lr_at(step):.2e}  {el:6.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            ppl = framework_ppl(val_windows)
            log.append({"step": step + 1, "heldout_ppl_subset": round(ppl, 2)})
            print(f"  held-out perplexity (subset) {ppl:.2f}", flush=True)
    train_seconds = time.time() - t_train

    model.round_to_stored()
    ppl_framework = framework_ppl(windows)
    print(f"held-out perplexity, training framework: {ppl_framework:.4f}")

    random_folder = Path(tempfile.mkdtemp())
    try:
        rand = synthetic.write_model(random_folder / "m", "tiny", seed=0, overwrite=True, **SHAPE)
        ppl_random = measure_transformers(rand, windows)
    finally:
        shutil.rmtree(random_folder, ignore_errors=True)

    folder = out / "model"
    meta = {
        "demo": True,
        "name": DISPLAY_NAME,
        "description": "A tiny BitNet b1.58 model trained by Trit's own script (assets/demo/train.py) on Jane "
                       "Austen's novels, so that Trit works before any download. Its replies are modest.",
        "source": source,
        "heldout": {"file": "heldout.txt", "chapters": "the middle chapter of each novel, never trained on",
                    "tokens": len(heldout_ids), "window": SEQ,
                    "protocol": f"windows of {SEQ - 1} text tokens each led by BOS; every text token scored once"},
        "training": {"seed": args.seed, "steps": args.steps, "batch": args.batch, "sequence": SEQ,
                     "tokens_seen": args.steps * args.batch * SEQ, "training_tokens": n_train,
                     "chat_share": args.chat_share, "lr": args.lr, "seconds": round(train_seconds),
                     "threads": args.threads, "torch": torch.__version__, "parameters": n_params,
                     "validation": log},
        "perplexity": {"training_framework": ppl_framework, "before_training_framework": ppl_init,
                       "random_synthetic_model_transformers": ppl_random},
    }
    export(model, tokenizer, config, folder, meta)
    (out / "heldout.txt").write_text(heldout_text, encoding="utf-8")

    meta["perplexity"]["transformers"] = measure_transformers(folder, windows)
    for head in ("bf16", "q4"):
        meta["perplexity"][f"engine_{head}"] = measure_engine(folder, windows, head)
    meta["samples"] = greedy_samples(folder)
    shutil.rmtree(folder / "trit", ignore_errors=True)  # what the engine derived while measuring
    meta["training"]["total_seconds"] = round(time.time() - t_start)
    synthetic._write_json(folder / "trit-demo.json", meta)
    print(json.dumps(meta["perplexity"], indent=2))


if __name__ == "__main__":
    main()
