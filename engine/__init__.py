"""Trit's engine: BitNet b1.58 packed checkpoints run by the project's own C kernel.

    import engine
    model = engine.load("path/to/model")          # memory-maps and checks the folder
    logits = model.logits([128000, 9906])         # float32 [n_tokens, vocab], fresh context
    ctx = model.context()                         # a KV cache for incremental generation
    last = ctx.eval(prompt_ids)                   # logits of the last token

    for event in model.chat([{"role": "user", "content": "Hi"}], model.default_params(seed=1)):
        print(event.text if isinstance(event, Piece) else f"\n{event.generated_tokens} tokens", end="")

    gguf = engine.load("Llama-3.2-1B-Instruct-Q4_K_M.gguf")   # any GGUF through llama-cpp-python: same chat()
    check_gguf("model.gguf")                       # its header checked without loading: architecture, context…
    find_gguf("folder")                            # the GGUF file engine.load would run for a path, or None
"""

from .checkpoint import Checkpoint, ModelConfig
from .errors import CheckpointError, EngineError, InputError, NativeError
from .chat import ChatResult, Piece
from .gguf_backend import GGUFError, GGUFInfo, GGUFModel, check_gguf, find_gguf
from .model import Context, Model, load
from .sampling import SamplingParams

__version__ = "0.1.0"

__all__ = [
    "ChatResult", "Checkpoint", "CheckpointError", "Context", "EngineError", "GGUFError", "GGUFInfo", "GGUFModel",
    "InputError", "Model", "ModelConfig", "NativeError", "Piece", "SamplingParams", "check_gguf", "find_gguf",
    "load",
    "__version__",
]
