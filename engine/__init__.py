"""Trit's engine: BitNet b1.58 packed checkpoints run by the project's own C kernel.

    import engine
    model = engine.load("path/to/model")          # memory-maps and checks the folder
    logits = model.logits([128000, 9906])         # float32 [n_tokens, vocab], fresh context
    ctx = model.context()                         # a KV cache for incremental generation
    last = ctx.eval(prompt_ids)                   # logits of the last token
"""

from .checkpoint import Checkpoint, ModelConfig
from .errors import CheckpointError, EngineError, InputError, NativeError
from .model import Context, Model, load

__version__ = "0.1.0"

__all__ = [
    "Checkpoint", "CheckpointError", "Context", "EngineError", "InputError", "Model", "ModelConfig", "NativeError",
    "load", "__version__",
]
