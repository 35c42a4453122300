"""Choosing the next token from logits, and cutting the streamed text at stop strings.

    params = SamplingParams.from_generation_config(model_folder, temperature=0.7)
    sampler = Sampler(params, vocab_size)
    token = sampler.sample(logits, previous_tokens)

The filters run in llama.cpp's default order (its `--samplers` chain without the ones Trit does not offer):
repetition penalty, top-k, top-p, min-p, temperature, then one draw. Each filter is the same as the transformers
logits processor of the same name applied in that order; note that `model.generate()` in transformers applies
temperature *before* top-k/top-p/min-p, so at a temperature other than 1 its nucleus can differ from this one.

Speed (a 128256-token vocabulary, no full sort per token): every filter keeps a prefix of the tokens ordered by
logit, so each is a threshold on the logits. top-k counts tokens above a moving threshold (one cheap pass each)
until a few hundred remain, then partitions those; top-p bounds the mass below m - gap (m the max logit) to get a
floor, then a mass histogram over 1024 logit bins finds the bin where the cumulative probability reaches top_p
and only that bin is sorted; min-p is one comparison. With nothing filtered, the draw picks a block of 256 from
the block sums and then a token in it, instead of a cumsum over the whole vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from trit.engine.errors import NonFiniteError, SamplingError
from trit.engine.formats.checkpoint import GENERATION_CONFIG_FILE, read_json

_BLOCK = 256
_BINS = 1024

_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty")
_INT_FIELDS = ("top_k", "repetition_window", "max_tokens")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token, and when to stop.

    temperature         0 = greedy (argmax, ties to the lowest id); otherwise logits are divided by it last.
    top_k               keep the k most likely tokens (all tokens tied with the k-th are kept); 0 = off.
    top_p               nucleus: keep the smallest set of most likely tokens whose probability reaches top_p
                        (always at least one); 1.0 = off.
    min_p               keep tokens with p >= min_p * p_max; 0.0 = off.
    repetition_penalty  tokens seen among the last `repetition_window` previous tokens get positive logits divided
                        by it and negative ones multiplied (transformers / llama.cpp); 1.0 = off.
    repetition_window   how many recent tokens count (llama.cpp's repeat_last_n): 0 = none, -1 = all of them.
    max_tokens          at most this many generated tokens.
    stop                stop strings: generation ends before the first one that appears in the text.
    seed                seeds the random draws (same seed and logits -> same tokens); None = fresh randomness.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_window: int = 64
    max_tokens: int = 1024
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise SamplingError(f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise SamplingError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        _check(math.isfinite(self.temperature) and self.temperature >= 0,
               "temperature", "a finite number >= 0 (0 = greedy)", self.temperature)
        _check(self.top_k >= 0, "top_k", "an integer >= 0 (0 = off)", self.top_k)
        _check(0.0 <= self.top_p <= 1.0, "top_p", "in [0, 1] (1 = off)", self.top_p)
        _check(0.0 <= self.min_p <= 1.0, "min_p", "in [0, 1] (0 = off)", self.min_p)
        _check(math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
               "repetition_penalty", "a finite number > 0 (1 = off)", self.repetition_penalty)
        _check(self.repetition_window >= -1, "repetition_window", "an integer >= -1 (0 = none, -1 = all)",
               self.repetition_window)
        _check(self.max_tokens >= 1, "max_tokens", "an integer >= 1", self.max_tokens)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        try:
            stop = tuple(stop)
        except TypeError:
            raise SamplingError(f"stop must be a string or a sequence of strings, got {self.stop!r}") from None
        if not all(isinstance(s, str) and s for s in stop):
            raise SamplingError(f"stop must hold non-empty strings, got {stop!r}")
        object.__setattr__(self, "stop", stop)
        if self.seed is not None:
            _check(isinstance(self.seed, (int, np.integer)) and not isinstance(self.seed, bool) and self.seed >= 0,
                   "seed", "None or an integer >= 0", self.seed)
            object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every setting's name, as the keyword arguments of SamplingParams(...) and replace(...) spell it."""
        return tuple(f.name for f in fields(cls))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **changes) -> SamplingParams:
        """A copy with some fields changed (None means "keep"), validated again."""
        return dataclasses.replace(self, **_overrides(changes))

    @classmethod
    def from_generation_config(cls, folder: str | os.PathLike | None, **overrides) -> SamplingParams:
        """Defaults from `folder/generation_config.json` when it exists, then `overrides` (None = keep the default).

        Read from the file: do_sample (false -> temperature 0; when absent, the file's temperature is used as
        is), temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens (-> max_tokens). Keys that are
        absent or null keep the dataclass defaults; everything else in the file (eos ids, max_length) is not
        sampling and is ignored here.
        """
        overrides = _overrides(overrides)
        values: dict[str, object] = {}
        path = Path(folder) / GENERATION_CONFIG_FILE if folder is not None else None
        config = read_json(path, required=False) if path is not None else None
        if config is not None:
            for key, name in (("temperature", "temperature"), ("top_k", "top_k"), ("top_p", "top_p"),
                              ("min_p", "min_p"), ("repetition_penalty", "repetition_penalty"),
                              ("max_new_tokens", "max_tokens")):
                if config.get(key) is not None:
                    values[name] = config[key]
            if config.get("do_sample") is False:
                values["temperature"] = 0.0
            try:
                cls(**values)
            except ValueError as e:
                raise SamplingError(f"{path}: {e}") from None
        values.update(overrides)
        return cls(**values)


def _check(ok: bool, name: str, allowed: str, value) -> None:
    if not ok:
        raise SamplingError(f"{name} must be {allowed}, got {value!r}")


def _overrides(changes: dict) -> dict:
    unknown = sorted(set(changes) - set(SamplingParams.names()))
    if unknown:
        raise TypeError(f"unknown sampling parameter(s) {', '.join(unknown)}; "
                        f"expected some of {', '.join(sorted(SamplingParams.names()))}")
    return {k: v for k, v in changes.items() if v is not None}


class Sampler:
    """Picks tokens from logits with one `SamplingParams`; holds the random generator (and reusable work buffers),
    so keep one per reply and use it from one thread."""

    def __init__(self, params: SamplingParams, vocab_size: int):
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
            raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
        self.params = params
        self.vocab_size = int(vocab_size)
        self.rng = np.random.default_rng(params.seed)
        self._scratch: _Scratch | None = None

    # -- public ----------------------------------------------------------------------------------------------

    def sample(self, logits: np.ndarray, previous_tokens: Sequence[int] = ()) -> int:
        """The next token id. Greedy draws no random number; sampling draws exactly one per call."""
        x = self._penalized(logits, previous_tokens)
        if self.params.greedy:
            return int(np.argmax(x))
        ids = self._kept(x)
        w = self._tempered(x, ids, out=self._buffers().t)
        i = _draw(w, self.rng.random())
        return i if ids is None else int(ids[i])

    def probabilities(self, logits: np.ndarray, previous_tokens: Sequence[int] = ()) -> np.ndarray:
        """The distribution `sample` draws from, as float64 over the whole vocabulary (zeros outside the kept set;
        one-hot at the argmax when greedy). For tests and inspection; not on the hot path."""
        x = self._penalized(logits, previous_tokens)
        p = np.zeros(self.vocab_size, dtype=np.float64)
        if self.params.greedy:
            p[int(np.argmax(x))] = 1.0
            return p
        ids = self._kept(x)
        if ids is None:
            ids = np.arange(self.vocab_size)
        w = self._tempered(x.astype(np.float64), ids)
        p[ids] = w / w.sum()
        return p

    # -- steps ------------------------------------------------------------------------------------------------

    def _buffers(self) -> _Scratch:
        if self._scratch is None:
            self._scratch = _Scratch(self.vocab_size)
        return self._scratch

    def _penalized(self, logits: np.ndarray, previous_tokens: Sequence[int]) -> np.ndarray:
        x = np.asarray(logits)
        if x.shape != (self.vocab_size,):
            raise ValueError(f"logits must have shape ({self.vocab_size},), got {x.shape}")
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        top = x.max()
        if np.isnan(top):
            raise NonFiniteError("the model's logits are NaN: its weights are damaged or out of range; import or "
                                 "download it again")
        if top == -np.inf:
            raise ValueError("every logit is -inf: no token can be chosen")
        p = self.params
        window = p.repetition_window
        if p.repetition_penalty == 1.0 or window == 0 or len(previous_tokens) == 0:
            return x
        recent = previous_tokens if window == -1 else previous_tokens[-window:]
        ids = np.unique(np.asarray(recent, dtype=np.int64))
        ids = ids[(ids >= 0) & (ids < self.vocab_size)]  # as transformers: ids outside the logits are ignored
        buf = self._buffers().x  # the caller's logits stay untouched
        np.copyto(buf, x)
        x = buf
        v = x[ids]
        x[ids] = np.where(v < 0, v * np.float32(p.repetition_penalty), v / np.float32(p.repetition_penalty))
        return x

    def _tempered(self, x: np.ndarray, ids: np.ndarray | None, out: np.ndarray | None = None) -> np.ndarray:
        """Unnormalised probabilities of `ids` (None = all) after temperature: exp((x - max) / T), in x's dtype,
        written into `out` (a long enough buffer) when given."""
        n = len(x) if ids is None else len(ids)
        xs = np.empty(n, dtype=x.dtype) if out is None else out[:n]
        if ids is None:
            xs[...] = x
        else:
            np.take(x, ids, out=xs)
        m = xs.max()
        inv = 1.0 / self.params.temperature
        if m == np.inf or inv > np.finfo(x.dtype).max:  # +inf logits, or T so small that 1/T overflows: max wins
            np.equal(xs, m, out=xs)
            return xs
        with np.errstate(under="ignore"):
            np.subtract(xs, m, out=xs)
            np.multiply(xs, x.dtype.type(inv), out=xs)
            return np.exp(xs, out=xs)  # -inf logits give 0, never NaN: m is finite

    def _kept(self, x: np.ndarray) -> np.ndarray | None:
        """Ids that survive top-k, top-p and min-p (in that order), or None when no filter is on."""
        p = self.params
        n = self.vocab_size
        top_k = p.top_k if 0 < p.top_k < n else 0
        if not top_k and p.top_p >= 1.0 and p.min_p <= 0.0:
            return None
        s = self._buffers()
        m = float(x.max())
        if m == np.inf:
            return np.flatnonzero(x == np.inf)
        ids = None
        if top_k:
            ids = _top_k(x, m, top_k, s)
        if p.top_p < 1.0:
            ids = _top_p(x, m, p.top_p, ids, s)
        if p.min_p > 0.0:
            floor = np.float32(m + math.log(p.min_p))
            if ids is None:
                ids = np.flatnonzero(np.greater_equal(x, floor, out=s.mask))
            else:
                ids = ids[x.take(ids) >= floor]
            if len(ids) == 0:  # only by rounding: min_p = 1 and the max compared against itself
                ids = np.array([int(np.argmax(x))])
        return ids


class _Scratch:
    """Work arrays the size of the vocabulary (about 4.7 MB at 128256), reused from token to token: fresh
    half-megabyte temporaries can cost page faults on every call (the allocator hands big freed blocks back to the
    system), which measured as much as the arithmetic."""

    def __init__(self, n: int):
        self.x = np.empty(n, np.float32)      # logits after the repetition penalty
        self.e = np.empty(n, np.float32)      # exp(x - max) for top-p
        self.xs = np.empty(n, np.float32)     # logits above the top-p floor
        self.w = np.empty(n, np.float32)      # their weights
        self.d = np.empty(n, np.float32)      # histogram positions
        self.i32 = np.empty(n, np.int32)
        self.bins = np.empty(n, np.intp)
        self.mask = np.empty(n, np.bool_)
        self.t = np.empty(n, np.float32)      # tempered weights of the kept ids


def _top_k(x: np.ndarray, m: float, k: int, s: _Scratch) -> np.ndarray:
    """Ids whose logit is >= the k-th largest (ties kept, as transformers' TopKLogitsWarper)."""
    # Find a threshold m - gap with at least k tokens above it but not many more (counting is one cheap pass),
    # then partition only those tokens.
    def count(gap: float) -> int:
        return int(np.count_nonzero(np.greater_equal(x, np.float32(m - gap), out=s.mask)))

    lo, gap = 0.0, 1.0
    while (n_above := count(gap)) < k and gap < 1e4:
        lo, gap = gap, gap * 2.0
    if n_above < k:  # a huge spread: take every finite logit (-inf ones would get probability 0 anyway)
        ids = np.flatnonzero(x > -np.inf)
    else:
        for _ in range(24):
            if n_above <= 4 * k + 256:
                break
            mid = (lo + gap) / 2.0
            c = count(mid)
            if c >= k:
                gap, n_above = mid, c
            else:
                lo = mid
        ids = np.flatnonzero(np.greater_equal(x, np.float32(m - gap), out=s.mask))
    if len(ids) <= k:
        return ids
    xs = x.take(ids)
    kth = np.partition(xs, len(xs) - k)[len(xs) - k]
    return ids[xs >= kth]


def _top_p(x: np.ndarray, m: float, top_p: float, ids: np.ndarray | None, s: _Scratch) -> np.ndarray:
    """The smallest prefix (by descending probability, ties to the lowest id) of `ids` (or the whole vocabulary)
    whose probability, renormalised over `ids`, reaches top_p; at least one token."""
    if ids is not None:
        xs = x[ids]
        w = np.exp(xs.astype(np.float64) - m)
        t, ties = _cut(xs, w, top_p * float(w.sum()), None, s)
        if ties is None:
            return ids[xs >= t]
        return np.concatenate([ids[xs > t], ids[xs == t][:ties]])
    e = np.subtract(x, np.float32(m), out=s.e)
    with np.errstate(under="ignore"):
        np.exp(e, out=e)
    total = float(e.sum(dtype=np.float64))  # float64, as the cumulative sums it is compared with
    target = top_p * total
    # Tokens below m - gap_max hold at most n * exp(-gap_max) <= (1 - top_p) * total / 2 of the mass, so the
    # nucleus lies above that floor. A peaked distribution usually has it within 4 of the max: try that first.
    gap_max = math.log(len(x) / ((1.0 - top_p) * total)) + math.log(2.0)
    near = None
    if gap_max > 4.0:
        near = np.flatnonzero(np.greater_equal(x, np.float32(m - 4.0), out=s.mask))
        w = e.take(near)
        if float(w.sum(dtype=np.float64)) < target:
            near = None
    if near is not None:
        t, ties = _cut(x.take(near), w, target, None, s)
    else:
        t, ties = _cut(x, e, target, m - gap_max, s)
    if ties is None:
        return np.flatnonzero(np.greater_equal(x, t, out=s.mask))
    return np.concatenate([np.flatnonzero(x > t), np.flatnonzero(x == t)[:ties]])


def _cut(xs: np.ndarray, w: np.ndarray, target: float, floor: float | None, s: _Scratch) -> tuple[float, int | None]:
    """Where the nucleus ends: walking `xs` in descending order, the value t at which the weights `w` first add up
    to `target`. Returns (t, None) when every token with xs == t is kept, else (t, how many of them are).
    `floor`: the cut is known to lie above it, so values below it may be dropped.

    A selection on the mass rather than a sort: while many values remain, a histogram of the mass over 1024 equal
    logit bins finds the bin holding the cut, and only that bin's values go on; the last couple of thousand are
    sorted.
    """
    sure = 0.0  # mass of the tokens above the working values, all kept
    if floor is not None and len(xs) > 2048:
        above = np.greater_equal(xs, np.float32(floor), out=s.mask[:len(xs)])
        k = int(np.count_nonzero(above))
        if k < 0.5 * len(xs) or xs.min() == -np.inf:
            # Drop what lies below the floor. (Lumping it into the last bin instead would pile it into one
            # bincount slot, which is slow.) flatnonzero + take: boolean indexing is several times slower.
            sel = np.flatnonzero(above)
            xs, w = np.take(xs, sel, out=s.xs[:k]), np.take(w, sel, out=s.w[:k])
        # else: the floor would save little; bin everything between the min and the max
    while len(xs) > 2048:
        n = len(xs)
        hi, lo = float(xs.max()), float(xs.min())
        scale = (_BINS - 1) / (hi - lo) if hi > lo else math.inf
        if scale > 1e30:  # all equal (or denormally close): the sort below handles them
            break
        d = np.subtract(np.float32(hi), xs, out=s.d[:n])
        np.multiply(d, np.float32(scale), out=d)
        np.copyto(s.i32[:n], d, casting="unsafe")  # via int32: twice as fast as float32 -> intp directly
        bins = s.bins[:n]
        np.copyto(bins, s.i32[:n])
        mass = np.bincount(bins, weights=w, minlength=_BINS)
        cum = sure + np.cumsum(mass)
        b = int(np.searchsorted(cum, target, side="left"))
        b = min(b, int(np.flatnonzero(mass > 0)[-1]))  # target past the total only by rounding
        if b > 0:
            sure = float(cum[b - 1])
        inside = np.equal(bins, b, out=s.mask[:n])
        xs, w = xs[inside], w[inside]  # few: a new small array, and the buffers are free for the next round
        if len(xs) == n:
            break
    order = np.argsort(-xs, kind="stable")
    sv = xs[order]
    cum = sure + np.cumsum(w[order], dtype=np.float64)
    k = min(int(np.searchsorted(cum, target, side="left")), len(sv) - 1)
    t = sv[k]
    ties_kept = k + 1 - int(np.count_nonzero(sv[:k + 1] > t))
    ties_all = int(np.count_nonzero(sv == t))
    return t, (None if ties_kept == ties_all else ties_kept)


def _draw(weights: np.ndarray, u: float) -> int:
    """Index i with probability weights[i] / sum(weights), for u uniform in [0, 1); never a zero-weight index.
    Long vectors go in two steps (a block of 256 from the block sums, then an entry in it): two short cumsums
    instead of one over the whole vocabulary."""
    n, size = len(weights), _BLOCK
    if n > 16 * size:
        whole = n // size * size
        sums = weights[:whole].reshape(-1, size).sum(axis=1, dtype=np.float64)
        if whole < n:
            sums = np.append(sums, weights[whole:].sum(dtype=np.float64))
        cum = np.cumsum(sums)
        b = _pick(sums, cum, u * cum[-1])
        # where u fell inside the chosen block, as a fraction of that block's weight
        lo = cum[b - 1] if b > 0 else 0.0
        frac = min(max((u * cum[-1] - lo) / sums[b], 0.0), np.nextafter(1.0, 0.0))
        block = weights[b * size:(b + 1) * size].astype(np.float64)
        inner = np.cumsum(block)
        return b * size + _pick(block, inner, frac * inner[-1])
    w = weights.astype(np.float64, copy=False)
    cum = np.cumsum(w)
    return _pick(w, cum, u * cum[-1])


def _pick(w: np.ndarray, cum: np.ndarray, v: float) -> int:
    i = min(int(np.searchsorted(cum, v, side="right")), len(cum) - 1)
    while w[i] == 0 and i > 0:  # rounding put v at or past the end
        i -= 1
    return i


class StopStrings:
    """Cuts streamed text at the first stop string, never letting any part of a stop string out.

        stops = StopStrings(params.stop)
        for piece in pieces:
            emit, stopped = stops.push(piece)
            show(emit)
            if stopped:
                break
        show(stops.flush())      # text held back because it might have begun a stop string
    """

    def __init__(self, stops: Sequence[str] | str = ()):
        stops = (stops,) if isinstance(stops, str) else tuple(stops)
        if not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop strings must be non-empty strings, got {stops!r}")
        self.stops = stops
        self.matched: str | None = None  # the stop string found, once stopped
        self._held = ""

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to show now, whether a stop string was reached). After a stop, returns ("", True)."""
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buf = self._held + text
        first, found = -1, None
        for s in self.stops:
            i = buf.find(s)
            if i != -1 and (first == -1 or i < first):
                first, found = i, s
        if found is not None:
            self.matched, self._held = found, ""
            return buf[:first], True
        hold = 0
        for s in self.stops:  # the longest end of buf that a stop string begins with
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self._held = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        """At the end of the stream: the held-back text, which turned out not to be a stop ("" after a stop)."""
        held, self._held = self._held, ""
        return held
