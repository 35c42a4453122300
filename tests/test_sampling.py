"""runtime/sampling.py: the token filters against their definitions and against transformers' logits processors,
seeded reproducibility, generation_config.json defaults, and stop strings cut across streamed pieces."""

from __future__ import annotations

import json
import time
import zlib

import numpy as np
import pytest

from trit.engine.errors import CheckpointError
from trit.engine.runtime.sampling import Sampler, SamplingParams, StopStrings

BIG_VOCAB = 128256  # Llama 3's, as BitNet b1.58 2B4T


# ---------------------------------------------------------------------------------------------------------------
# a reference written straight from the definitions: full sorts, float64, no shortcuts


def reference_probabilities(logits, previous_tokens, p: SamplingParams) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64).copy()
    n = len(x)
    if p.repetition_penalty != 1.0 and p.repetition_window != 0:
        recent = list(previous_tokens) if p.repetition_window == -1 else list(previous_tokens)[-p.repetition_window:]
        for t in {t for t in recent if 0 <= t < n}:
            x[t] = x[t] * p.repetition_penalty if x[t] < 0 else x[t] / p.repetition_penalty
    out = np.zeros(n)
    if p.temperature == 0:
        out[int(np.argmax(x))] = 1.0
        return out
    keep = np.ones(n, dtype=bool)
    order = np.lexsort((np.arange(n), -x))  # descending logit, ties to the lowest id

    def softmax_over(mask):
        e = np.where(mask, np.exp(x - x[mask].max()), 0.0)
        return e / e.sum()

    if 0 < p.top_k < n:
        keep &= x >= x[order[p.top_k - 1]]
    if p.top_p < 1.0:
        # walk the kept tokens in order until their share reaches top_p (unnormalised, so that equal weights add
        # up exactly: ties at the cut are decided by the count, not by rounding)
        ranked = order[keep[order]]
        cum = np.cumsum(np.exp(x[ranked] - x[ranked[0]]))
        last = int(np.flatnonzero(cum >= p.top_p * cum[-1])[0])
        nucleus = np.zeros(n, dtype=bool)
        nucleus[ranked[:last + 1]] = True
        keep &= nucleus
    if p.min_p > 0.0:
        probs = softmax_over(keep)
        keep &= probs >= p.min_p * probs.max()
    z = np.where(keep, (x - x[keep].max()) / p.temperature, -np.inf)
    e = np.exp(z)
    return e / e.sum()


def assert_same_distribution(got, want, atol=1e-6):
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(np.flatnonzero(got > 0), np.flatnonzero(want > 0))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol)
    assert abs(got.sum() - 1.0) < 1e-9


def logits_of(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.normal(0, 2, n).astype(np.float32)
    if kind == "flat":
        return rng.normal(0, 0.5, n).astype(np.float32)
    if kind in ("peaked", "confident"):  # one token well above the rest; "confident": it holds over 90%
        x = rng.normal(0, 2, n).astype(np.float32)
        x[rng.integers(n)] = x.max() + (6 if kind == "peaked" else 9)
        return x
    if kind == "zipf":  # logit ~ -1.1 log(rank), the shape of a language model's distribution
        x = (5 - 1.1 * np.log(np.arange(1, n + 1)) + rng.normal(0, 0.3, n)).astype(np.float32)
        rng.shuffle(x)
        return x
    if kind == "ties":  # few distinct values: ties everywhere, including at every cut
        return rng.integers(0, 6, n).astype(np.float32)
    if kind == "neg-inf":  # a vocabulary with masked-out entries
        x = rng.normal(0, 2, n).astype(np.float32)
        x[rng.random(n) < 0.3] = -np.inf
        return x
    raise ValueError(kind)


KINDS = ["normal", "flat", "peaked", "zipf", "ties", "neg-inf"]
FILTERS = [
    dict(temperature=1.0),
    dict(temperature=0.6, top_p=0.9),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.5),
    dict(temperature=1.0, min_p=0.1),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    dict(temperature=0.9, top_k=3, top_p=0.3),
    dict(temperature=0.6, top_p=0.9, repetition_penalty=1.3, repetition_window=8),
    dict(temperature=1.0, top_p=0.0),
    dict(temperature=1.0, min_p=1.0),
    dict(temperature=2.0, repetition_penalty=0.7, repetition_window=-1),
]


# ---------------------------------------------------------------------------------------------------------------
# filters against the definitions


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_probabilities_match_definition_small_vocab(kind, filters):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{filters}".encode()))
    params = SamplingParams(**filters)
    for n in (1, 2, 7, 64, 500):
        for _ in range(5):
            logits = logits_of(kind, n, rng)
            if not np.isfinite(logits).any():
                logits[0] = 0.0
            prev = rng.integers(0, n, 20).tolist()
            got = Sampler(params, n).probabilities(logits, prev)
            assert_same_distribution(got, reference_probabilities(logits, prev, params))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("filters", [
    dict(temperature=0.6, top_p=0.9),
    dict(temperature=0.6, top_p=0.5),
    dict(temperature=1.0, top_p=0.99),
    dict(temperature=0.8, top_k=40),
    dict(temperature=0.8, top_k=5000, top_p=0.8),
    dict(temperature=0.8, top_k=700),
    dict(temperature=0.8, top_k=3000),
    dict(temperature=1.0, min_p=0.05),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
], ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_probabilities_match_definition_big_vocab(kind, filters):
    """At 128256 the fast paths (thresholds, the mass histogram) are the ones that run: same answer as a full sort."""
    rng = np.random.default_rng(zlib.crc32(f"{kind}{filters}big".encode()))
    params = SamplingParams(**filters)
    logits = logits_of(kind, BIG_VOCAB, rng)
    got = Sampler(params, BIG_VOCAB).probabilities(logits, ())
    assert_same_distribution(got, reference_probabilities(logits, (), params), atol=1e-9)


def test_top_p_ties_keep_lowest_ids():
    logits = np.zeros(10, dtype=np.float32)  # ten equal tokens: top_p 0.3 keeps exactly three, the lowest ids
    p = Sampler(SamplingParams(top_p=0.3), 10).probabilities(logits)
    np.testing.assert_array_equal(np.flatnonzero(p), [0, 1, 2])
    big = np.zeros(BIG_VOCAB, dtype=np.float32)
    p = Sampler(SamplingParams(top_p=0.5), BIG_VOCAB).probabilities(big)
    np.testing.assert_array_equal(np.flatnonzero(p), np.arange(BIG_VOCAB // 2))


def test_top_k_keeps_all_tied_with_kth():  # as transformers' TopKLogitsWarper
    logits = np.array([3, 1, 2, 2, 2, 0], dtype=np.float32)
    p = Sampler(SamplingParams(top_k=2), 6).probabilities(logits)
    np.testing.assert_array_equal(np.flatnonzero(p), [0, 2, 3, 4])


def test_repetition_window_counts_only_recent_tokens():
    logits = np.array([2.0, -2.0, 2.0, -2.0, 1.0], dtype=np.float32)
    prev = [0, 1, 2, 3, 3, 3]

    def penalized(window):
        params = SamplingParams(temperature=1.0, repetition_penalty=2.0, repetition_window=window)
        return np.log(Sampler(params, 5).probabilities(logits, prev))

    base = np.log(Sampler(SamplingParams(), 5).probabilities(logits))
    for window, expect in [(0, [2, -2, 2, -2, 1]), (2, [2, -2, 2, -4, 1]), (4, [2, -2, 1, -4, 1]),
                           (-1, [1, -4, 1, -4, 1]), (100, [1, -4, 1, -4, 1])]:
        # compare log-probabilities up to their shared constant
        got = penalized(window)
        np.testing.assert_allclose(got - got[4], np.array(expect) - 1.0, atol=1e-5, err_msg=f"window {window}")
    np.testing.assert_allclose(base - base[4], np.array([2, -2, 2, -2, 1]) - 1.0, atol=1e-5)
    # the caller's logits are never modified, and a sampler's buffers carry nothing from one call to the next
    before = logits.copy()
    s = Sampler(SamplingParams(repetition_penalty=2.0, top_p=0.9, seed=0), 5)
    first = s.probabilities(logits, prev)
    s.sample(logits, prev)
    s.sample(-logits, [4])
    np.testing.assert_array_equal(logits, before)
    np.testing.assert_array_equal(s.probabilities(logits, prev), first)
    # ids outside the vocabulary are ignored, as transformers does
    params = SamplingParams(repetition_penalty=2.0)
    np.testing.assert_allclose(Sampler(params, 5).probabilities(logits, [7, -1, 99]),
                               Sampler(SamplingParams(), 5).probabilities(logits), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# filters against transformers' logits processors


def transformers_probabilities(logits, previous_tokens, p: SamplingParams) -> np.ndarray:
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    scores = torch.from_numpy(np.asarray(logits, dtype=np.float32).copy())[None, :]
    ids = torch.tensor([list(previous_tokens)], dtype=torch.long)
    chain = []
    if p.repetition_penalty != 1.0:
        chain.append(lp.RepetitionPenaltyLogitsProcessor(penalty=p.repetition_penalty))
    if p.top_k:
        chain.append(lp.TopKLogitsWarper(top_k=p.top_k))
    if p.top_p < 1.0:
        chain.append(lp.TopPLogitsWarper(top_p=p.top_p))
    if p.min_p > 0.0:
        chain.append(lp.MinPLogitsWarper(min_p=p.min_p))
    if p.temperature != 1.0:
        chain.append(lp.TemperatureLogitsWarper(temperature=p.temperature))
    for processor in chain:  # llama.cpp's order; transformers' generate() would put temperature first
        scores = processor(ids, scores)
    return torch.softmax(scores.double(), dim=-1)[0].numpy()


@pytest.mark.parametrize("filters", [
    dict(temperature=1.0, top_k=10),
    dict(temperature=1.0, top_p=0.9),
    dict(temperature=1.0, top_p=0.5),
    dict(temperature=1.0, min_p=0.1),
    dict(temperature=0.6),
    dict(temperature=1.7),
    dict(temperature=1.0, repetition_penalty=1.3, repetition_window=-1),
    dict(temperature=1.0, repetition_penalty=0.8, repetition_window=-1),
    dict(temperature=0.6, top_p=0.9),
    dict(temperature=0.7, top_k=20, top_p=0.8, min_p=0.05, repetition_penalty=1.2, repetition_window=-1),
], ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_filters_match_transformers(filters):
    rng = np.random.default_rng(zlib.crc32(str(filters).encode()))
    params = SamplingParams(**filters)
    for n in (16, 300, 5000):
        for scale in (0.5, 2.0, 5.0):
            logits = (rng.normal(0, scale, n)).astype(np.float32)
            prev = rng.integers(0, n, 30).tolist()
            got = Sampler(params, n).probabilities(logits, prev)
            want = transformers_probabilities(logits, prev, params)
            assert_same_distribution(got, want, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# draws


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic over the cells with probability > 0 (cells under 5 expected draws are pooled)."""
    total = counts.sum()
    expected = probs * total
    big = expected >= 5
    obs = list(counts[big]) + [counts[~big].sum()]
    exp = list(expected[big]) + [expected[~big].sum()]
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp) if e > 0)
    return stat, sum(1 for e in exp if e > 0) - 1


@pytest.mark.parametrize("filters", [
    dict(temperature=1.0),
    dict(temperature=0.6, top_p=0.9),
    dict(temperature=0.8, top_k=4),
    dict(temperature=1.5, min_p=0.2),
], ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("n", [12, 6000])
def test_draws_follow_probabilities(filters, n):
    """Empirical frequencies against `probabilities` (chi-square well inside its 99.99% range), and never a token
    outside the kept set. n=6000 takes the two-step (block, then token) draw."""
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 1.5, n).astype(np.float32)
    if n > 100:  # put most of the mass on a few tokens in different blocks so the cells are well filled
        logits[[5, 700, 3000, 5999]] += 9.0
    sampler = Sampler(SamplingParams(seed=1234, **filters), n)
    probs = sampler.probabilities(logits)
    draws = 20000
    counts = np.bincount([sampler.sample(logits) for _ in range(draws)], minlength=n)
    assert counts[probs == 0].sum() == 0
    stat, dof = chi_square(counts, probs)
    assert stat < dof + 8 * np.sqrt(2 * dof) + 10, (stat, dof)


def test_seeded_sampling_is_reproducible():
    rng = np.random.default_rng(0)
    steps = [rng.normal(0, 1, 1000).astype(np.float32) for _ in range(200)]
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=42)

    def run(p):
        s = Sampler(p, 1000)
        return [s.sample(x, ()) for x in steps]

    assert run(params) == run(params)
    assert run(params) != run(params.replace(seed=43))  # flat distribution: 200 equal draws would be a fluke
    flat = np.zeros(1000, dtype=np.float32)
    a, b = Sampler(params, 1000), Sampler(params.replace(seed=7), 1000)
    assert [a.sample(flat) for _ in range(50)] != [b.sample(flat) for _ in range(50)]
    unseeded = [Sampler(SamplingParams(), 1000).sample(flat) for _ in range(20)]
    assert len(set(unseeded)) > 1


def test_greedy_is_argmax_ties_to_lowest_and_draws_nothing():
    s = Sampler(SamplingParams(temperature=0, seed=3), 6)
    state = json.dumps(s.rng.bit_generator.state)
    assert s.sample(np.array([0, 5, 1, 5, 5, -np.inf], dtype=np.float32)) == 1
    assert s.sample(np.array([-3, -1, -2, -7, -np.inf, -1], dtype=np.float32)) == 1
    rng = np.random.default_rng(1)
    for _ in range(50):
        x = rng.normal(0, 1, 6).astype(np.float32)
        assert s.sample(x) == int(np.argmax(x))
    assert json.dumps(s.rng.bit_generator.state) == state
    # the repetition penalty still applies before the argmax, as in transformers and llama.cpp
    g = Sampler(SamplingParams(temperature=0, repetition_penalty=2.0), 3)
    assert g.sample(np.array([3.0, 2.0, 0.0], dtype=np.float32), [0]) == 1


def test_bad_logits_are_clear_errors_and_infinities_are_fine():
    s = Sampler(SamplingParams(temperature=0.7, top_p=0.9), 4)
    with pytest.raises(ValueError, match="NaN"):
        s.sample(np.array([0, np.nan, 1, 2], dtype=np.float32))
    with pytest.raises(ValueError, match="-inf"):
        s.sample(np.full(4, -np.inf, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        s.sample(np.zeros(5, dtype=np.float32))
    one = np.array([-np.inf, 3.0, -np.inf, -np.inf], dtype=np.float32)
    assert all(s.sample(one) == 1 for _ in range(20))
    for params in (SamplingParams(), SamplingParams(temperature=1e-30), SamplingParams(temperature=1e-320),
                   SamplingParams(top_k=2), SamplingParams(min_p=0.5), SamplingParams(temperature=0)):
        sampler = Sampler(params, 4)
        p = sampler.probabilities(np.array([1.0, np.inf, -np.inf, np.inf], dtype=np.float32))
        np.testing.assert_array_equal(np.flatnonzero(p), [1] if params.greedy else [1, 3])
        p = sampler.probabilities(np.array([1.0, 2.0, -np.inf, 2.0], dtype=np.float32))
        assert not np.isnan(p).any() and p[2] == 0.0
        assert sampler.sample(np.array([1.0, 2.0, -np.inf, 2.0], dtype=np.float32)) in (0, 1, 3)
    # float64 and float16 logits are accepted
    assert Sampler(SamplingParams(temperature=0), 3).sample(np.array([0.0, 1.0, 0.5])) == 1
    assert Sampler(SamplingParams(temperature=0), 3).sample(np.array([0.0, 1.0, 0.5], dtype=np.float16)) == 1


# ---------------------------------------------------------------------------------------------------------------
# parameters


def test_from_generation_config_reads_defaults_then_overrides(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 128000, "eos_token_id": [128001, 128009], "do_sample": True, "temperature": 0.6,
        "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.1, "max_new_tokens": 300, "max_length": 4096}))
    p = SamplingParams.from_generation_config(tmp_path)
    got = (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty, p.max_tokens)
    assert got == (0.6, 0.9, 0, 0.0, 1.1, 300)
    p = SamplingParams.from_generation_config(tmp_path, temperature=0.8, top_p=None, seed=5, stop=["\n\n"])
    assert (p.temperature, p.top_p, p.seed, p.stop) == (0.8, 0.9, 5, ("\n\n",))
    assert SamplingParams.from_generation_config(tmp_path, temperature=0).greedy


def test_from_generation_config_do_sample_false_is_greedy(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.6,
                                                                  "top_p": None, "min_p": 0.05}))
    p = SamplingParams.from_generation_config(tmp_path)
    assert p.temperature == 0.0 and p.greedy and p.top_p == 1.0 and p.min_p == 0.05
    assert SamplingParams.from_generation_config(tmp_path, temperature=0.7).temperature == 0.7


def test_from_generation_config_without_file_uses_dataclass_defaults(tmp_path):
    assert SamplingParams.from_generation_config(tmp_path) == SamplingParams()
    assert SamplingParams.from_generation_config(None, top_k=40).top_k == 40


def test_from_generation_config_with_synthetic_model(tiny_model):
    p = SamplingParams.from_generation_config(tiny_model)
    assert (p.temperature, p.top_p) == (0.6, 0.9)  # the 2B4T defaults, which the synthetic folder copies


def test_from_generation_config_errors(tmp_path):
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"do_sample": True, "top_p": 1.5}))
    with pytest.raises(ValueError, match=r"generation_config\.json: top_p must be in \[0, 1\]"):
        SamplingParams.from_generation_config(tmp_path)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="generation_config.json"):
        SamplingParams.from_generation_config(tmp_path)
    path.write_text(json.dumps({"temperature": 0.5}))
    with pytest.raises(TypeError, match="temprature"):
        SamplingParams.from_generation_config(tmp_path, temprature=0.1)
    with pytest.raises(ValueError, match=r"^min_p must be in \[0, 1\]"):
        SamplingParams.from_generation_config(tmp_path, min_p=-0.1)
    path.write_text("[0.6]")
    with pytest.raises(CheckpointError, match="JSON object"):
        SamplingParams.from_generation_config(tmp_path)


def test_sampler_arguments():
    with pytest.raises(TypeError, match="SamplingParams"):
        Sampler({"temperature": 0.5}, 10)
    with pytest.raises(ValueError, match="vocab_size"):
        Sampler(SamplingParams(), 0)


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", float("inf")), ("temperature", float("nan")), ("temperature", "hot"),
    ("top_k", -1), ("top_k", 2.5), ("top_k", True), ("top_p", 1.01), ("top_p", -0.5), ("min_p", 2.0),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_window", -2), ("max_tokens", 0),
    ("stop", ("",)), ("stop", (1,)), ("stop", 5), ("seed", -1), ("seed", 1.5),
])
def test_validation_names_the_parameter_and_range(field, value):
    with pytest.raises(ValueError) as info:
        SamplingParams(**{field: value})
    message = str(info.value)
    assert message.startswith(field) and "\n" not in message


def test_params_normalise():
    p = SamplingParams(temperature=1, top_p=1, stop="###", top_k=np.int64(3))
    assert isinstance(p.temperature, float) and p.stop == ("###",) and type(p.top_k) is int
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert p.replace(top_k=None, min_p=0.1) == SamplingParams(temperature=1.0, top_p=1.0, stop=("###",), top_k=3,
                                                                min_p=0.1)
    with pytest.raises(ValueError):
        p.replace(top_p=2.0)


# ---------------------------------------------------------------------------------------------------------------
# stop strings


def run_stops(stops, pieces):
    s = StopStrings(stops)
    emitted, stopped = [], False
    for piece in pieces:
        out, stopped = s.push(piece)
        emitted.append(out)
        if stopped:
            break
    if not stopped:
        emitted.append(s.flush())
    return emitted, stopped, s


def test_stop_split_across_pushes_is_withheld():
    emitted, stopped, s = run_stops(["<|eot|>"], ["Hello", " world<", "|e", "ot", "|>", "more"])
    assert stopped and s.matched == "<|eot|>"
    assert "".join(emitted) == "Hello world"
    assert emitted[:2] == ["Hello", " world"]  # "<" is held from the second push on, then never released
    assert all("<" not in e for e in emitted)
    assert s.push("anything") == ("", True) and s.flush() == ""


def test_partial_match_is_released_when_it_turns_out_not_to_be_a_stop():
    s = StopStrings(["</answer>"])
    assert s.push("a </ans") == ("a ", False)
    assert s.push("wer") == ("", False)          # still a possible start: "</answer" held
    assert s.push("!") == ("</answer!", False)   # not the stop after all: all of it released
    assert s.push("x</") == ("x", False)
    assert s.flush() == "</"                     # end of stream: whatever was held comes out
    assert not s.stopped


def test_stop_edge_cases():
    # text before the stop in the same piece is emitted, text after it dropped
    assert run_stops(["STOP"], ["abcSTOPdef"])[:2] == (["abc"], True)
    # the earliest of several stops wins, even if a longer one started before it
    emitted, stopped, s = run_stops(["xyz", "yz!", "b"], ["a", "xy", "z!"])
    assert "".join(emitted) == "a" and s.matched == "xyz"
    assert "".join(run_stops(["abc"], ["xa", "ab", "c"])[0]) == "xa"  # overlapping prefixes: "aab" + "c"
    assert run_stops([], ["a", "b"])[0] == ["a", "b", ""]
    assert "".join(run_stops(["\n\n"], ["line\n", "\n", "rest"])[0]) == "line"
    assert "".join(run_stops(["é!"], ["café", "?"])[0]) == "café?"
    with pytest.raises(ValueError):
        StopStrings(["ok", ""])


def test_stop_strings_random_splits_match_one_shot_cut():
    rng = np.random.default_rng(5)
    alphabet = "ab<|>/ \n"
    stops = ["<|a|>", "ab/ab", "\n\n", "b>>"]
    for _ in range(500):
        text = "".join(rng.choice(list(alphabet), rng.integers(0, 40)))
        cuts = sorted(rng.integers(0, len(text) + 1, rng.integers(0, 8)).tolist())
        pieces = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        found = [(text.find(s), s) for s in stops if s in text]
        expect = text[:min(found)[0]] if found else text
        emitted, stopped, _ = run_stops(stops, pieces)
        assert "".join(emitted) == expect and stopped == bool(found), (text, pieces)
        so_far = ""
        for e in emitted:  # at no point did anything beyond the final text get out
            so_far += e
            assert expect.startswith(so_far)


# ---------------------------------------------------------------------------------------------------------------
# speed: printed, never asserted (run with -s to see it)


def test_print_per_token_time_at_big_vocab():
    rng = np.random.default_rng(0)
    prev = rng.integers(0, BIG_VOCAB, 64).tolist()
    rows = []
    for kind in ("confident", "peaked", "zipf", "normal", "flat"):
        steps = [logits_of(kind, BIG_VOCAB, rng) for _ in range(30)]
        for label, params in [("T=0.6 top_p=0.9 (2B4T default)", SamplingParams(temperature=0.6, top_p=0.9, seed=0)),
                              ("greedy", SamplingParams(temperature=0)),
                              ("T=1, no filter", SamplingParams(seed=0)),
                              ("T=0.8 top_k=40 top_p=0.95 min_p=0.05", SamplingParams(temperature=0.8, top_k=40,
                                                                                       top_p=0.95, min_p=0.05, seed=0)),
                              ("T=0.6 top_p=0.9 rep 1.1/64", SamplingParams(temperature=0.6, top_p=0.9,
                                                                            repetition_penalty=1.1, seed=0))]:
            s = Sampler(params, BIG_VOCAB)
            kept = int(np.count_nonzero(s.probabilities(steps[0], prev)))
            s.sample(steps[0], prev)
            times = []
            for x in steps:
                t = time.perf_counter()
                s.sample(x, prev)
                times.append(time.perf_counter() - t)
            rows.append(f"  {kind:9s} {label:38s} median {np.median(times) * 1e6:7.0f} us   kept ~{kept}")
    print(f"\nsampling, per token at vocab {BIG_VOCAB}:\n" + "\n".join(rows))
