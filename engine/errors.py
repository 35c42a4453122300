"""The engine's exceptions: each carries one line that says what is wrong and, where it helps, what to do."""


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class CheckpointError(EngineError):
    """A model folder or file is missing, truncated, or not a BitNet b1.58 packed checkpoint."""


class InputError(EngineError):
    """A request the model cannot run: token ids outside the vocabulary, positions past the context."""


class ContextLengthError(InputError):
    """The conversation with room for the reply does not fit the context, and dropping older turns was not allowed."""


class SamplingError(InputError, ValueError):
    """A sampling setting outside its range (a flag, config.toml, generation_config.json). Also a ValueError, as a
    dataclass's validation is."""


class NonFiniteError(EngineError, ValueError):
    """A model computed NaN: its weights are damaged (import refuses such files; this catches what slipped by)."""


class NativeError(EngineError):
    """The native library refused a call or could not be loaded."""


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (a library's multi-line error, shown in one of ours)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def shown(name: str, limit: int = 80) -> str:
    """A name read from a file (a tensor, a metadata key) as a message shows it: as it is, or quoted with escapes when
    it holds a line break or another unprintable character, and cut at `limit` characters, so that it cannot break
    the message's one line."""
    cut = name[:limit] + "…" if len(name) > limit else name
    return cut if cut.isprintable() else repr(cut)
