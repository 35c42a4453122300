"""The models Trit knows by a short name: `trit pull falcon-e-3b` instead of the repository's id, with what each one
costs (download, parameters, context) shown before anything is fetched. Pulling by OWNER/REPO works for any
repository; the catalogue only names the ones Trit runs.

The download sizes are computed, not read from the hub (no network here): from each repository's config.json shapes,
ternary projections packed four to a byte plus the 16-bit embedding and output head (the 1bitLLM repositories hold
float32 master weights instead, which Trit quantises at load). Tokenizer and small files are left out: the figures
are within a few MB of what a pull downloads, and the pull says the exact total from the hub before it starts.
Shapes marked (check) were not read from the real config.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trit.engine.errors import CheckpointError, EngineError
from trit.engine.formats import checkpoint
from trit.engine.formats.checkpoint import CONFIG_FILE, ModelConfig, kv_bytes_per_token, read_json


@dataclass(frozen=True)
class Shape:
    """What decides the size of a checkpoint: config.json's shapes and how its weights are stored."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    master_bytes: int = 0  # bytes per weight when the repository holds float master weights (1bitLLM), else packed

    def ternary_weights(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = self.hidden * q * 2 + self.hidden * kv * 2 + self.hidden * self.intermediate * 3
        return per_layer * self.layers

    def parameters(self) -> int:
        return self.ternary_weights() + self.vocab * self.hidden * (1 if self.tied else 2)

    def download_bytes(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        if self.master_bytes:
            return (self.ternary_weights() + embeddings) * self.master_bytes
        return self.ternary_weights() // 4 + embeddings * 2


@dataclass(frozen=True)
class CatalogueEntry:
    name: str         # what `trit pull` takes
    repo: str         # the Hugging Face repository
    family: str       # for people: "Falcon-E", …
    shape: Shape
    context: int      # max_position_embeddings
    licence: str
    description: str

    @property
    def parameters(self) -> int:
        return self.shape.parameters()

    @property
    def download_bytes(self) -> int:
        return self.shape.download_bytes()

    @property
    def full_context_kv_bytes(self) -> int:
        """The memory a conversation that fills the whole context takes for its KV cache, beside the weights."""
        s = self.shape
        return kv_bytes_per_token(s.layers, s.kv_heads, s.head_dim) * self.context

    def to_dict(self) -> dict:
        return {"name": self.name, "repo": self.repo, "family": self.family, "parameters": self.parameters,
                "download_bytes": self.download_bytes, "context_length": self.context,
                "full_context_kv_bytes": self.full_context_kv_bytes, "licence": self.licence,
                "description": self.description}


FALCON_LICENCE = "TII Falcon-LLM 2.0"
CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry("bitnet-2b", "microsoft/bitnet-b1.58-2B-4T", "BitNet b1.58",
                   Shape(2560, 6912, 30, 20, 5, 128, 128256, tied=True), 4096, "MIT",
                   "Microsoft's 2B model trained ternary on 4T tokens; what `trit pull` alone downloads"),
    # Falcon-E: shapes from a fine-tune's config of the 1B and sizes near TII's (0.6 and 1.0 GB) (check)
    CatalogueEntry("falcon-e-1b", "tiiuae/Falcon-E-1B-Instruct", "Falcon-E",
                   Shape(2048, 9216, 24, 16, 2, 128, 32768, tied=False), 32768, FALCON_LICENCE,
                   "TII's natively ternary 1B chat model: the smallest download that answers well"),
    CatalogueEntry("falcon-e-3b", "tiiuae/Falcon-E-3B-Instruct", "Falcon-E",
                   Shape(2560, 10240, 28, 20, 2, 128, 32768, tied=False), 32768, FALCON_LICENCE,
                   "TII's natively ternary 3B chat model: the best answers per GB"),
    # Falcon3-1.58bit: shapes from the 1.58bit repos' config.json (context: the Instruct 1B's, the Base ones' else)
    CatalogueEntry("falcon3-1b", "tiiuae/Falcon3-1B-Instruct-1.58bit", "Falcon3 1.58-bit",
                   Shape(2048, 8192, 18, 8, 4, 256, 131072, tied=False), 8192, FALCON_LICENCE,
                   "Falcon3 1B chat, quantised to ternary after training"),
    CatalogueEntry("falcon3-3b", "tiiuae/Falcon3-3B-Instruct-1.58bit", "Falcon3 1.58-bit",
                   Shape(3072, 9216, 22, 12, 4, 256, 131072, tied=False), 4096, FALCON_LICENCE,
                   "Falcon3 3B chat, quantised to ternary after training"),
    CatalogueEntry("falcon3-7b", "tiiuae/Falcon3-7B-Instruct-1.58bit", "Falcon3 1.58-bit",
                   Shape(3072, 23040, 28, 12, 4, 256, 131072, tied=False), 8192, FALCON_LICENCE,
                   "Falcon3 7B chat, quantised to ternary after training"),
    CatalogueEntry("falcon3-10b", "tiiuae/Falcon3-10B-Instruct-1.58bit", "Falcon3 1.58-bit",
                   Shape(3072, 23040, 40, 12, 4, 256, 131072, tied=False), 32768, FALCON_LICENCE,
                   "Falcon3 10B chat, quantised to ternary after training: the largest here"),
    CatalogueEntry("llama3-8b-1.58", "HF1BitLLM/Llama3-8B-1.58-100B-tokens", "Llama 3 1.58-bit",
                   Shape(4096, 14336, 32, 32, 8, 128, 128256, tied=False), 8192, "Llama 3 Community",
                   "Llama 3 8B fine-tuned to ternary on 100B tokens (a research model, not chat-tuned)"),
    CatalogueEntry("bitnet-large", "1bitLLM/bitnet_b1_58-large", "1bitLLM BitNet",
                   Shape(1536, 4096, 24, 16, 16, 96, 32002, tied=True, master_bytes=4), 2048, "MIT",
                   "The BitNet b1.58 paper's 0.7B reproduction (a research model, not chat-tuned)"),
    CatalogueEntry("bitnet-3b", "1bitLLM/bitnet_b1_58-3B", "1bitLLM BitNet",
                   Shape(3200, 8640, 26, 32, 32, 100, 32002, tied=True, master_bytes=4), 2048, "MIT",
                   "The BitNet b1.58 paper's 3B reproduction (a research model, not chat-tuned)"),
)


def find(name: str) -> CatalogueEntry | None:
    """The entry of a short name (any case), or None."""
    wanted = name.strip().lower()
    return next((e for e in CATALOGUE if e.name == wanted), None)


def for_repo(repo: str) -> CatalogueEntry | None:
    wanted = repo.strip().lower()
    return next((e for e in CATALOGUE if e.repo.lower() == wanted), None)


def family_of(config: dict, source: str = CONFIG_FILE) -> str:
    """Which family of model a config.json is, as the engine runs it; CheckpointError naming what is missing or
    unsupported otherwise. Every field the engine reads is checked too, so a pull refuses a config.json the engine
    would refuse before any weights are downloaded."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: expected a JSON object, found {type(config).__name__}")
    ModelConfig.from_dict(config, source)
    return checkpoint.family_of(config, source)


def family_of_folder(folder: str | Path) -> str:
    """family_of for an installed model's config.json; '?' when it cannot be read or is not a family Trit runs
    (a model installed by another version of Trit is listed all the same)."""
    try:
        return family_of(read_json(Path(folder) / CONFIG_FILE))
    except CheckpointError:
        return "?"


def resolve(name_or_repo: str) -> tuple[str, CatalogueEntry | None]:
    """The repository `trit pull` fetches: a catalogue name's, or OWNER/REPO (or a hub URL) as given."""
    entry = find(name_or_repo)
    if entry is not None:
        return entry.repo, entry
    text = name_or_repo.strip()
    if "/" not in text and ":" not in text:
        raise EngineError(f"{text!r} is not a model Trit knows by name: `trit pull --list` shows them; any other "
                          "model is pulled as OWNER/REPO")
    return text, for_repo(text.removeprefix("hf:"))


def format_parameters(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
